"""tr(F) of task adapters after the fact: plot learning dynamics of runs, or compute tr(F) of a saved adapter.

    python fisher.py plot runs/xnli-gu-s1 runs/xnli-gu-s2 runs/xnli-standard-s1 --out plots/
    python fisher.py compute --adapter runs/xnli-fun-s1/best --data mnli/train.jsonl --out fisher.json

plot    (a) fisher_curves.png: the average tr(F) per trainable adapter (log.jsonl `fisher_avg`, written by
            train.py --fisher-every) against the step, moving average, one line per schedule averaged over
            seeds (paper Fig. 3); fisher_dev.png: the same normalised to 0-1 with the English dev metric
            (paper Fig. 4), when the runs logged dev evaluations;
        (b) schedules.png: the realised unfreezing order from schedule.json averaged over seeds, against GU's
            top-down diagonal (paper Fig. 5).
compute tr(F) per task-adapter layer (fun/fisher.py, paper Eq. 1) of a saved task adapter (a run's best/ or
        final/) on training batches drawn from --data; prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

import cli
from cli import UsageError, blame, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("plot", help="tr(F) curves and realised schedules of run directories → PNG")
    g.add_argument("runs", nargs="+", help="run directories of train.py (config.json, log.jsonl, schedule.json)")
    g.add_argument("--out", required=True, help="directory for the PNG files")
    g.add_argument("--window", type=positive_int, default=5, help="moving-average window over logged tr(F) points (1: none)")
    g = sub.add_parser("compute", help="tr(F) per layer of a saved task adapter on given data")
    g.add_argument("--adapter", required=True, help="saved task adapter: a run's best/ or final/ directory")
    g.add_argument("--model", help="encoder (Hub id or local dir); default: the one the adapter was trained on")
    g.add_argument("--task", help="task name; default: the adapter's")
    g.add_argument("--data", required=True, help="data file in the task's local format (train split layout)")
    g.add_argument("--lang-adapter", help="source-language adapter stacked under the task adapter, as in train.py")
    g.add_argument("--batches", type=positive_int, default=40, help="number of batches (paper's FUN: 40)")
    g.add_argument("--batch-size", type=positive_int, default=32)
    g.add_argument("--max-length", type=positive_int, help="default: the adapter's training max length")
    g.add_argument("--labels", default="sample", choices=("sample", "exact", "argmax", "true"))
    g.add_argument("--estimator", default="per-sample", choices=("per-sample", "batch"))
    g.add_argument("--chunk-size", type=positive_int, help="vmap chunk size (bounds memory)")
    g.add_argument("--seed", type=int, default=0, help="draws the batches and the sampled labels")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--threads", type=positive_int, help="torch CPU threads")
    g.add_argument("--out", help="JSON output file")
    return p


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        args = build_parser().parse_args(argv)
        return plot(args) if args.command == "plot" else compute(args)
    return cli.main(run)


# --- plot --------------------------------------------------------------------------------------------------

def read_run(directory: str) -> dict:
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise UsageError(f"{directory}: not a run directory of train.py (no config.json)")
    config = json.loads((path / "config.json").read_text())
    records = []
    if (path / "log.jsonl").is_file():
        for n, line in enumerate((path / "log.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{path / 'log.jsonl'}:{n}: malformed JSON line") from None
    events = json.loads((path / "schedule.json").read_text()) if (path / "schedule.json").is_file() else []
    return dict(path=path, config=config, records=records, events=events)


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs that differ only in their seed form one line. The label names what differs between lines, and a task
    adapter other than the bottleneck one always (`fun-lora`, as experiments/aggregate.py names its rows)."""
    from fun.model import adapter_suffix

    keys = ("task", "model", "schedule")
    varying = [k for k in keys if len({str(r["config"].get(k)) for r in runs}) > 1] or ["schedule"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        label = " ".join(Path(str(r["config"].get(k))).name for k in varying)
        groups[label + adapter_suffix(r["config"])].append(r)
    return dict(groups)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start), so the curve keeps its length."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def mean_over_seeds(series: list[tuple[list[int], list[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) on the steps every run logged."""
    common = sorted(set.intersection(*(set(s) for s, _ in series)))
    table = np.array([[dict(zip(s, v))[t] for t in common] for s, v in series])  # (runs, steps)
    return np.array(common), table.mean(0), table.std(0)


def dev_metric(run: dict) -> str | None:
    records = [r["dev"] for r in run["records"] if "dev" in r]
    if not records:
        return None
    try:
        from fun.tasks import build_task
        metric = build_task(run["config"]["task"], run["config"]).metric
    except (ImportError, KeyError, ValueError):
        metric = None
    return metric if metric in records[0] else next(iter(records[0]))


def plot(args: argparse.Namespace) -> int:
    runs = [read_run(d) for d in args.runs]
    import matplotlib  # lazily: only plotting needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    colors = {name: f"C{i}" for i, name in enumerate(groups)}
    written = []

    # (a) Fig. 3: tr(F) per trainable adapter, moving average, mean over seeds
    curves = {}
    for name, members in groups.items():
        series = [([r["step"] for r in m["records"] if "fisher_avg" in r],
                   [r["fisher_avg"] for r in m["records"] if "fisher_avg" in r]) for m in members]
        series = [s for s in series if s[0]]
        if series:
            steps, mean, std = mean_over_seeds(series)
            curves[name] = (steps, moving_average(mean, args.window), moving_average(std, args.window), len(series))
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, (steps, mean, std, n) in curves.items():
            ax.plot(steps, mean, color=colors[name], label=f"{name} ({n} seed{'s' * (n > 1)})")
            if n > 1:
                ax.fill_between(steps, mean - std, mean + std, color=colors[name], alpha=0.2)
        ax.set(xlabel="step", ylabel="tr(F) per trainable adapter",
               title=f"Fisher information during training (moving average, window {args.window})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fisher_curves.png", dpi=120)
        plt.close(fig)
        written.append(out / "fisher_curves.png")

    # (a') Fig. 4: tr(F) normalised to 0-1 with the dev metric, for groups that logged both
    overlay = {}
    for name, members in groups.items():
        metric = dev_metric(members[0])
        if name in curves and metric:
            dev = [([r["step"] for r in m["records"] if "dev" in r], [r["dev"][metric] for r in m["records"] if "dev" in r])
                   for m in members]
            overlay[name] = (metric, mean_over_seeds(dev))
    if overlay:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        right = ax.twinx()
        for name, (metric, (dev_steps, dev_mean, _)) in overlay.items():
            steps, mean = curves[name][:2]
            span = mean.max() - mean.min()
            ax.plot(steps, (mean - mean.min()) / (span if span > 0 else 1.0), color=colors[name], label=f"{name} tr(F)")
            right.plot(dev_steps, dev_mean, color=colors[name], ls="--", marker="o", ms=3, label=f"{name} dev {metric}")
        ax.set(xlabel="step", ylabel="tr(F), normalised to 0-1", ylim=(-0.05, 1.05),
               title="tr(F) (solid) and English dev metric (dashed)")
        right.set_ylabel(f"dev {', '.join(sorted({m for m, _ in overlay.values()}))}")
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out / "fisher_dev.png", dpi=120)
        plt.close(fig)
        written.append(out / "fisher_dev.png")

    # (b) Fig. 5: realised unfreezing order (mean over seeds) against GU's top-down diagonal
    orders = {name: [[float(np.mean(e["layers"])) for e in m["events"]] for m in members]
              for name, members in groups.items()
              if members[0]["config"].get("schedule") != "lpft" and any(m["events"] for m in members)}
    if orders:
        from fun.schedules import Selection, select_top_down
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        num_layers, per_step = layout([m for name in orders for m in groups[name]])
        frozen, diagonal = tuple(range(num_layers - 1)), []
        while frozen:  # GU's own SELECT(), so the reference is right for any L and m
            chosen = select_top_down(Selection(frozen, step=0, per_step=per_step))
            diagonal.append(float(np.mean(chosen)))
            frozen = tuple(j for j in frozen if j not in chosen)
        events = np.arange(1, len(diagonal) + 1)
        ax.plot(events, diagonal, color="gray", lw=7, alpha=0.3, label="top-down (GU)")  # wide: runs on it stay visible
        for name, per_run in orders.items():
            length = min(len(o) for o in per_run)
            table = np.array([o[:length] for o in per_run])  # (seeds, events)
            ax.errorbar(np.arange(1, length + 1), table.mean(0), yerr=table.std(0) if len(per_run) > 1 else None,
                        color=colors[name], marker="o", capsize=3, label=f"{name} ({len(per_run)} seed{'s' * (len(per_run) > 1)})")
        ax.set(xlabel="unfreeze event", ylabel="adapter layer unfrozen", title="Realised unfreezing schedules",
               xticks=events, yticks=range(num_layers))
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "schedules.png", dpi=120)
        plt.close(fig)
        written.append(out / "schedules.png")

    if not written:
        raise UsageError("nothing to plot: no run logged tr(F) (train.py --fisher-every N) or has unfreeze events "
                         "(schedule.json of a scheduled run)")
    for path in written:
        print(path)
    return 0


def layout(runs: list[dict]) -> tuple[int, int]:
    """(L, m) of the scheduled runs; the diagonal needs them to agree."""
    values = {(r["config"].get("num_layers"), r["config"].get("unfreeze_per_step", 1)) for r in runs}
    if len(values) != 1 or None in next(iter(values)):
        raise UsageError(f"the scheduled runs disagree on (layers, --unfreeze-per-step): {sorted(values)}; "
                         "plot them separately")
    return next(iter(values))


# --- compute -----------------------------------------------------------------------------------------------

def compute(args: argparse.Namespace) -> int:
    import torch

    from fun.data import check_file, collate
    from fun.device import get_device
    from fun.fisher import fisher_trace
    from fun.model import AdapterModel, build_task_adapter, load_adapter_weights, load_encoder, locate_model, read_adapter_config
    from fun.tasks import build_task

    if args.threads:
        torch.set_num_threads(args.threads)
    with blame("--adapter"):
        saved = read_adapter_config(args.adapter)
    if not saved.get("task_adapter"):
        raise UsageError(f"--adapter {args.adapter}: holds a fully fine-tuned encoder, no task adapter to measure")
    task_name = args.task or saved.get("task")
    with blame("--task"):
        task = build_task(task_name, saved)  # the settings the adapter was trained with rebuild its task
    if not (args.model or saved.get("model")):
        raise UsageError("--model: the adapter config does not name its encoder; pass --model")
    with blame("--model"):  # a local model is found (or not) before anything loads
        model_name = args.model or locate_model(saved["model"], saved.get("model_dir"))
    with blame("--data"):
        check_file(args.data, "data file")
    with blame("--device"):
        device = get_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    with blame("--model"):
        encoder, tokenizer = load_encoder(model_name)
    config = saved["task_adapter"]
    if (config["hidden_size"], config["num_layers"]) != (encoder.config.hidden_size, encoder.config.num_hidden_layers):
        raise UsageError(f"--adapter {args.adapter}: built for hidden size {config['hidden_size']} with "
                         f"{config['num_layers']} layers, but --model {model_name} has {encoder.config.hidden_size} "
                         f"and {encoder.config.num_hidden_layers}; pass the encoder it was trained on")
    lang_adapter = None
    if args.lang_adapter:
        from fun.adapterhub import load_lang_adapter_arg
        with blame("--lang-adapter"):
            lang_adapter = load_lang_adapter_arg(args.lang_adapter, encoder)
    elif saved.get("lang_adapter"):
        print(f"warning: the adapter was trained over language adapter {saved['lang_adapter']}; measuring without "
              f"one (pass --lang-adapter to stack it)", file=sys.stderr)
    model = AdapterModel(encoder, task.make_head(encoder.config.hidden_size, 0.0), build_task_adapter(config),
                         lang_adapter)
    try:
        load_adapter_weights(model, args.adapter)
    except RuntimeError as err:
        raise UsageError(f"--adapter {args.adapter}: weights do not fit task {task_name} on {model_name} "
                         f"({str(err).splitlines()[0]})") from None
    model.to(device)

    max_length = args.max_length or saved.get("max_length") or 128
    with blame("--data"):
        split = task.split("train", tokenizer, max_length, args.data)
    needed = args.batches * args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(split.features), generator=g).tolist()
    if len(order) < needed:
        print(f"note: {len(order)} features < --batches × --batch-size = {needed}; using all of them", file=sys.stderr)
    order = order[:needed]
    batches = [collate([split.features[i] for i in order[b:b + args.batch_size]], tokenizer.pad_token_id)
               for b in range(0, len(order), args.batch_size)]
    values = fisher_trace(model, batches, labels=args.labels, estimator=args.estimator, generator=g,
                          chunk_size=args.chunk_size, device=device)

    print(f"tr(F) per task-adapter layer ({args.estimator}, labels={args.labels}, {len(order)} examples "
          f"in {len(batches)} batches)")
    print(f"{'layer':>5}  {'tr(F)':>12}")
    for i, v in values.items():
        print(f"{i:>5}  {v:>12.6g}")
    average = float(np.mean(list(values.values())))
    print(f"{'mean':>5}  {average:>12.6g}")
    if args.out:
        result = dict(adapter=str(args.adapter), model=model_name, task=task_name, data=str(args.data),
                      labels=args.labels, estimator=args.estimator, batches=len(batches), batch_size=args.batch_size,
                      examples=len(order), max_length=max_length, seed=args.seed,
                      fisher={str(i): v for i, v in values.items()}, fisher_mean=average)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

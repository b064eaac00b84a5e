"""Paper-style tables from a sweep: Table 2 (English, lowest language, average without English; mean ± std
over seeds), per-language Tables 8-10, the realised unfreeze orders, and the random-permutation grouping.

    python -m experiments.aggregate runs/sweep --split test --out runs/sweep/tables

Reads every run directory under the roots (config.json, results-*.json from evaluate.py, schedule.json) and
groups runs by (test set, model, method). Method: the sweep's run name (ROOT/NAME/seedS) without its
TASK-MODEL- prefix — `gu`, `gu-1k`, `gu-perm03` —, or, for directories outside that layout, the schedule.
Std is the sample std (ddof=1) over seeds; with one seed it shows as –. Writes tables.md (also printed) and
CSV files (full precision) to --out. Curves and schedule plots: python fisher.py plot RUN_DIR... --out DIR.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cli
from cli import UsageError
from fun.hub import model_tag
from fun.metrics import mean_std
from fun.metrics import mean_std_cell as cell
from fun.model import adapter_suffix
from fun.run import RESULTS_NAME
from fun.schedules import SCHEDULES
from fun.tasks import TASKS

METHOD_ORDER = ("standard", "rand", "lpft", "gu", "gu-rev", "fun", "full")  # paper rows first, others after
TASK_ORDER = ("mlqa", "xquad", "xcopa", "xnli")                              # paper Table 2's columns


@dataclass
class Result:
    """One run evaluated on one test set."""
    task: str                   # the test set (xquad and mlqa for one SQuAD run)
    model: str                  # mbert / xlmr / mdeberta / a directory name
    method: str
    seed: int
    source: dict                # English metrics
    average: dict               # average over the target languages (English excluded)
    per_language: dict          # {lang: {metric: value}}
    metric: str                 # the task's main metric
    run_dir: Path
    schedule: str


def group_within(values: dict[str, float], delta: float = 1.0) -> list[list[str]]:
    """Paper footnote 9: (i) sort the results, (ii) take the largest value not yet grouped, (iii) the ungrouped
    runs within `delta` points of it (inclusive) join its group, (iv) repeat. Groups best first, each sorted."""
    ranked = sorted(values, key=lambda name: (-values[name], name))
    groups: list[list[str]] = []
    while ranked:
        top = values[ranked[0]]
        group = [name for name in ranked if top - values[name] <= delta + 1e-9]  # ranked: a prefix
        groups.append(group)
        ranked = ranked[len(group):]
    return groups


def method_of(run_dir: Path, cfg: dict, tag: str) -> str:
    """The method a run stands for; a task adapter other than the bottleneck one is named in it (`gu-lora`), so
    that LoRA and bottleneck runs of one schedule are rows of their own and pair by seed."""
    suffix = adapter_suffix(cfg)
    if not re.fullmatch(r"seed\d+", run_dir.name):  # not a sweep's ROOT/NAME/seedS: say what trained
        label = cfg.get("schedule", "?")
        if cfg.get("schedule") == "order":
            label += ":" + ",".join(map(str, cfg.get("order") or []))
        return label + (f"-n{cfg['max_train_samples']}" if cfg.get("max_train_samples") else "") + suffix
    name = run_dir.parent.name
    for prefix in (f"{cfg.get('task')}-{tag}-", f"{cfg.get('task')}-"):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
            break
    return name if name.endswith(suffix) else name + suffix


def realised_order(run_dir: Path, cfg: dict) -> list[int] | None:
    """Trainable from step 0, then each unfreeze event's adapters (schedule.json), as the paper lists them."""
    path = run_dir / "schedule.json"
    if cfg.get("schedule") not in SCHEDULES or not path.exists() or not cfg.get("num_layers"):
        return None
    initial = sorted(SCHEDULES[cfg["schedule"]].initial(cfg["num_layers"], tuple(cfg.get("order") or ())), reverse=True)
    return initial + [j for event in json.loads(path.read_text()) for j in event["layers"]]


def parse_root(spec: str) -> tuple[str | None, Path]:
    """`DIR` or `LABEL=DIR` → (label or None, directory)."""
    label, sep, path = spec.partition("=")
    if not sep:
        return None, Path(spec)
    if not re.fullmatch(r"[A-Za-z0-9_.+]+", label):
        raise UsageError(f"{spec}: a root's label (LABEL=DIR) takes letters, digits, '_', '.', '+'")
    return label, Path(path)


def restrict(result_file: dict, languages: list[str] | None, path: Path) -> tuple[dict, dict]:
    """(per_language, average) of an evaluate.py results file, on `languages` only (None: as evaluated)."""
    per_language = result_file.get("per_language") or {}
    if languages is None:
        return per_language, result_file.get("average") or {}
    absent = [lang for lang in languages if lang not in per_language]
    if absent:
        raise UsageError(f"{path}: no results for {', '.join(absent)}; evaluate those languages or leave them out "
                         "of --languages")
    per_language = {lang: per_language[lang] for lang in languages}
    keys = set.intersection(*(set(m) for m in per_language.values()))
    return per_language, {k: statistics.mean(m[k] for m in per_language.values()) for k in sorted(keys)}


def load(roots: list[str | Path], split: str, checkpoint: str,
         languages: list[str] | None = None) -> tuple[list[Result], list[Path], dict]:
    """(results, run directories without results for `split`, {run_dir: (model, method, schedule, seed, order)}).
    A root given as LABEL=DIR appends -LABEL to its methods (`standard-stack`), so two sweeps of the same schedules
    can be compared; `languages` restricts every result, and its target average, to those languages."""
    results, missing, runs = [], [], {}
    for label, root in map(parse_root, map(str, roots)):
        if not root.is_dir():
            raise UsageError(f"{root}: not a directory")
        for config in sorted(root.rglob("config.json")):
            run_dir = config.parent
            try:
                cfg = json.loads(config.read_text())
            except json.JSONDecodeError as err:
                raise UsageError(f"{config}: not valid JSON ({err})") from None
            tag = model_tag(cfg.get("model", "?"))
            method = method_of(run_dir, cfg, tag) + (f"-{label}" if label else "")
            runs[run_dir] = (tag, method, cfg.get("schedule"), cfg.get("seed"), realised_order(run_dir, cfg))
            found = False
            for path in sorted(run_dir.glob("results-*.json")):
                m = RESULTS_NAME.fullmatch(path.name)
                if not m or m["split"] != split or bool(m["final"]) != (checkpoint == "final"):
                    continue
                try:
                    r = json.loads(path.read_text())
                    per_language, average = restrict(r, languages, path)
                    results.append(Result(r["task"], tag, method, int(cfg["seed"]), r.get("source") or {},
                                          average, per_language, r["metric"], run_dir, cfg.get("schedule", "?")))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                    raise UsageError(f"{path}: not an evaluate.py results file ({type(err).__name__}: {err})") from None
                found = True
            if not found:
                missing.append(run_dir)
    return results, missing, runs


def method_key(method: str) -> tuple:
    base = next((m for m in sorted(METHOD_ORDER, key=len, reverse=True) if method == m or method.startswith(m + "-")), None)
    return (METHOD_ORDER.index(base) if base else len(METHOD_ORDER), method)


@dataclass
class Row:
    task: str
    model: str
    method: str
    results: list[Result]

    @property
    def metrics(self) -> list[str]:
        """The main metric, then the task's others: EM for QA (paper Table 2: F1 / EM), macro-F1 for classify."""
        first = self.results[0]
        return [first.metric] + [m for m in first.average if m != first.metric]

    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.results)

    def values(self, where: str, metric: str, lang: str | None = None) -> list[float]:
        """Per-seed values: where = 'source' (English), 'average', or 'lang'."""
        out = []
        for r in self.results:
            m = r.source if where == "source" else r.average if where == "average" else r.per_language.get(lang, {})
            if metric in m:
                out.append(float(m[metric]))
        return out

    def lowest_language(self) -> str | None:
        """The target language with the lowest mean over seeds."""
        langs = {lang for r in self.results for lang in r.per_language}
        means = {lang: statistics.mean(v) for lang in langs if (v := self.values("lang", self.metrics[0], lang))}
        return min(means, key=lambda lang: (means[lang], lang)) if means else None


def build_rows(results: list[Result]) -> dict[str, list[Row]]:
    """{task: rows sorted by model, then method (paper order)}; a row holds one result per seed."""
    groups: dict[tuple, list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.task, r.model, r.method)].append(r)
    by_task: dict[str, list[Row]] = defaultdict(list)
    for (task, model, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], method_key(kv[0][2]))):
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            dup = sorted({str(r.run_dir) for r in rs if seeds.count(r.seed) > 1})
            raise UsageError(f"{task} {model} {method}: the same seed twice ({', '.join(dup)}); aggregate one sweep root "
                             "at a time or give the runs distinct names")
        by_task[task].append(Row(task, model, method, sorted(rs, key=lambda r: r.seed)))
    return dict(by_task)


def block_lowest(rows: list[Row], mode: str, reference: str = "standard") -> dict[tuple[str, str], str | None]:
    """{(model, method): language of its Lowest cell}. 'block' (paper Table 2): per model, the language where its
    `reference` row (`standard`, Ada; or the baseline the runs are paired with) is lowest, for every method (a model
    without that row: each method's own); 'method': each method's own lowest language."""
    out = {}
    for row in rows:
        ref = next((r for r in rows if r.model == row.model and r.method == reference), None)
        source = ref if mode == "block" and ref is not None else row
        out[(row.model, row.method)] = source.lowest_language()
    return out


def table2(rows: list[Row], lowest_mode: str, reference: str = "standard") -> tuple[str, list[dict]]:
    """Paper Table 2 layout for one test set: markdown and CSV records."""
    lowest = block_lowest(rows, lowest_mode, reference)
    metrics = rows[0].metrics
    name = " / ".join(metrics)
    md = [f"| model | method | seeds | En ({name}) | Lowest ({name}) | Average ({name}) |", "|---|---|---|---|---|---|"]
    records = []
    for row in rows:
        lang = lowest[(row.model, row.method)]
        en = " / ".join(cell(row.values("source", m)) for m in metrics)
        low = f"{lang} " + " / ".join(cell(row.values("lang", m, lang)) for m in metrics) if lang else "-"
        avg = " / ".join(cell(row.values("average", m)) for m in metrics)
        md.append(f"| {row.model} | {row.method} | {','.join(map(str, row.seeds()))} | {en} | {low} | {avg} |")
        record = dict(task=row.task, model=row.model, method=row.method, seeds=len(row.results), lowest_lang=lang or "")
        for m in metrics:
            for where, values in (("en", row.values("source", m)), ("lowest", row.values("lang", m, lang)),
                                  ("avg", row.values("average", m))):
                mean, std = mean_std(values) if values else (None, None)
                record[f"{where}_{m}_mean"], record[f"{where}_{m}_std"] = mean, std
        records.append(record)
    return "\n".join(md), records


def language_table(rows: list[Row]) -> tuple[str, list[dict]]:
    """Paper Tables 8-10: English, every target language (mean over seeds), average (mean ± std)."""
    task, metric = rows[0].task, rows[0].metrics[0]
    seen = {lang for row in rows for r in row.results for lang in r.per_language}
    order = list(TASKS[task].languages) if task in TASKS else []
    langs = [lang for lang in order if lang in seen] + sorted(seen - set(order))
    md = ["| model | method | En | " + " | ".join(langs) + " | Avg. |", "|---" * (len(langs) + 4) + "|"]
    records = []
    for row in rows:
        cells = [cell(row.values("lang", metric, lang), with_std=False) for lang in langs]
        md.append(f"| {row.model} | {row.method} | {cell(row.values('source', metric), with_std=False)} | "
                  + " | ".join(cells) + f" | {cell(row.values('average', metric))} |")
        record = dict(task=task, model=row.model, method=row.method, metric=metric, seeds=len(row.results))
        for lang in ["en", *langs]:
            values = row.values("source", metric) if lang == "en" else row.values("lang", metric, lang)
            record[lang] = statistics.mean(values) if values else None
        averages = row.values("average", metric)
        record["avg_mean"], record["avg_std"] = mean_std(averages) if averages else (None, None)
        records.append(record)
    return "\n".join(md), records


# two-sided 95% critical values of Student's t for df = 1..30 (beyond: the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_t_interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, 95% interval low, high) of paired differences, by the t distribution over the pairs (seeds)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = (T975[len(diffs) - 2] if len(diffs) - 1 <= len(T975) else 1.96) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def bootstrap_interval(table: list[list[float]], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of a (seeds × languages) table of paired differences, resampling seeds
    and languages independently with replacement (a two-way bootstrap)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    values = np.asarray(table, dtype=float)  # (S, L)
    rows = rng.integers(values.shape[0], size=(resamples, values.shape[0]))
    cols = rng.integers(values.shape[1], size=(resamples, values.shape[1]))
    means = np.array([values[r][:, c].mean() for r, c in zip(rows, cols)])
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_differences(rows: list[Row], baseline: str = "standard") -> tuple[str, list[dict]]:
    """Each method against `baseline` on the seeds both ran (the same seed: the same data order and initial
    adapters): the mean paired difference of the target-language average and of English, a 95% interval from a
    paired t over seeds, and a 95% two-way bootstrap interval over seeds × target languages."""
    md = [f"| model | method − {baseline} | seeds | Δ average (targets) | 95% CI, paired t over seeds | "
          f"95% CI, bootstrap seeds × languages | Δ English | 95% CI, paired t |", "|---|---|---|---|---|---|---|---|"]
    records = []
    fmt = lambda x: "–" if x is None else f"{x:+.2f}"  # noqa: E731
    for base in (r for r in rows if r.method == baseline):
        metric = base.metrics[0]
        by_seed = {r.seed: r for r in base.results}
        for row in (r for r in rows if r.model == base.model and r.method != baseline):
            pairs = [(by_seed[r.seed], r) for r in row.results if r.seed in by_seed]
            if not pairs:
                continue
            langs = sorted(set.intersection(*(set(b.per_language) & set(r.per_language) for b, r in pairs)))
            avg = [r.average[metric] - b.average[metric] for b, r in pairs]
            english = [r.source[metric] - b.source[metric] for b, r in pairs if metric in r.source and metric in b.source]
            table = [[r.per_language[lang][metric] - b.per_language[lang][metric] for lang in langs] for b, r in pairs]
            mean, low, high = paired_t_interval(avg)
            b_low, b_high = bootstrap_interval(table) if langs else (None, None)
            e_mean, e_low, e_high = paired_t_interval(english) if english else (None, None, None)
            md.append(f"| {row.model} | {row.method} | {len(pairs)} | {fmt(mean)} | [{fmt(low)}, {fmt(high)}] | "
                      f"[{fmt(b_low)}, {fmt(b_high)}] | {fmt(e_mean)} | [{fmt(e_low)}, {fmt(e_high)}] |")
            records.append(dict(task=row.task, model=row.model, method=row.method, baseline=baseline, seeds=len(pairs),
                                languages=len(langs), diff_avg=mean, t_low=low, t_high=high, boot_low=b_low,
                                boot_high=b_high, diff_en=e_mean, en_t_low=e_low, en_t_high=e_high))
    return "\n".join(md), records


def kendall_tau(order: list[int], reference: list[int]) -> float:
    """Kendall's τ between two orders of the same items: +1 the same order, −1 reversed."""
    position = {item: i for i, item in enumerate(reference)}
    ranks = [position[item] for item in order]
    n = len(ranks)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    concordant = sum(1 for i, j in pairs if ranks[i] < ranks[j])
    return (2 * concordant - len(pairs)) / len(pairs) if pairs else 1.0


def permutation_groups(rows: list[Row], delta: float) -> tuple[str, list[dict]]:
    """Footnote 9 grouping of the `order` runs (permutation study) per model, on the mean average over seeds."""
    md, records = [], []
    for model in sorted({r.model for r in rows}):
        perm = {r.method: r for r in rows if r.model == model and all(x.schedule == "order" for x in r.results)}
        if len(perm) < 2:
            continue
        averages = {m: r.values("average", r.metrics[0]) for m, r in perm.items()}
        means = {m: statistics.mean(v) for m, v in averages.items() if v}
        md += [f"\n{model}: {len(means)} orders, grouped within {delta:g} point(s) (paper footnote 9)\n",
               "| group | mean | runs (average) | orders |", "|---|---|---|---|"]
        for i, group in enumerate(group_within(means, delta), 1):
            orders = ["[" + ", ".join(map(str, _order(perm[m]))) + "]" for m in group]
            md.append(f"| {i} | {statistics.mean(means[m] for m in group):.2f} | "
                      + ", ".join(f"{m} ({means[m]:.2f})" for m in group) + " | " + "; ".join(orders) + " |")
            records += [dict(task=rows[0].task, model=model, group=i, method=m, average=means[m],
                             order=" ".join(map(str, _order(perm[m])))) for m in group]
    return "\n".join(md), records


def _order(row: Row) -> list[int]:
    cfg = json.loads((row.results[0].run_dir / "config.json").read_text())
    return list(cfg.get("order") or [])


def orders_section(runs: dict) -> str:
    """The realised unfreeze orders of fun / rand / order runs, one line per seed."""
    lines = []
    ordered = sorted(runs.items(), key=lambda kv: (kv[1][0], method_key(kv[1][1]), kv[1][3] or 0))
    for run_dir, (model, method, schedule, seed, order) in ordered:
        if schedule in ("fun", "rand", "order") and order:
            top_down = sorted(order, reverse=True)
            lines.append(f"- {model} {method} seed {seed}: [{', '.join(map(str, order))}], Kendall τ with top-down "
                         f"{kendall_tau(order, top_down):+.2f}  ({run_dir})")
    if not lines:
        return ""
    return "## Realised unfreeze orders (first: trainable from step 0)\n\n" + "\n".join(lines)


def write_csv(path: Path, records: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)


def aggregate(roots: list[str | Path], split: str = "test", out: Path | None = None, checkpoint: str = "best",
              lowest: str = "block", delta: float = 1.0, paired: str = "standard",
              languages: list[str] | None = None) -> str:
    """Build every table; write tables.md and the CSV files to `out` (if given); return the markdown."""
    results, missing, runs = load(roots, split, checkpoint, languages)
    if not results:
        raise UsageError(f"no results-*{split}*.json in {len(runs)} run directories under {', '.join(map(str, roots))}; "
                         "evaluate the runs first (python evaluate.py RUN_DIR, or python -m experiments.sweep --evaluate)")
    sections, files = [], {}
    for task, rows in sorted(build_rows(results).items(), key=lambda kv: (TASK_ORDER + (kv[0],)).index(kv[0])):
        md2, rec2 = table2(rows, lowest, paired)
        mdl, recl = language_table(rows)
        mdp, recp = permutation_groups(rows, delta)
        lowest_note = (f"Lowest: the language where the model's {paired} row is lowest, as paper Table 2"
                       if lowest == "block" else "Lowest: each method's lowest language")
        sections += [f"## {task}: {split} (mean ± sample std over seeds; {lowest_note})\n\n{md2}",
                     f"### {task}: per language (mean over seeds; paper Tables 8-10)\n\n{mdl}"]
        files.update({f"table2-{task}.csv": rec2, f"languages-{task}.csv": recl})
        mdd, recd = paired_differences(rows, paired)
        if recd:
            sections.append(f"### {task}: paired differences against {paired} (same seeds)\n\n{mdd}")
            files[f"paired-{task}.csv"] = recd
        if recp:
            sections.append(f"### {task}: random-permutation study (paper Fig. 4)\n{mdp}")
            files[f"permutation-groups-{task}.csv"] = recp
    if orders := orders_section(runs):
        sections.append(orders)
    if missing:
        sections.append(f"Runs without {split} results ({len(missing)}): " + ", ".join(map(str, missing)))
    text = "\n\n".join(sections) + "\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(text)
        for name, records in files.items():
            write_csv(out / name, records)
    return text


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", help="sweep directories (or run directories); LABEL=DIR appends -LABEL to "
                                            "that sweep's methods, to compare two sweeps of the same schedules")
    p.add_argument("--split", default="test", choices=("test", "dev"), help="which results-*.json (evaluate.py --test-split)")
    p.add_argument("--checkpoint", default="best", choices=("best", "final"), help="results of best/ or final/")
    p.add_argument("--lowest", default="block", choices=("block", "method"),
                   help="Lowest column: the language of the model's --paired row (standard: the paper's) or "
                        "each method's own")
    p.add_argument("--delta", type=float, default=1.0, help="permutation study: group runs within this many points")
    p.add_argument("--paired", default="standard", help="the method every other is compared with, seed by seed")
    p.add_argument("--languages", help="comma-separated target languages: every table and average on these only "
                                       "(runs evaluated on more languages compared on the ones they share)")
    p.add_argument("--out", type=Path, help="write tables.md and CSV files here")
    def run() -> int:
        args = p.parse_args(argv)
        if args.delta < 0:
            raise UsageError(f"--delta {args.delta}: must be >= 0")
        languages = [x.strip() for x in args.languages.split(",") if x.strip()] if args.languages else None
        print(aggregate(args.roots, args.split, args.out, args.checkpoint, args.lowest, args.delta, args.paired,
                        languages), end="")
        return 0
    return cli.main(run)


if __name__ == "__main__":
    sys.exit(main())

"""Zero-shot cross-lingual evaluation of a trained task adapter + head (paper §3.1 and §4, Table 2).

    python evaluate.py runs/xcopa-gu-s1 --test-dir ../shared/data/xcopa --source-file ../shared/data/copa/test.jsonl

    python evaluate.py 'runs/xnli-gu/seed*' --test-dir ../shared/data/xnli --test-split dev      # several runs: one table

Rebuilds encoder + task adapter + head from RUN_DIR/best (or final), and the task from the run's config.json, then
scores English (the source) and every target language of the task. With language adapters (MAD-X), the run's source
adapter is swapped for each target language's (--lang-adapters de=PATH,...); the task adapter and head stay. Writes
RUN_DIR/results-<split>.json — task, metric, per_language, source (English), average (over the target languages,
English excluded), lowest — and RUN_DIR/predictions-<split>/<lang>.json (QA: the official {question id: answer text})
or .jsonl (one {id | line | row, prediction, label} per example), and prints the result as a markdown row like paper
Table 2. Several runs end with one table of all of them, plus mean ± std over seeds of runs that differ only in seed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from pathlib import Path

import torch

import cli
from cli import UsageError, blame, positive_int
from fun.config import RESUMABLE
from fun.data import LanguageNotFound
from fun.device import get_device, set_deterministic
from fun.evaluation import predict
from fun.hub import LANG_ADAPTERS, MODELS, model_tag
from fun.metrics import mean_std_cell as mean_cell
from fun.model import (AdapterModel, build_task_adapter, freeze, load_adapter_weights, load_encoder, locate_model,
                       read_adapter_config)
from fun.run import SPLIT_NAMES, results_path
from fun.tasks import Task, build_task


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="+", help="train.py run directories (config.json, best/, final/), or a quoted glob "
                                             "('runs/gu/seed*'); several print one table, with mean ± std over seeds")
    p.add_argument("--task", help="default: the run's task; a SQuAD run evaluates on xquad and mlqa alike")
    p.add_argument("--model", help="encoder (Hub id or local directory); default: the one the run trained with")
    p.add_argument("--checkpoint", default="best", choices=("best", "final"), help="best English dev, or the last step")
    p.add_argument("--test-dir", help="local directory of per-language files in the official layout; "
                                      "default: the Hub dataset. Languages without a file are skipped and listed")
    p.add_argument("--source-file", help="English (source) file, when --test-dir has none (XCOPA: copa/test.jsonl)")
    p.add_argument("--test-split", default="test", choices=tuple(SPLIT_NAMES), help="per-language test or dev/val sets")
    p.add_argument("--languages", help="comma-separated target languages (default: all of the task's; --task classify: "
                                       "the run's, or those with files in --test-dir); English is always evaluated as "
                                       "the source")
    p.add_argument("--lang-adapters", help="target language adapters, de=PATH,es=PATH (en=PATH overrides the run's); "
                                           "a run trained on an AdapterHub adapter (the presets) takes the targets' "
                                           "AdapterHub adapters by default (fun/hub.py)")
    p.add_argument("--no-lang-adapter-ok", action="store_true",
                   help="a target without a language adapter runs with none instead of being an error")
    p.add_argument("--max-samples", type=positive_int, help="seeded random subsample of each language (quick checks)")
    p.add_argument("--max-length", type=positive_int, help="max tokens per input (default: the run's)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when this machine has one)")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (CUDA; on CPU too, fast only where the "
                                                       "CPU has bfloat16 units)")
    p.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels: a rerun on the same GPU "
                                                                "and software repeats bit for bit (CPU always does)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--output", help="results file (default: RUN_DIR/results-<split>.json)")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_languages(value: str | None, task: Task, split: str = "test", test_dir: str | None = None) -> list[str]:
    """--languages, or the task's own targets: the paper's, or for a task of your own the run's --languages or the
    languages of the files in --test-dir."""
    if not value:
        langs = list(task.target_languages(split, test_dir))
        if not langs:
            where = (f"--test-dir {test_dir} holds no files of other languages ({expected_files(task, split, test_dir)})"
                     if test_dir else "the run names none (train.py --languages)")
            raise UsageError(f"--languages: which target languages? {where}; pass --languages de,fr,...")
        return langs
    langs = [x.strip() for x in value.split(",") if x.strip() and x.strip() != task.source_lang]
    allowed = task.known_languages()
    unknown = [x for x in langs if allowed is not None and x not in allowed]
    if unknown:
        raise UsageError(f"--languages: {', '.join(unknown)} not target languages of {task.name} "
                         f"(choose from {', '.join(allowed)})")
    return list(dict.fromkeys(langs))


def strip_lang(value: str) -> str:
    """train.py's --lang-adapter is DIR or en=DIR; the path is what we load."""
    return re.sub(r"^[a-z]{2,3}=", "", value)


def parse_lang_adapters(value: str | None) -> dict[str, str]:
    out = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        lang, sep, path = item.partition("=")
        if not sep or not lang.strip() or not path.strip():
            raise UsageError(f"--lang-adapters: '{item}' is not LANG=PATH (e.g. de=adapters/de,es=adapters/es)")
        out[lang.strip()] = path.strip()
    return out


def plan_adapters(source: str | None, given: dict[str, str], targets: list[str], fallback_ok: bool,
                  model: str | None = None) -> dict:
    """{language: adapter path or None}; a run trained with a source adapter needs one per target (MAD-X). A run
    trained on an AdapterHub adapter of the table (fun/hub.py) takes the targets' AdapterHub adapters from it."""
    if source is None and given:
        raise UsageError("--lang-adapters: this run was trained without a language adapter, so its task adapter "
                         "never saw one; evaluate without --lang-adapters")
    tag = model_tag(model) if model else None
    from_hub = source is not None and source in LANG_ADAPTERS.get(tag, {}).values()
    if from_hub:
        given = {**{lang: LANG_ADAPTERS[tag][lang] for lang in targets if lang in LANG_ADAPTERS[tag]}, **given}
    missing = [lang for lang in targets if lang not in given]
    if source is not None and missing and not fallback_ok:
        if from_hub:
            raise UsageError(f"--lang-adapters: AdapterHub has no {', '.join(missing)} language adapter for {MODELS[tag]}; "
                             f"train each with `python train.py --task mlm --lang LANG --model {MODELS[tag]} "
                             "--output-dir RUN` and pass LANG=RUN/best, or --no-lang-adapter-ok to evaluate without one")
        raise UsageError(f"the run was trained on the language adapter {source}; no --lang-adapters for "
                         f"{', '.join(missing)} (pass LANG=PATH for each, or --no-lang-adapter-ok to use none there)")
    return {"en": given.get("en", source), **{lang: given.get(lang) for lang in targets}}


def locate_data(task: Task, split: str, lang: str, args) -> tuple[str | None, str | None]:
    """(path for `task.load`, or None for the Hub; reason to skip the language, or None)."""
    if lang == task.source_lang and args.source_file:
        return args.source_file, None
    if not args.test_dir:
        return None, None
    with blame("--test-split"):
        file = task.local_file(split, args.test_dir, lang)
    if file is not None and not file.exists():
        hint = "; pass --source-file" if lang == task.source_lang else ""
        return None, f"no file {file}{hint}"
    return args.test_dir, None


def build_model(task: Task, checkpoint: Path, meta: dict, model_name: str) -> tuple[AdapterModel, object]:
    """Encoder + the saved task adapter and head, as train.py built them."""
    with blame("--model"):
        encoder, tokenizer = load_encoder(model_name)
    if (encoder.config.hidden_size, encoder.config.num_hidden_layers) != (meta["hidden_size"], meta["num_layers"]):
        raise UsageError(f"--model {model_name}: hidden size {encoder.config.hidden_size} × {encoder.config.num_hidden_layers} "
                         f"layers, but the run trained on {meta['hidden_size']} × {meta['num_layers']} ({meta['model']})")
    task_adapter = build_task_adapter(meta["task_adapter"]) if meta.get("task_adapter") else None
    head = task.make_head(encoder.config.hidden_size, encoder.config.hidden_dropout_prob)
    freeze(encoder)
    model = AdapterModel(encoder, head, task_adapter)
    try:
        load_adapter_weights(model, checkpoint)
    except RuntimeError as err:
        raise UsageError(f"{checkpoint}: the saved head does not fit task {task.name} (trained on {meta['task']}): "
                         f"{str(err).splitlines()[0]}") from None
    freeze(model)
    return model.eval(), tokenizer


def summarise(task: Task, per_language: dict[str, dict]) -> tuple[dict, dict | None]:
    """(average of every metric over the target languages — English excluded —, the lowest language)."""
    targets = {lang: m for lang, m in per_language.items() if lang != task.source_lang}
    if not targets:
        return {}, None
    keys = next(iter(targets.values())).keys()
    average = {k: sum(m[k] for m in targets.values()) / len(targets) for k in keys}
    low = min(targets, key=lambda lang: targets[lang][task.metric])
    return average, {"lang": low, "value": targets[low][task.metric]}


def metric_keys(results: dict) -> list[str]:
    """The metrics a table shows: the task's main metric, then the others it reports (QA: F1 / EM; a classification
    task of your own: accuracy / macro-F1)."""
    first = results["source"] or next(iter(results["per_language"].values()), None) or {}
    return [results["metric"], *(k for k in first if k != results["metric"])]


def table_cells(results: dict, languages: list[str], keys: list[str]) -> list[str]:
    """The en, lowest, avg and per-language cells of one evaluation."""
    def cell(m: dict | None) -> str:
        return " / ".join(f"{m[k]:.2f}" for k in keys) if m else "—"

    low = results["lowest"]
    return [cell(results["source"]), f"{low['lang']} {low['value']:.2f}" if low else "—", cell(results["average"]),
            *(cell(results["per_language"].get(lang)) for lang in languages)]


def markdown_row(results: dict, languages: list[str]) -> str:
    """| task | en | lowest | avg | lang… | — the shape of paper Table 2 (QA cells: F1 / EM)."""
    keys = metric_keys(results)
    cells = [f"{results['task']} ({' / '.join(keys)}, {results['split']})", *table_cells(results, languages, keys)]
    header = ["task", "en", "lowest", "avg", *languages]
    return "\n".join("| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), cells))


def main(argv: list[str] | None = None) -> int:
    return cli.main(lambda: run(build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    run_dirs = expand_run_dirs(args.run_dir)
    if len(run_dirs) > 1 and args.output:
        raise UsageError(f"--output: {len(run_dirs)} run directories would write the same file; leave --output out "
                         "(each run gets RUN_DIR/results-<split>.json)")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for run_dir in run_dirs:
        try:
            runs.append(evaluate_run(run_dir, args))
        except UsageError as err:
            raise UsageError(f"{run_dir}: {err}" if len(run_dirs) > 1 else str(err)) from None
    if len(runs) > 1:
        print("\n" + runs_table(runs))
    return 0


def expand_run_dirs(values: list[str]) -> list[Path]:
    """The run directories named, a quoted glob ('runs/xnli-gu/seed*') expanded to the run directories it matches."""
    out = []
    for value in values:
        if not Path(value).exists() and glob.has_magic(value):
            matches = [Path(p) for p in sorted(glob.glob(value)) if (Path(p) / "config.json").is_file()]
            if not matches:
                raise UsageError(f"{value}: no run directory (with a config.json) matches")
            out += matches
        else:
            out.append(Path(value))
    return list(dict.fromkeys(out))


def evaluate_run(run_dir: Path, args: argparse.Namespace) -> dict:
    """Evaluate one run on every language; write its results and predictions; print its Table 2 row."""
    if not (run_dir / "config.json").exists():
        raise UsageError(f"{run_dir}: no config.json; expected a train.py run directory")
    cfg = json.loads((run_dir / "config.json").read_text())
    with blame("--task"):
        task = build_task(args.task or cfg["task"], cfg)  # the run's own settings rebuild its task
    checkpoint = run_dir / args.checkpoint
    with blame("--checkpoint"):
        meta = read_adapter_config(checkpoint)
    with blame("--model"):  # a local model is found (or not) before anything loads
        model_name = args.model or locate_model(meta["model"], meta.get("model_dir") or cfg.get("model_dir"))
    split = SPLIT_NAMES[args.test_split]
    if args.test_dir and not Path(args.test_dir).is_dir():
        raise UsageError(f"--test-dir {args.test_dir}: not a directory")
    with blame("--device"):
        device = get_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        set_deterministic()

    # --- what to evaluate: data per language (cheap checks first), language adapters -----------------------
    targets = parse_languages(args.languages, task, split, args.test_dir)
    data, skipped = {}, {}
    for lang in [task.source_lang, *targets]:
        path, reason = locate_data(task, split, lang, args)
        if reason:
            skipped[lang] = reason
        else:
            data[lang] = path
    if not any(lang in data for lang in targets):
        raise UsageError(f"--test-dir {args.test_dir}: no {task.name} {args.test_split} files for any of "
                         f"{', '.join(targets)}; {expected_files(task, split, args.test_dir)}")
    source_adapter = strip_lang(meta["lang_adapter"]) if meta.get("lang_adapter") else None
    given = parse_lang_adapters(args.lang_adapters)
    known = task.known_languages()
    unknown = sorted(set(given) - {task.source_lang, *known}) if known is not None else []
    if unknown:
        raise UsageError(f"--lang-adapters: {', '.join(unknown)} not languages of {task.name} "
                         f"({', '.join(known)}; en for the source)")
    adapters = plan_adapters(source_adapter, given, [lang for lang in targets if lang in data], args.no_lang_adapter_ok,
                             model_name)

    # --- model ---------------------------------------------------------------------------------------------
    model, tokenizer = build_model(task, checkpoint, meta, model_name)
    model.to(device)
    max_length = args.max_length or meta.get("max_length") or task.defaults.max_length
    autocast_dtype = torch.bfloat16 if args.bf16 else None
    output = Path(args.output) if args.output else results_path(run_dir, task.name, cfg["task"], split, args.checkpoint)
    predictions_dir = output.with_name(output.stem.replace("results", "predictions", 1) if "results" in output.stem
                                       else output.stem + "-predictions")

    per_language, examples = {}, {}
    for lang, path in data.items():
        if adapters.get(lang) is not None:
            from fun.adapterhub import load_lang_adapter  # lazily: only runs with language adapters need it
            with blame("--lang-adapters"):
                model.set_lang_adapter(load_lang_adapter(adapters[lang], model.encoder))
        else:
            model.set_lang_adapter(None)
        try:
            source = lang == task.source_lang and (args.source_file or not args.test_dir)
            with blame("--source-file" if source else "--test-dir"):
                try:
                    lang_split = task.split(split, tokenizer, max_length, path, lang, max_examples=args.max_samples,
                                            seed=0)
                except LanguageNotFound as err:  # a file of several languages without this one: report the others
                    skipped[lang] = str(err)
                    continue
        except UsageError as err:  # e.g. XCOPA's English test is not on the Hub: report the targets anyway
            if lang != task.source_lang or path is not None:
                raise
            skipped[lang] = str(err)
            continue
        logits = predict(model, task, lang_split, args.batch_size, tokenizer.pad_token_id, device, autocast_dtype,
                         progress=not args.no_progress)
        predictions = task.decode(lang_split, logits)
        per_language[lang] = task.metrics(lang_split, predictions)
        write_predictions(predictions_dir / lang, task.prediction_records(lang_split, predictions))
        examples[lang] = len(lang_split.examples)
        print(f"{lang}: " + ", ".join(f"{k} {v:.2f}" for k, v in per_language[lang].items())
              + f" ({examples[lang]} examples)", file=sys.stderr)

    source = per_language.pop(task.source_lang, None)
    average, lowest = summarise(task, per_language)
    results = dict(task=task.name, metric=task.metric, split=args.test_split, checkpoint=args.checkpoint,
                   step=meta.get("step"), run_dir=str(run_dir), model=model_name, max_length=max_length,
                   source=source, per_language=per_language, average=average, lowest=lowest, examples=examples,
                   skipped=skipped, lang_adapters={lang: adapters.get(lang) for lang in data},
                   max_samples=args.max_samples, predictions=str(predictions_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))

    print(markdown_row(results, targets))
    if skipped:
        print("skipped (no data): " + "; ".join(f"{lang}: {why}" for lang, why in skipped.items()))
    print(f"results → {output}; predictions → {predictions_dir}/")
    return dict(results, config=cfg, targets=targets)


def write_predictions(path: Path, records: dict | list[dict]) -> Path:
    """PATH.json for a {question id: answer} dict (the official SQuAD / MLQA format), PATH.jsonl for one record per
    example."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(records, dict):
        path = path.with_suffix(".json")
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1))
    else:
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def expected_files(task: Task, split: str, test_dir: str | None) -> str:
    """What a directory of per-language files should hold, and, for a test split, whether dev files would do."""
    with blame("--test-split"):
        names = [p.name if p.parent == Path(test_dir) else str(p.relative_to(test_dir))
                 for p in task.local_files(split, test_dir, "<lang>")]
    text = "expected " + " or ".join(dict.fromkeys(names))
    if split == "test":
        try:
            dev = [str(p.relative_to(test_dir)) for p in task.local_files("dev", test_dir, "<lang>")]
        except ValueError:  # no per-language dev sets (XQuAD)
            dev = []
        if dev:
            text += f"; --test-split dev reads the dev files instead ({' or '.join(dict.fromkeys(dev))})"
    return text


# --- several runs: one table -------------------------------------------------------------------------------

def seed_groups(runs: list[dict]) -> list[list[int]]:
    """Indices of runs whose config.json differ only in the seed (and in what does not change results), with 2+ runs."""
    ignore = RESUMABLE | {"seed", "model_dir"}
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        key = json.dumps({k: v for k, v in r["config"].items() if k not in ignore}, sort_keys=True)
        groups.setdefault(key + r["task"], []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def runs_table(runs: list[dict]) -> str:
    """Paper Table 2's layout with the runs as rows, then mean ± sample std over seeds of runs that differ only in
    their seed (experiments.aggregate builds the paper's tables, with paired statistics, from a sweep)."""
    tasks = {r["task"] for r in runs}
    if len(tasks) > 1:
        return "(no common table: the runs were evaluated on different tasks: " + ", ".join(sorted(tasks)) + ")"
    languages = list(dict.fromkeys(lang for r in runs for lang in r["targets"] if lang in r["per_language"]))
    keys = metric_keys(runs[0])
    header = ["run", "seed", "en", "lowest", "avg", *languages]
    rows = [[r["run_dir"], str(r["config"].get("seed")), *table_cells(r, languages, keys)] for r in runs]
    for group in seed_groups(runs):
        members = [runs[i] for i in group]

        def values(where: str, lang: str | None = None) -> list[dict]:
            return [m["source"] if where == "en" else m["average"] if where == "avg" else m["per_language"].get(lang)
                    for m in members]

        def summary(metrics: list[dict | None]) -> str:
            present = [m for m in metrics if m]
            return " / ".join(mean_cell([m[k] for m in present]) for k in keys) if present else "—"

        means = {lang: sum(v[runs[0]["metric"]] for v in vs) / len(vs)
                 for lang in languages if (vs := [v for v in values("lang", lang) if v])}
        low = min(means, key=means.get) if means else None
        name = os.path.commonprefix([m["run_dir"] for m in members]) + "*"
        rows.append([f"{name}: mean ± std", ",".join(str(m["config"].get("seed")) for m in members),
                     summary(values("en")), f"{low} {summary(values('lang', low))}" if low else "—",
                     summary(values("avg")), *(summary(values("lang", lang)) for lang in languages)])
    title = f"{runs[0]['task']} ({' / '.join(keys)}, {runs[0]['split']})"
    return title + "\n" + "\n".join("| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), *rows))


if __name__ == "__main__":
    sys.exit(main())

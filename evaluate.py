"""Zero-shot cross-lingual evaluation of a trained task adapter + head (paper §3.1 and §4, Table 2).

    python evaluate.py runs/xcopa-gu-s1 --test-dir ../shared/data/xcopa --source-file ../shared/data/copa/test.jsonl

Rebuilds encoder + task adapter + head from RUN_DIR/best (or final), then scores English (the source) and
every target language of the task. With language adapters (MAD-X), the run's source adapter is swapped for
each target language's (--lang-adapters de=PATH,...); the task adapter and head stay. Writes
RUN_DIR/results-<split>.json — task, metric, per_language, source (English), average (over the target
languages, English excluded), lowest — and prints the result as a markdown row like paper Table 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

import cli
from cli import UsageError, blame, positive_int
from fun.adapters import AdapterSet
from fun.device import get_device, set_deterministic
from fun.evaluation import evaluate
from fun.hub import LANG_ADAPTERS, MODELS, model_tag
from fun.model import AdapterModel, freeze, load_adapter_weights, load_encoder, read_adapter_config
from fun.run import SPLIT_NAMES, results_path
from fun.tasks import Task, build_task


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a train.py run directory (config.json, best/, final/)")
    p.add_argument("--task", help="default: the run's task; a SQuAD run evaluates on xquad and mlqa alike")
    p.add_argument("--model", help="encoder (Hub id or local directory); default: the one the run trained with")
    p.add_argument("--checkpoint", default="best", choices=("best", "final"), help="best English dev, or the last step")
    p.add_argument("--test-dir", help="local directory of per-language files in the official layout; "
                                      "default: the Hub dataset. Languages without a file are skipped and listed")
    p.add_argument("--source-file", help="English (source) file, when --test-dir has none (XCOPA: copa/test.jsonl)")
    p.add_argument("--test-split", default="test", choices=tuple(SPLIT_NAMES), help="per-language test or dev/val sets")
    p.add_argument("--languages", help="comma-separated target languages (default: all of the task's); English "
                                       "is always evaluated as the source")
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


def parse_languages(value: str | None, task: Task) -> list[str]:
    if not value:
        return list(task.languages)
    langs = [x.strip() for x in value.split(",") if x.strip() and x.strip() != task.source_lang]
    allowed = task.languages + task.extra_languages
    unknown = [x for x in langs if x not in allowed]
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
    task_adapter = AdapterSet(**meta["task_adapter"]) if meta.get("task_adapter") else None
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


def markdown_row(results: dict, languages: list[str]) -> str:
    """| task | en | lowest | avg | lang… | — the shape of paper Table 2 (QA cells: F1 / EM)."""
    def cell(m: dict | None) -> str:
        if not m:
            return "—"
        return f"{m['f1']:.2f} / {m['exact_match']:.2f}" if "exact_match" in m else f"{m[results['metric']]:.2f}"

    low = results["lowest"]
    cells = [f"{results['task']} ({results['metric']}, {results['split']})", cell(results["source"]),
             f"{low['lang']} {low['value']:.2f}" if low else "—", cell(results["average"]) if results["average"] else "—",
             *(cell(results["per_language"].get(lang)) for lang in languages)]
    header = ["task", "en", "lowest", "avg", *languages]
    return "\n".join("| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), cells))


def main(argv: list[str] | None = None) -> int:
    return cli.main(lambda: run(build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").exists():
        raise UsageError(f"{run_dir}: no config.json; expected a train.py run directory")
    cfg = json.loads((run_dir / "config.json").read_text())
    with blame("--task"):
        task = build_task(args.task or cfg["task"], cfg)  # the run's own settings rebuild its task
    checkpoint = run_dir / args.checkpoint
    with blame("--checkpoint"):
        meta = read_adapter_config(checkpoint)
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
    targets = parse_languages(args.languages, task)
    data, skipped = {}, {}
    for lang in [task.source_lang, *targets]:
        path, reason = locate_data(task, split, lang, args)
        if reason:
            skipped[lang] = reason
        else:
            data[lang] = path
    if not any(lang in data for lang in targets):
        raise UsageError(f"--test-dir {args.test_dir}: no {task.name} {args.test_split} files for any of "
                         f"{', '.join(targets)} ({skipped[targets[0]]}, ...)")
    source_adapter = strip_lang(meta["lang_adapter"]) if meta.get("lang_adapter") else None
    given = parse_lang_adapters(args.lang_adapters)
    unknown = sorted(set(given) - {task.source_lang, *task.languages, *task.extra_languages})
    if unknown:
        raise UsageError(f"--lang-adapters: {', '.join(unknown)} not languages of {task.name} "
                         f"({', '.join(task.languages + task.extra_languages)}; en for the source)")
    adapters = plan_adapters(source_adapter, given, [lang for lang in targets if lang in data], args.no_lang_adapter_ok,
                             args.model or meta["model"])

    # --- model ---------------------------------------------------------------------------------------------
    model, tokenizer = build_model(task, checkpoint, meta, args.model or meta["model"])
    model.to(device)
    max_length = args.max_length or meta.get("max_length") or task.defaults.max_length
    autocast_dtype = torch.bfloat16 if args.bf16 else None

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
                lang_split = task.split(split, tokenizer, max_length, path, lang, max_examples=args.max_samples,
                                        seed=0)
        except UsageError as err:  # e.g. XCOPA's English test is not on the Hub: report the targets anyway
            if lang != task.source_lang or path is not None:
                raise
            skipped[lang] = str(err)
            continue
        per_language[lang] = evaluate(model, task, lang_split, args.batch_size, tokenizer.pad_token_id, device,
                                      autocast_dtype, progress=not args.no_progress)
        examples[lang] = len(lang_split.examples)
        print(f"{lang}: " + ", ".join(f"{k} {v:.2f}" for k, v in per_language[lang].items())
              + f" ({examples[lang]} examples)", file=sys.stderr)

    source = per_language.pop(task.source_lang, None)
    average, lowest = summarise(task, per_language)
    results = dict(task=task.name, metric=task.metric, split=args.test_split, checkpoint=args.checkpoint,
                   step=meta.get("step"), run_dir=str(run_dir), model=args.model or meta["model"], max_length=max_length,
                   source=source, per_language=per_language, average=average, lowest=lowest, examples=examples,
                   skipped=skipped, lang_adapters={lang: adapters.get(lang) for lang in data},
                   max_samples=args.max_samples)
    output = Path(args.output) if args.output else results_path(run_dir, task.name, cfg["task"], split, args.checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))

    print(markdown_row(results, targets))
    if skipped:
        print("skipped (no data): " + "; ".join(f"{lang}: {why}" for lang, why in skipped.items()))
    print(f"results → {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

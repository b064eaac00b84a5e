"""Download what runs need into the standard Hugging Face caches, for machines without internet.

Compute nodes often have no network. On a machine that has it (a login node), fetch the encoder and its tokenizer,
the AdapterHub language adapters and the datasets of the presets or flags you will run; then run there with
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1, which makes train.py and evaluate.py read the caches only.

    python prefetch.py --presets xnli-mbert-gu,xnli-mbert-standard       # what these presets train and evaluate on
    python prefetch.py --presets 'xcopa-xlmr-*'                          # shell patterns, as experiments.sweep
    python prefetch.py --task xquad --model FacebookAI/xlm-roberta-base   # a task and model without language adapters
    python prefetch.py --task mlm --lang th --model google-bert/bert-base-multilingual-cased   # text + MLM head

Caches: HF_HOME (default ~/.cache/huggingface); point it at shared storage that the compute nodes see.
"""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

import cli
from cli import UsageError, blame
from fun import hub


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", help="comma-separated preset names or patterns (python train.py --list-presets)")
    p.add_argument("--task", choices=("xnli", "xcopa", "xquad", "mlqa", "mlm"), help="instead of --presets")
    p.add_argument("--model", default=hub.MODELS["mbert"], help="with --task: Hub id of the encoder")
    p.add_argument("--lang-adapters", action="store_true",
                   help="with --task: also the AdapterHub language adapters (English and the task's languages)")
    p.add_argument("--lang", help="with --task mlm: the language whose Wikipedia text to fetch")
    p.add_argument("--no-data", action="store_true", help="models and adapters only")
    return p


def plan(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(task, model, with language adapters) for each run to prepare."""
    if args.presets:
        from fun.presets import PRESETS, expand
        with blame("--presets"):
            names = expand(args.presets)
        runs = [(PRESETS[n].flags["task"], PRESETS[n].flags["model"], "lang_adapter" in PRESETS[n].flags) for n in names]
        return list(dict.fromkeys(runs))
    if not args.task:
        raise UsageError("nothing to fetch: give --presets, or --task with --model")
    if args.task == "mlm" and not args.lang:
        raise UsageError("--lang: --task mlm needs the language of the text, e.g. --lang th")
    return [(args.task, args.model, args.lang_adapters)]


def downloads(task: str, model: str, lang_adapters: bool, lang: str | None, data: bool) -> list[tuple[str, object]]:
    """(what, a function that fetches it) for one run: the encoder, language adapters, every split it reads."""
    from fun import mlm
    from fun.adapterhub import resolve_directory
    from fun.model import load_encoder
    from fun.tasks import TASKS

    items = [(f"model {model}", lambda: load_encoder(model))]
    if task == "mlm":
        items.append((f"MLM head of {model}", lambda: mlm.pretrained_mlm_head(model, load_encoder(model)[0])))
        if data:
            items.append((f"Wikipedia {lang}", lambda: hub.load_dataset(hub.WIKIPEDIA, lang)))
        return items
    languages = ["en", *TASKS[task].languages, *TASKS[task].extra_languages]
    if lang_adapters:
        for lang in languages:
            try:
                repo = hub.lang_adapter_id(model, lang)
            except ValueError as err:
                print(f"note: {err}", file=sys.stderr)
                continue
            items.append((f"language adapter {repo}", lambda repo=repo: resolve_directory(repo)))
    if data:
        seen = set()
        for split, lang in [("train", "en"), ("dev", "en")] + [(s, l) for s in hub.TARGETS[task] for l in languages]:
            try:
                spec = hub.dataset_for(task, split, lang)
            except ValueError:  # e.g. XCOPA's English test set is not on the Hub
                continue
            name = spec.args(lang)["name"]
            if (spec, name) in seen:
                continue
            seen.add((spec, name))
            fetch = (lambda spec=spec: hub.cached_files(spec, download=True)) if spec.data_dir else \
                (lambda spec=spec, lang=lang: hub.load_dataset(spec, lang))
            items.append((f"dataset {spec.id} {name or spec.data_dir} {spec.split}", fetch))
    return items


def run(args: argparse.Namespace) -> int:
    items = []
    for task, model, lang_adapters in plan(args):
        items += downloads(task, model, lang_adapters, args.lang, not args.no_data)
    items = list(dict((what, fetch) for what, fetch in items).items())  # each once
    failed = []
    for what, fetch in tqdm(items, desc="prefetch", unit="item"):
        try:
            fetch()
        except (OSError, ValueError) as err:
            failed.append(f"{what}: {err}")
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    print(f"fetched {len(items) - len(failed)} of {len(items)} items into the Hugging Face caches.")
    print("On the machine without internet (same HF_HOME), run offline:\n"
          "    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1\n"
          "    python train.py --preset NAME --output-dir runs/NAME-s1 && python evaluate.py runs/NAME-s1")
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

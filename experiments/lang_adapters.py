"""What MLM training did for each language adapter: held-out masked-token loss before and after, and its cost.

    python -m experiments.lang_adapters experiments/results/xnli-e5-madx/lang-adapters --out DIR

Reads every `train.py --task mlm` run under the roots (config.json, log.jsonl, summary.json). The step-0 line of
log.jsonl holds the dev loss of the frozen encoder + MLM head with no adapter (`dev_without_adapter`, MAD-X's
"before") and with the adapter as initialised (`dev`); summary.json the best dev loss and the training seconds.
Prints a markdown table, one row per language, and writes it (and a CSV) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cli
from cli import UsageError
from experiments.aggregate import write_csv


def read_run(run_dir: Path) -> dict:
    """One row: language, steps, seconds, dev loss without adapter / at step 0 / best, and the best step."""
    config = json.loads((run_dir / "config.json").read_text())
    first = json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    if first.get("step") != 0 or "dev" not in first:
        raise UsageError(f"{run_dir / 'log.jsonl'}: its first line is not the step-0 dev evaluation")
    best = summary["best"]
    return dict(lang=config.get("lang") or "all", train=config["mlm_train"], steps=summary["steps"],
                batch_size=config["batch_size"], seconds=summary["train_seconds"],
                dev_tokens=first["dev"]["masked_tokens"],
                loss_no_adapter=first.get("dev_without_adapter", {}).get("loss"), loss_step0=first["dev"]["loss"],
                loss_best=best["metrics"]["loss"], best_step=best["step"], accuracy_best=best["metrics"]["accuracy"])


def report(roots: list[Path]) -> tuple[str, list[dict]]:
    runs = sorted({c.parent for root in roots for c in root.rglob("config.json")
                   if json.loads(c.read_text()).get("task") == "mlm" and (c.parent / "summary.json").exists()})
    if not runs:
        raise UsageError(f"no finished `train.py --task mlm` runs under {', '.join(map(str, roots))}")
    rows = [read_run(r) for r in runs]
    fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    md = ["| language | trains | steps × batch | minutes | dev loss: no adapter | step 0 | best (step) | "
          "best masked-token accuracy | dev masked tokens |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['lang']} | {r['train']} | {r['steps']} × {r['batch_size']} | {r['seconds'] / 60:.0f} | "
           f"{fmt(r['loss_no_adapter'])} | {fmt(r['loss_step0'])} | {fmt(r['loss_best'])} ({r['best_step']}) | "
           f"{r['accuracy_best']:.1f}% | {r['dev_tokens']:,} |" for r in rows]
    return "\n".join(md), rows


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path, help="directories holding train.py --task mlm runs")
    p.add_argument("--out", type=Path, help="write lang-adapters.md and lang-adapters.csv here")

    def run() -> int:
        args = p.parse_args(argv)
        md, rows = report(args.roots)
        print(md)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "lang-adapters.md").write_text(md + "\n")
            write_csv(args.out / "lang-adapters.csv", rows)
        return 0
    return cli.main(run)


if __name__ == "__main__":
    sys.exit(main())

"""Training-step and inference benchmarks (a script, not a test). Prints tables, writes bench/results/*.json.

    python bench/train_bench.py --model ../shared/models/multilingual-e5-small      # CPU, batch 32 x 128
    python bench/train_bench.py --tiny                                              # a small config from code

Measures, in one process per configuration (so peak memory is that configuration's own):
  * a training step (forward, backward, clip, AdamW) with no adapters (head only), `standard` (all adapters
    trainable) and the GU phases with the top 1, 4, 8 adapters trainable, in train mode (dropout on);
  * forward-only hook overhead: adapters attached but all frozen vs no adapters (eval, inference mode);
  * evaluation throughput on real XNLI dev text: length-sorted batches with dynamic padding vs fixed padding.
Ratios are taken within one run, against the all-trainable step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fun.adapters import AdapterSet  # noqa: E402
from fun.data import collate  # noqa: E402
from fun.heads import ClassificationHead  # noqa: E402
from fun.model import AdapterModel, freeze, load_encoder  # noqa: E402
from fun.tasks import TASKS, task_loss  # noqa: E402

SHARED = ROOT.parent / "shared"


def build(args, adapters: bool):
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import make_tokenizer, tiny_encoder
        encoder, tokenizer = tiny_encoder("bert", layers=12, hidden=128, vocab_size=200), make_tokenizer()
    else:
        encoder, tokenizer = load_encoder(args.model)
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    freeze(encoder)
    task_adapter = AdapterSet(d, n, 16) if adapters else None
    model = AdapterModel(encoder, ClassificationHead(d, 3, encoder.config.hidden_dropout_prob), task_adapter)
    return model.to(args.device), tokenizer


def synthetic_batch(args, vocab_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (args.batch_size, args.seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(3, (args.batch_size,), generator=g)}


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_mb(device) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(args, case: str) -> dict:
    """One configuration, measured in this (fresh) process."""
    torch.manual_seed(0)
    if case == "eval-dynamic" or case == "eval-fixed":
        model, tokenizer = build(args, adapters=True)
        model.eval()
        task = TASKS["xnli"]
        split = task.split("dev", tokenizer, 128, str(SHARED / "data/xnli/dev-en.tsv"),
                           max_examples=args.eval_examples)
        from fun.evaluation import predict
        if case == "eval-fixed":  # the naive baseline: every batch padded to max length, original order
            feats = split.features

            @torch.inference_mode()
            def go():
                for i in range(0, len(feats), args.batch_size):
                    rows = [dict(f, input_ids=f["input_ids"] + [tokenizer.pad_token_id] * (128 - len(f["input_ids"])),
                                 attention_mask=f["attention_mask"] + [0] * (128 - len(f["attention_mask"])),
                                 **({"token_type_ids": f["token_type_ids"] + [0] * (128 - len(f["token_type_ids"]))}
                                    if "token_type_ids" in f else {})) for f in feats[i:i + args.batch_size]]
                    batch = {k: v.to(args.device) for k, v in collate(rows, tokenizer.pad_token_id).items() if k != "labels"}
                    model(batch)
        else:
            def go():
                predict(model, task, split, args.batch_size, tokenizer.pad_token_id, args.device, progress=False)
        seconds = timed(go, 1, 0, args.device)
        return dict(case=case, seconds=seconds, examples_per_s=len(split.features) / seconds,
                    peak_mb=peak_memory_mb(args.device))

    adapters = case != "no-adapters" and case != "forward-no-adapters"
    model, tokenizer = build(args, adapters)
    batch = {k: v.to(args.device) for k, v in synthetic_batch(args, model.encoder.config.vocab_size).items()}
    n = model.encoder.config.num_hidden_layers
    if case.startswith("forward"):
        if adapters:
            for p in model.task_adapter.parameters():
                p.requires_grad_(False)
        model.eval()

        @torch.inference_mode()
        def go():
            model(batch)
    else:
        trainable = {"no-adapters": 0, "standard": n, "gu-1": 1, "gu-4": 4, "gu-8": 8}[case]
        if adapters:
            for i, layer in enumerate(model.task_adapter.layers):
                for p in layer.parameters():
                    p.requires_grad_(i >= n - trainable)  # GU: the top `trainable` adapters
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def go():
            loss = task_loss(model(batch), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    seconds = timed(go, args.repeats, args.warmup, args.device)
    return dict(case=case, seconds=seconds, samples_per_s=args.batch_size / seconds, peak_mb=peak_memory_mb(args.device))


CASES = ["no-adapters", "gu-1", "gu-4", "gu-8", "standard", "forward-no-adapters", "forward-frozen-adapters",
         "eval-dynamic", "eval-fixed"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models/multilingual-e5-small"))
    p.add_argument("--tiny", action="store_true", help="12-layer hidden-128 BERT built from a config")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--eval-examples", type=int, default=512, help="XNLI en dev examples for the eval benchmark")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one case in this process
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return

    rows = {}
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--one", case] + [a for a in sys.argv[1:] if not a.startswith("--cases")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{case} failed:\n{proc.stderr[-2000:]}")
        rows[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  measured {case}: {rows[case]['seconds']:.3f}s", file=sys.stderr)

    base = rows.get("standard", {}).get("seconds")
    name = "tiny" if args.tiny else Path(args.model).name
    device = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}, batch {args.batch_size} x {args.seq_len}, {device}, median of {args.repeats}\n")
    print("| case | s/step | samples/s | vs standard step | peak MB |\n|---|---|---|---|---|")
    for case in ("no-adapters", "gu-1", "gu-4", "gu-8", "standard"):
        if case in rows:
            r = rows[case]
            print(f"| train {case} | {r['seconds']:.3f} | {r['samples_per_s']:.1f} | "
                  f"{r['seconds'] / base:.2f}x | {r['peak_mb']:.0f} |" if base else "")
    if "forward-no-adapters" in rows and "forward-frozen-adapters" in rows:
        a, b = rows["forward-no-adapters"]["seconds"], rows["forward-frozen-adapters"]["seconds"]
        print(f"| forward, no adapters | {a:.3f} | {args.batch_size / a:.1f} | {a / base:.2f}x | {rows['forward-no-adapters']['peak_mb']:.0f} |" if base else "")
        print(f"| forward, frozen adapters attached | {b:.3f} | {args.batch_size / b:.1f} | hook overhead {100 * (b / a - 1):+.1f}% | {rows['forward-frozen-adapters']['peak_mb']:.0f} |")
    if "eval-dynamic" in rows and "eval-fixed" in rows:
        dyn, fix = rows["eval-dynamic"], rows["eval-fixed"]
        print(f"\nevaluation on {args.eval_examples} XNLI en dev examples: dynamic padding + length sorting "
              f"{dyn['examples_per_s']:.1f} ex/s vs fixed 128-token padding {fix['examples_per_s']:.1f} ex/s "
              f"({fix['seconds'] / dyn['seconds']:.2f}x faster)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_bench-{name}-{'cuda' if str(args.device).startswith('cuda') else 'cpu'}.json"
    path.write_text(json.dumps(dict(model=name, device=device, batch_size=args.batch_size, seq_len=args.seq_len,
                                    repeats=args.repeats, torch=torch.__version__, results=rows), indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

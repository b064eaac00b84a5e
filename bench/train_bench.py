"""Training-step and inference benchmarks (a script, not a test). Prints tables, writes bench/results/*.json.

    python bench/train_bench.py --threads 2        # multilingual-e5-small (../shared/models), batch 32 x 128
    python bench/train_bench.py --tiny --threads 2 # a 12-layer hidden-128 BERT built from a config (e5's vocabulary)
    python bench/train_bench.py --model bert-base-multilingual-cased --device cuda

Measures, in one process per configuration (so peak memory is that configuration's own):
  * a training step (forward, backward, clip, AdamW) with no adapters (head only), `standard` (all adapters
    trainable) and the GU phases with the top 1, 4, 8 adapters trainable, in train mode (dropout on, as the
    paper), and GU top 1 / standard with the encoder in eval mode (train.py --no-dropout);
  * the forward pass alone in train mode: the floor of every training step of a frozen encoder;
  * forward-only hook overhead: adapters attached but all frozen vs no adapters (eval, inference mode);
  * evaluation throughput on real XNLI dev text: length-sorted batches with dynamic padding vs fixed padding;
  * SDPA attention (what training and evaluation use) against eager attention (what tr(F) needs for `vmap`):
    the cases with `@eager` run the same step with the encoder switched to eager attention.
Every case runs --rounds times in rotation; its time is its fastest call (the least disturbed by other load on a
shared machine), ratios are taken within one run against the all-trainable step of the same mode.
"""

from __future__ import annotations

import argparse
import json
import os
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
from fun.schedules import set_trainable  # noqa: E402
from fun.tasks import TASKS, task_loss  # noqa: E402

SHARED = ROOT.parent / "shared"


def build(args, adapters: bool):
    if args.tiny:  # a 12-layer hidden-128 BERT from a config; e5's tokenizer reads the real text of the eval cases
        from transformers import AutoTokenizer

        from bench.tiny import tiny_encoder
        tokenizer = AutoTokenizer.from_pretrained(str(SHARED / "models/multilingual-e5-small"))
        encoder = tiny_encoder(vocab_size=len(tokenizer))
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


def timed(fn, repeats: int, warmup: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def peak_memory_mb(device) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


TRAIN_CASES = {"no-adapters": 0, "gu-1": 1, "gu-4": 4, "gu-8": 8, "standard": None}  # trainable adapters (top k)


def run_one(args, case: str) -> dict:
    """One configuration, measured in this (fresh) process: wall times of `repeats` calls, peak memory."""
    torch.manual_seed(0)
    if case in ("eval-dynamic", "eval-fixed"):
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
        return dict(case=case, times=timed(go, 1, 0, args.device), examples=len(split.features),
                    peak_mb=peak_memory_mb(args.device))

    case, _, attention = case.partition("@")  # "@eager": eager attention instead of SDPA (what tr(F) uses)
    name, _, mode = case.partition("/")  # "/eval": frozen encoder in eval mode (train.py --no-dropout)
    adapters = name not in ("no-adapters", "forward-no-adapters")
    model, tokenizer = build(args, adapters)
    if attention:
        model.encoder.set_attn_implementation(attention)
    batch = {k: v.to(args.device) for k, v in synthetic_batch(args, model.encoder.config.vocab_size).items()}
    n = model.encoder.config.num_hidden_layers
    if name.startswith("forward"):  # forward only, nothing trainable: the floor of any training step
        set_trainable(model.task_layers, set())
        model.train(name == "forward-train")

        @torch.inference_mode()
        def go():
            model(batch)
    else:
        trainable = TRAIN_CASES[name] if TRAIN_CASES[name] is not None else n
        set_trainable(model.task_layers, set(range(n - trainable, n)))  # GU: the top `trainable` adapters
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train(mode != "eval")

        def go():
            loss = task_loss(model(batch), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return dict(case=case, times=timed(go, args.repeats, args.warmup, args.device), peak_mb=peak_memory_mb(args.device),
                attention=model.encoder.config._attn_implementation)


CASES = ["no-adapters", "gu-1", "gu-4", "gu-8", "standard", "gu-1/eval", "standard/eval",
         "forward-train", "forward-no-adapters", "forward-frozen-adapters", "eval-dynamic", "eval-fixed",
         "standard@eager", "standard/eval@eager", "forward-train@eager"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models/multilingual-e5-small"))
    p.add_argument("--tiny", action="store_true", help="12-layer hidden-128 BERT built from a config")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    p.add_argument("--rounds", type=int, default=2,
                   help="measure all cases this many times in rotation (one process each), so that a burst of load "
                        "on a shared machine hits every case alike; a case's time is its fastest call")
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

    forwarded = [a for i, a in enumerate(sys.argv[1:], 1)  # our argv without --cases and its value
                 if not a.startswith("--cases") and sys.argv[i - 1] != "--cases"]
    cases = args.cases.split(",")
    rows: dict[str, dict] = {}
    for r in range(args.rounds):
        for case in cases:
            proc = subprocess.run([sys.executable, __file__, "--one", case] + forwarded, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{case} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            if case in rows:
                row["times"] = rows[case]["times"] + row["times"]
                row["peak_mb"] = max(rows[case]["peak_mb"], row["peak_mb"])
            rows[case] = dict(row, case=case, seconds=min(row["times"]), median=statistics.median(row["times"]))
            print(f"  round {r + 1}/{args.rounds} {case}: {rows[case]['seconds']:.3f}s", file=sys.stderr)

    name = "tiny" if args.tiny else Path(args.model).name
    device = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}, batch {args.batch_size} x {args.seq_len}, {device}; fastest of {args.rounds} rounds x "
          f"{args.repeats} calls (median in brackets)\n")

    def ratio(case: str, base: str) -> str:
        return f"{rows[case]['seconds'] / rows[base]['seconds']:.2f}x" if base in rows else "-"

    print("| case | s/step | samples/s | vs standard | peak MB |\n|---|---|---|---|---|")
    labels = {"no-adapters": "train, no adapters (head only)", "gu-1": "train, GU top 1 adapter",
              "gu-4": "train, GU top 4", "gu-8": "train, GU top 8", "standard": "train, standard (all adapters)",
              "gu-1/eval": "train, GU top 1, --no-dropout", "standard/eval": "train, standard, --no-dropout",
              "forward-train": "forward only, train mode (dropout)", "forward-no-adapters": "forward only, eval, no adapters",
              "forward-frozen-adapters": "forward only, eval, frozen adapters"}
    for case, label in labels.items():
        if case in rows:
            r = rows[case]
            base = "standard/eval" if case.endswith("/eval") else "standard"
            print(f"| {label} | {r['seconds']:.3f} ({r['median']:.3f}) | {args.batch_size / r['seconds']:.1f} | "
                  f"{ratio(case, base)} | {r['peak_mb']:.0f} |")
    if "forward-no-adapters" in rows and "forward-frozen-adapters" in rows:
        a, b = rows["forward-no-adapters"]["seconds"], rows["forward-frozen-adapters"]["seconds"]
        print(f"\nhook overhead (frozen adapters attached vs none, forward): {100 * (b / a - 1):+.1f}%")
    for case in (c for c in rows if c.endswith("@eager")):
        sdpa = case.partition("@")[0]
        if sdpa in rows:
            print(f"{sdpa}: SDPA attention {rows[sdpa]['seconds']:.3f}s vs eager {rows[case]['seconds']:.3f}s "
                  f"per call ({rows[sdpa]['seconds'] / rows[case]['seconds']:.2f}x)")
    if "eval-dynamic" in rows and "eval-fixed" in rows:
        dyn, fix = rows["eval-dynamic"], rows["eval-fixed"]
        print(f"evaluation on {dyn['examples']} XNLI en dev examples: dynamic padding + length sorting "
              f"{dyn['examples'] / dyn['seconds']:.1f} ex/s vs fixed 128-token padding "
              f"{fix['examples'] / fix['seconds']:.1f} ex/s ({fix['seconds'] / dyn['seconds']:.2f}x faster)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_bench-{name}-{'cuda' if str(args.device).startswith('cuda') else 'cpu'}.json"
    path.write_text(json.dumps(dict(model=name, device=device, batch_size=args.batch_size, seq_len=args.seq_len,
                                    rounds=args.rounds, repeats=args.repeats, torch=torch.__version__,
                                    load_average=os.getloadavg(), results=rows), indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

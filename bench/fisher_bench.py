"""tr(F) benchmark (a script, not a test): the cost of one tr(F) evaluation against one training step.

    python bench/fisher_bench.py --repeats 3                 # tiny config + ../shared/models/multilingual-e5-small
    python bench/fisher_bench.py --only tiny --repeats 1     # about a minute

Per configuration, at one batch (default 32 examples; the shared model reads real MNLI text through the xnli
task, max length 128, dynamic padding), timed in interleaved rounds (median over --repeats):
  * train step   forward + backward + clip + AdamW, all task adapters trainable (`standard`), train mode;
  * per-sample   fun.fisher.fisher_trace, vmap(grad) over the examples (paper Eq. 1, labels sampled);
  * per-sample, chunked   the same with vmap(chunk_size=--chunk-size), the memory-bounded variant;
  * per-example loop      the same quantity by a plain loop: one forward + torch.autograd.grad per example;
  * batch        fisher_trace(estimator="batch"): Algorithm 2 as released (one backward of the batch loss);
  * exact        fisher_trace(labels="exact"): Σ_y p(y|x)||∇ log p(y|x)||², K=3 backward passes per example;
  * forward      eval forward alone, for scale.
Then FUN's total tr(F) overhead against a paper-length GU run (MultiNLI, mBERT: 15 epochs × 393k/128 steps).
Writes bench/results/fisher_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fun.adapters import AdapterSet  # noqa: E402
from fun.data import collate  # noqa: E402
from fun.fisher import choose_labels, fisher_trace  # noqa: E402
from fun.model import AdapterModel, freeze, load_encoder  # noqa: E402
from fun.tasks import TASKS, task_loss  # noqa: E402

SHARED = ROOT.parent / "shared"
# The paper's MultiNLI run (Table 3, mBERT): 15 epochs of 393k examples at batch 128; L = 12 layers.
PAPER_STEPS = 15 * 392_702 // 128
PAPER_SELECTIONS, PAPER_FISHER_BATCHES = 11, 40  # L-1 FUN selections × 40 batches each (paper §5.3 fn. 11)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "multilingual-e5-small"))
    p.add_argument("--data", default=str(SHARED / "data" / "mnli" / "train.jsonl"), help="MNLI text (xnli task)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    p.add_argument("--chunk-size", type=int, default=8, help="vmap chunk size of the chunked variant")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--only", choices=("tiny", "shared"), help="run one configuration")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "fisher_bench.json"))
    return p


def tiny_setup(batch_size: int, seq_len: int):
    from bench.tiny import tiny_encoder
    encoder = tiny_encoder(vocab_size=200)  # the same tiny config as train_bench
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (batch_size, seq_len), generator=g)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(3, (batch_size,), generator=g))
    return encoder, batch


def shared_setup(args):
    encoder, tokenizer = load_encoder(args.model)
    task = TASKS["xnli"]
    split = task.split("train", tokenizer, args.max_length, args.data, max_examples=4 * args.batch_size, seed=0)
    # the longest of the sampled batches: the cost of a full-length (128-token) batch is what matters
    batches = [collate(split.features[i:i + args.batch_size], tokenizer.pad_token_id)
               for i in range(0, 4 * args.batch_size, args.batch_size)]
    return encoder, max(batches, key=lambda b: b["input_ids"].shape[1])


def loop_fisher(model: AdapterModel, batch: dict, generator: torch.Generator) -> list[float]:
    """The per-example reference: one forward + one torch.autograd.grad per example (adapters require grad)."""
    layers = [list(layer.parameters()) for layer in model.task_adapter.layers]
    flat = sum(layers, [])
    model.eval()
    size = batch["input_ids"].shape[0]
    gold = batch["labels"].reshape(size, -1)
    uniform = torch.rand(*gold.shape, generator=generator).to(gold.device)  # drawn on CPU, as fisher_trace's
    total = [0.0] * len(layers)
    for n in range(size):
        logp = torch.log_softmax(model({k: v[n:n + 1] for k, v in batch.items() if k != "labels"}).float(), -1)[0]
        y = choose_labels(logp, "sample", uniform[n], gold[n])
        grads = iter(torch.autograd.grad(logp.gather(-1, y[:, None]).sum(), flat))
        for i, params in enumerate(layers):
            total[i] += sum(float(next(grads).pow(2).sum()) for _ in params)
    return [t / size for t in total]


def bench_config(name: str, encoder, batch: dict, args) -> dict:
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    freeze(encoder)
    torch.manual_seed(0)
    model = AdapterModel(encoder, TASKS["xnli"].make_head(d, encoder.config.hidden_dropout_prob), AdapterSet(d, n, 16))
    params = list(model.head.parameters()) + list(model.task_adapter.parameters())  # standard: all trainable
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)

    def train_step():
        model.train()
        loss = task_loss(model(batch), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward():
        model.eval()
        with torch.inference_mode():
            model(batch)

    methods = {
        "train step": train_step,
        "per-sample (vmap)": lambda: fisher_trace(model, [batch], generator=g),
        f"per-sample (vmap, chunk {args.chunk_size})": lambda: fisher_trace(model, [batch], generator=g,
                                                                           chunk_size=args.chunk_size),
        "per-example loop": lambda: loop_fisher(model, batch, g),
        "batch (Alg. 2)": lambda: fisher_trace(model, [batch], estimator="batch", generator=g),
        "exact (K=3)": lambda: fisher_trace(model, [batch], labels="exact", generator=g),
        "forward (eval)": forward,
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    shape = tuple(batch["input_ids"].shape)
    print(f"\n{name}: hidden {d}, {n} layers, batch {shape[0]} × {shape[1]} tokens, {torch.get_num_threads()} threads")
    for round_ in range(args.repeats + 1):  # round 0 warms up; interleaved rounds share the machine's noise
        for m, fn in methods.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[m].append(time.perf_counter() - start)
        if round_:
            print(f"  round {round_}: " + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in methods), flush=True)
    median = {m: statistics.median(t) for m, t in times.items()}
    step = median["train step"]
    print(f"  {'method':<28} {'median s':>9} {'× train step':>13} {'× vmap':>8}")
    for m, t in median.items():
        print(f"  {m:<28} {t:>9.3f} {t / step:>13.2f} {t / median['per-sample (vmap)']:>8.2f}")
    return dict(hidden=d, layers=n, batch_size=shape[0], seq_len=shape[1], threads=torch.get_num_threads(),
                repeats=args.repeats, times_s=times, median_s=median,
                ratio_to_train_step={m: t / step for m, t in median.items()},
                loop_over_vmap=median["per-example loop"] / median["per-sample (vmap)"])


def fun_overhead(result: dict) -> dict:
    """FUN's tr(F) time over a paper-length GU run, from one configuration's per-batch times.

    Both scale ~linearly with the batch, so the per-batch ratio r = t(tr(F) at b) / t(step at b) carries
    over to the paper's batch 128 (FUN's tr(F) batches default to the training batch size):
        overhead = (L-1) · 40 · r / N_steps            (N_steps all-trainable steps: the `standard` step).
    GU's first (L-1)·k steps are cheaper — backward stops at the lowest trainable adapter — so a second figure
    charges them forward + the trainable share of the backward: step_j = f + (1-f)·(j+1)/L in phase j, with
    f = t(forward) / t(step) measured here (an upper bound: the train-mode forward costs more than eval's).
    """
    r = result["ratio_to_train_step"]["per-sample (vmap)"]
    f = result["ratio_to_train_step"]["forward (eval)"]
    fisher_steps = PAPER_SELECTIONS * PAPER_FISHER_BATCHES * r
    layers, k = PAPER_SELECTIONS + 1, 800  # paper Table 3: GU k = 800 for MultiNLI mBERT
    partial = sum(f + (1 - f) * (j + 1) / layers for j in range(PAPER_SELECTIONS)) * k
    gu_steps = PAPER_STEPS - PAPER_SELECTIONS * k + partial
    return dict(selections=PAPER_SELECTIONS, batches_per_selection=PAPER_FISHER_BATCHES, paper_steps=PAPER_STEPS,
                fisher_over_step=r, fisher_step_equivalents=fisher_steps, overhead=fisher_steps / PAPER_STEPS,
                gu_k=k, gu_step_equivalents=gu_steps, overhead_vs_cheaper_gu_steps=fisher_steps / gu_steps)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    if args.only != "shared":
        results["tiny (bert, 12 × 128)"] = bench_config("tiny (bert, 12 × 128)", *tiny_setup(args.batch_size, args.max_length), args)
    if args.only != "tiny":
        if not Path(args.model).is_dir() or not Path(args.data).is_file():
            print(f"skipping the shared model: {args.model} or {args.data} is absent", file=sys.stderr)
        else:
            results["multilingual-e5-small"] = bench_config("multilingual-e5-small", *shared_setup(args), args)
    if not results:
        return 1
    main_result = results.get("multilingual-e5-small", next(iter(results.values())))
    overhead = fun_overhead(main_result)
    print(f"\nFUN overhead vs a paper-length GU run (MultiNLI mBERT, {PAPER_STEPS:,} steps at batch 128): "
          f"{overhead['selections']} selections × {overhead['batches_per_selection']} batches × "
          f"{overhead['fisher_over_step']:.2f} steps each = {overhead['selections'] * overhead['batches_per_selection'] * overhead['fisher_over_step']:.0f} "
          f"step-equivalents = {100 * overhead['overhead']:.2f}% of the run "
          f"({100 * overhead['overhead_vs_cheaper_gu_steps']:.2f}% counting GU's cheaper partial steps, "
          f"{overhead['gu_step_equivalents']:,.0f} step-equivalents)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                   load_average=os.getloadavg())
    out.write_text(json.dumps(dict(machine=machine, configs=results, fun_overhead=overhead), indent=2))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

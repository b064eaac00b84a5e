"""The CUDA path in one command: what to run first on a new GPU machine (a script, not a test).

    python bench/gpu_check.py                 # one GPU, sized for under 8 min on an H100/H200 → bench/results/gpu-<GPU>.json
    python bench/gpu_check.py --device cpu    # the same checks at tiny size on CPU (the test suite runs this)

Needs no Hub access: multilingual-e5-small and MultiNLI / XNLI text from ../shared (--model, --train-file,
--dev-file), and mBERT- and XLM-R-size encoders with random weights built from their configs. At tiny size (the
default on CPU) the model and data are built in code (tests/tiny.py), so nothing outside the repository is read.

Checks, each PASS or FAIL (exit code 1 if any fails):
  train      train.py FUN, 40 steps, tr(F) logged every 10, under --bf16 and under --fp16, with --deterministic:
             losses and tr(F) finite, schedule.json written; a run killed by SIGTERM at step 20 and resumed
             ends identical (final adapter, log.jsonl, schedule.json) to one that was never stopped.
  fisher     tr(F) per layer on the device, in fp32 and under bf16 autocast, against fp32 on the CPU, same batches;
             TF32 off inside tr(F) although the training step turned it on.
  attention  SDPA against eager attention with padding, T = 64, 128, 192, bf16: logits and adapter gradients
             finite and close; which attention kernel SDPA ran (profiler).
  syncs      host syncs per training step of train.py's loop (bf16, fp16) and of the MLM loop: at most 1. On CUDA
             counted by torch.cuda.set_sync_debug_mode; on CPU, where nothing synchronises, the reads of tensor
             values that would (item, tolist, bool, nonzero) after the batch reached the device.
Measured, in one run: a GU top-only step / an all-trainable step; SDPA / eager; tr(F) by vmap / a per-example loop;
tr(F) / a training step; the peak memory of exact tr(F) on span QA at chunk sizes 1 and 4; and for mBERT- and
XLM-R-size encoders at batch 32 x 128 in bf16, the time, examples/s and peak memory of an all-trainable adapter step
and a GU top-only step, each against a plain forward + backward of the same encoder without adapters (all its
weights trainable, no optimizer step). Times are medians of repeated calls, synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench.train_bench import sync, timed as timed_calls  # noqa: E402
from fun.adapters import AdapterSet  # noqa: E402
from fun.data import collate  # noqa: E402
from fun.device import allow_tf32  # noqa: E402
from fun.fisher import fisher_trace  # noqa: E402
from fun.heads import ClassificationHead, QuestionAnsweringHead  # noqa: E402
from fun.model import AdapterModel, freeze, load_encoder  # noqa: E402
from fun.schedules import set_trainable  # noqa: E402
from fun.tasks import TASKS, task_loss  # noqa: E402


@dataclass
class Size:
    """How big each check runs: `full` on a GPU, `tiny` on CPU."""
    name: str
    train_samples: int      # MultiNLI examples for the train.py runs
    batch: int              # training and tr(F) batch
    k: int                  # FUN's unfreeze interval (40 steps)
    fisher_examples: int    # examples for the device-vs-CPU tr(F)
    lengths: tuple          # T of the SDPA-vs-eager check
    seq: int                # T of the timed steps
    qa_seq: int             # T of exact tr(F) on span QA
    scale_batch: int        # batch of the mBERT/XLM-R-size steps (x 128 tokens on a GPU)
    scale_seq: int
    repeats: int            # timed calls per case (after 2 warm-up calls)


FULL = Size("full", 2000, 32, 3, 16, (64, 128, 192), 128, 128, 32, 128, 10)
TINY = Size("tiny", 96, 8, 5, 8, (16, 24, 32), 32, 16, 4, 16, 2)
STEPS, KILL_AT = 40, 20
TOLERANCE = {"fisher fp32": 1e-3, "fisher bf16": 5e-2, "logits": 5e-2, "gradients": 1e-1}  # relative


# --- measuring -----------------------------------------------------------------------------------------------------

def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup` calls, each call synchronised (train_bench's timer)."""
    return statistics.median(timed_calls(fn, repeats, warmup, device))


def peak_mb(fn, device: torch.device) -> float | None:
    """Peak CUDA memory allocated during `fn`, in MB, above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class Report:
    """PASS/FAIL checks and measurements, printed as they come and collected for the JSON file."""

    def __init__(self):
        self.checks: list[dict] = []
        self.results: dict = {}

    def check(self, section: str, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(dict(section=section, check=name, ok=bool(ok), detail=detail))
        print(f"  {'PASS' if ok else 'FAIL'}  {section}: {name}" + (f" ({detail})" if detail else ""), flush=True)

    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c["ok"]]


# --- setup: model, data ----------------------------------------------------------------------------------------

def prepare(args, size: Size, tmp: Path) -> dict[str, Path]:
    """The model directory and data files every check reads: ../shared's (full) or tiny ones written to `tmp`."""
    if size.name == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import WORDS, save_tiny_model, write_nli  # the test suite's offline builders
        files = dict(model=save_tiny_model(tmp / "model", "bert", layers=4),
                     train=write_nli(tmp / "train.jsonl", size.train_samples, seed=0),
                     dev=write_nli(tmp / "dev.tsv", 32, seed=1, fmt="tsv"))
        lines = [" ".join(WORDS[(7 * i + 3 * j) % len(WORDS)] for j in range(12)) for i in range(200)]
    else:
        files = dict(model=Path(args.model), train=Path(args.train_file), dev=Path(args.dev_file))
        for name, path in files.items():
            if not path.exists():
                raise SystemExit(f"error: --{name.replace('train', 'train-file').replace('dev', 'dev-file')} "
                                 f"{path}: not found (the full-size check reads ../shared; pass the paths, or "
                                 "--size tiny)")
        with open(files["train"]) as f:
            lines = [json.loads(line)["premise"] for _, line in zip(range(600), f)]
    files["text"] = tmp / "text.txt"
    files["text"].write_text("\n".join(lines) + "\n")
    return files


def build(model_dir: Path, device: torch.device, head: str = "cls", seed: int = 0):
    """(AdapterModel of the encoder + task adapter + head on `device`, tokenizer); every adapter trainable."""
    encoder, tokenizer = load_encoder(str(model_dir))
    freeze(encoder)
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    torch.manual_seed(seed)
    made = ClassificationHead(d, 3, encoder.config.hidden_dropout_prob) if head == "cls" else QuestionAnsweringHead(d)
    model = AdapterModel(encoder, made, AdapterSet(d, n, 16)).to(device)
    set_trainable(model.task_layers, set(range(n)))
    return model, tokenizer


def nli_batches(files: dict, tokenizer, size: Size, count: int, examples: int) -> list[dict]:
    split = TASKS["xnli"].split("train", tokenizer, 128, str(files["train"]), max_examples=count * examples, seed=0)
    return [collate(split.features[i * examples:(i + 1) * examples], tokenizer.pad_token_id) for i in range(count)]


def random_batch(vocab: int, batch: int, length: int, padded: bool, device: torch.device, heads: int = 1,
                 seed: int = 0) -> dict:
    """Random token ids (B, T); with `padded` each row keeps a random length between T/4 and T."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=g) if padded else torch.full((batch,), length)
    lengths[0] = length
    mask = (torch.arange(length) < lengths[:, None]).long()
    labels = (torch.randint(3, (batch,), generator=g) if heads == 1 else
              torch.stack([torch.randint(0, int(n), (heads,), generator=g) for n in lengths]))
    return {k: v.to(device) for k, v in dict(input_ids=ids * mask, attention_mask=mask, labels=labels).items()}


def train_step(model: AdapterModel, params: list, optimizer, batch: dict, dtype: torch.dtype | None):
    """One step as train.py's: forward (train mode), loss, backward, clip, AdamW."""
    with torch.autocast(batch["input_ids"].device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(batch)
    task_loss(logits, batch["labels"]).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# --- 1. train.py end to end ------------------------------------------------------------------------------------

def train_argv(files: dict, size: Size, device: torch.device, precision: str, out: Path) -> list[str]:
    argv = ["--model", str(files["model"]), "--train-file", str(files["train"]), "--dev-file", str(files["dev"]),
            "--max-train-samples", str(size.train_samples), "--max-dev-samples", "200", "--schedule", "fun",
            "--k", str(size.k), "--fisher-batches", "2", "--fisher-every", "10", "--fisher-log-batches", "1",
            "--max-steps", str(STEPS), "--batch-size", str(size.batch), "--lr", "1e-3", "--eval-every", "20",
            "--log-every", "1", "--save-every", "1000", "--no-progress", "--deterministic", f"--{precision}",
            "--device", str(device), "--output-dir", str(out)]
    return argv + (["--threads", "1"] if device.type == "cpu" else [])


def start_train(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def kill_at(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """SIGTERM once log.jsonl shows `step` (train.py finishes that step, checkpoints and exits 143)."""
    log, deadline = run_dir / "log.jsonl", time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and any(json.loads(line)["step"] >= step for line in log.read_text().splitlines() if line):
            proc.send_signal(signal.SIGTERM)
            return
        time.sleep(0.005)


def run_files(run_dir: Path) -> tuple:
    from safetensors.torch import load_file
    weights = load_file(run_dir / "final" / "adapter.safetensors")
    return weights, (run_dir / "log.jsonl").read_text(), (run_dir / "schedule.json").read_text()


def check_train(report: Report, files: dict, size: Size, device: torch.device, tmp: Path) -> dict:
    """Uninterrupted and killed runs of both precisions at once, then the resumptions."""
    section, out = "train", {}
    runs = {(p, kind): tmp / f"train-{p}-{kind}" for p in ("bf16", "fp16") for kind in ("whole", "killed")}
    start = time.perf_counter()
    procs = {key: start_train(train_argv(files, size, device, key[0], d), tmp / f"{d.name}.log")
             for key, d in runs.items()}
    codes = {}

    def kill_and_resume(p: str) -> None:  # resumes as soon as it stopped, while the uninterrupted runs go on
        kill_at(procs[p, "killed"], runs[p, "killed"], KILL_AT)
        codes[p, "killed"] = procs[p, "killed"].wait()
        codes[p, "resumed"] = start_train(train_argv(files, size, device, p, runs[p, "killed"]) + ["--resume"],
                                          tmp / f"train-{p}-resumed.log").wait()
    threads = [threading.Thread(target=kill_and_resume, args=(p,)) for p in ("bf16", "fp16")]
    for thread in threads:
        thread.start()
    codes.update({key: proc.wait() for key, proc in procs.items() if key[1] == "whole"})
    for thread in threads:
        thread.join()
    out["seconds"] = round(time.perf_counter() - start, 1)
    for p in ("bf16", "fp16"):
        whole, killed = runs[p, "whole"], runs[p, "killed"]
        ok = codes[p, "whole"] == 0
        report.check(section, f"{p}: {STEPS} steps of FUN run", ok, "" if ok else tail(tmp / f"{whole.name}.log"))
        if not ok:
            continue
        records = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records]
        fisher = [v for r in records if "fisher" in r for v in r["fisher"].values()]
        events = json.loads((whole / "schedule.json").read_text())
        out[p] = dict(first_loss=losses[0], last_loss=losses[-1], fisher_logged=len(fisher),
                      fisher_avg_last=next(r["fisher_avg"] for r in reversed(records) if "fisher_avg" in r),
                      order=[e["layers"][0] for e in events], dev=records[-1].get("dev"))
        report.check(section, f"{p}: losses and tr(F) finite", all(map(math.isfinite, losses + fisher)) and fisher,
                     f"loss {losses[0]:.3f} → {losses[-1]:.3f}, {len(fisher)} tr(F) values")
        report.check(section, f"{p}: schedule.json written", bool(events) and all("fisher" in e for e in events),
                     f"FUN order {out[p]['order']}")
        stopped = codes[p, "killed"] == 128 + signal.SIGTERM and codes[p, "resumed"] == 0
        report.check(section, f"{p}: killed at step {KILL_AT}, resumed", stopped,
                     f"exit codes {codes[p, 'killed']}, {codes[p, 'resumed']}" if not stopped else "")
        if stopped:
            (wa, la, sa), (wb, lb, sb) = run_files(whole), run_files(killed)
            same_weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
            report.check(section, f"{p}: resumed run identical to the uninterrupted one (--deterministic)",
                         same_weights and la == lb and sa == sb,
                         f"weights {'=' if same_weights else '≠'}, log.jsonl {'=' if la == lb else '≠'}, "
                         f"schedule.json {'=' if sa == sb else '≠'}")
    return out


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text().strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:])[-400:]


# --- 2. tr(F) on the device against the CPU ------------------------------------------------------------------------

def check_fisher(report: Report, files: dict, size: Size, device: torch.device) -> dict:
    section = "fisher"
    model, tokenizer = build(files["model"], torch.device("cpu"))
    batches = nli_batches(files, tokenizer, size, 2, size.fisher_examples // 2)
    exact = dict(labels="exact")  # the closed-form expectation: smooth in the logits, no sampled label can flip
    cpu = fisher_trace(model, batches, **exact)
    model.to(device)
    seen = []
    hook = model.head.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.matmul.allow_tf32))
    allow_tf32(device.type == "cuda")  # as the training step leaves it
    on_device = {"fp32": fisher_trace(model, batches, device=device, **exact),
                 "bf16": fisher_trace(model, batches, device=device, autocast_dtype=torch.bfloat16, **exact)}
    hook.remove()
    allow_tf32(False)
    out = {"cpu_fp32": cpu}
    for precision, values in on_device.items():
        rel = [abs(values[i] - cpu[i]) / abs(cpu[i]) for i in cpu]
        out[f"{device.type}_{precision}"], out[f"{precision}_max_relative_difference"] = values, max(rel)
        finite = all(math.isfinite(v) for v in values.values())
        report.check(section, f"{device.type} {precision} vs cpu fp32, per layer", finite and max(rel) <= TOLERANCE[
            f"fisher {precision}"], f"max relative difference {max(rel):.2e} (tolerance {TOLERANCE[f'fisher {precision}']:g})")
    report.check(section, "TF32 off inside tr(F)", seen and not any(seen), f"allow_tf32 seen {sorted(set(seen))}")
    return out


# --- 3. SDPA against eager ---------------------------------------------------------------------------------------

SDPA_OPS = re.compile(r"aten::_scaled_dot_product_\w+|aten::_efficient_attention\w*|aten::_flash_attention\w*")
FUSED = re.compile(r"flash|efficient|cudnn")  # SDPA's fused backends; `_math` is the unfused fallback


def forward_backward(model: AdapterModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the task adapter's gradients (flattened) of one bf16 forward + backward."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16):
        logits = model(batch)
    task_loss(logits, batch["labels"]).backward()
    grads = torch.cat([p.grad.flatten() for p in model.task_adapter.parameters()])
    return logits.float().detach(), grads


def check_attention(report: Report, files: dict, size: Size, device: torch.device) -> dict:
    section, out = "attention", {}
    model, _ = build(files["model"], device)
    model.eval()
    vocab = model.encoder.config.vocab_size
    for length in size.lengths:
        batch = random_batch(vocab, size.batch, length, True, device, seed=length)
        sdpa = forward_backward(model, batch)
        model.encoder.set_attn_implementation("eager")
        eager = forward_backward(model, batch)
        model.encoder.set_attn_implementation("sdpa")
        finite = all(bool(torch.isfinite(t).all()) for t in (*sdpa, *eager))
        logits, grads = relative(sdpa[0], eager[0]), relative(sdpa[1], eager[1])
        out[f"T={length}"] = dict(logits_relative_difference=logits, gradients_relative_difference=grads)
        report.check(section, f"T={length}, padded, bf16: finite, SDPA ≈ eager",
                     finite and logits <= TOLERANCE["logits"] and grads <= TOLERANCE["gradients"],
                     f"logits {logits:.1e}, adapter gradients {grads:.1e}")
    batch = random_batch(vocab, size.batch, size.lengths[-1], True, device)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        forward_backward(model, batch)
        sync(device)
    names = {e.name for e in prof.events()}
    out["sdpa_ops"] = sorted(n for n in names if SDPA_OPS.fullmatch(n))
    out["attention_kernels"] = sorted(n for n in names if re.search(r"fmha|flash|cudnn|attention|attn", n, re.I)
                                      and not n.startswith("aten::"))[:8]
    report.check(section, "SDPA ran a fused attention op", any(FUSED.search(op) for op in out["sdpa_ops"]),
                 ", ".join(out["sdpa_ops"] + out["attention_kernels"][:3]))
    return out


# --- 4. host syncs per training step -------------------------------------------------------------------------------

class ValueReads(TorchDispatchMode):
    """On CPU: counts the reads of tensor values that synchronise on CUDA. AdamW's own step counters are left out:
    they live on the host on CUDA too (capturable=False), so reading them never waits for the device."""
    READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.equal.default"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.READS and not any(f"{os.sep}torch{os.sep}optim{os.sep}" in frame.filename
                                               for frame in traceback.extract_stack()):
            self.count += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_syncs(device: torch.device):
    """Yields a function → syncs so far: CUDA's sync debug mode (warnings recorded), or ValueReads on CPU."""
    if device.type == "cuda":
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield lambda: sum("synchroniz" in str(w.message) for w in caught)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return
    reads, tolist = ValueReads(), torch.Tensor.tolist

    def counted_tolist(tensor):  # tolist() reads values without a dispatched op
        reads.count += 1
        return tolist(tensor)
    torch.Tensor.tolist = counted_tolist
    try:
        with reads:
            yield lambda: reads.count
    finally:
        torch.Tensor.tolist = tolist


def syncs_per_step(argv: list[str], device: torch.device) -> list[int]:
    """Run train.py in this process; the syncs of each step (counted between the progress bar's updates; on CPU from
    the step's batch reaching the device on), without the first step (lazy set-up) and the last (evaluation)."""
    import train
    marks, start = [], [0]

    class Bar:  # train.py's tqdm, recording the count at each step's end
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n: int = 1):
            marks.append((start[0], count()))

        def set_postfix(self, *args, **kwargs):
            pass

        def close(self):
            pass

    def to_device(*args, **kwargs):
        start[0] = count()
        return original(*args, **kwargs)

    original, bar = train.to_device, train.tqdm
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # train.py's Run replaces them
    train.tqdm, train.to_device = Bar, to_device
    try:
        with counting_syncs(device) as count:
            code = train.main(argv)
    finally:
        train.tqdm, train.to_device = bar, original
        for s, handler in handlers.items():
            signal.signal(s, handler)
        allow_tf32(False)
    if code != 0:
        raise RuntimeError(f"train.py {' '.join(argv)} exited {code}")
    if device.type == "cuda":  # everything from the previous step's end
        return [b - a for (_, a), (_, b) in zip(marks[:-2], marks[1:-1])]
    return [b - a for a, b in marks[1:-1]]


def check_syncs(report: Report, files: dict, size: Size, device: torch.device, tmp: Path) -> dict:
    section, out = "syncs", {}
    common = ["--model", str(files["model"]), "--dev-file", str(files["dev"]), "--max-steps", "12",
              "--batch-size", str(size.batch), "--log-every", "1", "--eval-every", "12", "--save-every", "0",
              "--max-dev-samples", "32", "--no-progress", "--device", str(device)]
    cases = {"train.py, GU, bf16": ["--train-file", str(files["train"]), "--schedule", "gu", "--k", "3", "--bf16"],
             "train.py, GU, fp16": ["--train-file", str(files["train"]), "--schedule", "gu", "--k", "3", "--fp16"],
             "MLM loop, bf16": ["--task", "mlm", "--lang", "en", "--mlm-head", "new", "--train-file",
                                str(files["text"]), "--max-length", "64", "--bf16"]}
    for i, (name, extra) in enumerate(cases.items()):
        counts = syncs_per_step(common + extra + ["--output-dir", str(tmp / f"syncs-{i}")], device)
        out[name] = counts
        report.check(section, f"{name}: host syncs per step ≤ 1", max(counts) <= 1, f"per step: {counts}")
    return out


# --- 5. ratios ---------------------------------------------------------------------------------------------------

def check_ratios(report: Report, files: dict, size: Size, device: torch.device) -> dict:
    from bench.fisher_bench import loop_fisher
    model, _ = build(files["model"], device)
    n = model.num_layers
    params = list(model.head.parameters()) + list(model.task_adapter.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = random_batch(model.encoder.config.vocab_size, size.batch, size.seq, False, device)
    dtype = torch.bfloat16

    def step():
        model.train()
        train_step(model, params, optimizer, batch, dtype)

    times = {}
    set_trainable(model.task_layers, {n - 1})
    times["GU top-only step"] = timed(step, device, size.repeats)
    set_trainable(model.task_layers, set(range(n)))
    times["all-trainable step"] = timed(step, device, size.repeats)
    model.encoder.set_attn_implementation("eager")
    times["all-trainable step, eager"] = timed(step, device, size.repeats)
    model.encoder.set_attn_implementation("sdpa")
    g = torch.Generator().manual_seed(0)

    def loop():
        with torch.autocast(device.type, dtype=dtype):
            loop_fisher(model, batch, g)
    times["tr(F), vmap"] = timed(lambda: fisher_trace(model, [batch], generator=g, device=device,
                                                      autocast_dtype=dtype), device, size.repeats)
    times["tr(F), per-example loop"] = timed(loop, device, max(1, size.repeats // 3), 1)
    qa, _ = build(files["model"], device, head="qa")
    qa.eval()
    qa_batch = random_batch(qa.encoder.config.vocab_size, 4, size.qa_seq, False, device, heads=2)
    memory = {f"exact tr(F), QA T={size.qa_seq}, chunk {c}": peak_mb(
        lambda c=c: fisher_trace(qa, [qa_batch], labels="exact", chunk_size=c, device=device), device) for c in (1, 4)}
    ratios = {"GU top-only / all-trainable step": times["GU top-only step"] / times["all-trainable step"],
              "SDPA / eager step": times["all-trainable step"] / times["all-trainable step, eager"],
              "tr(F) vmap / per-example loop": times["tr(F), vmap"] / times["tr(F), per-example loop"],
              "tr(F) / training step": times["tr(F), vmap"] / times["all-trainable step"]}
    for name, value in ratios.items():
        print(f"  {name:<40} {value:6.2f}x")
    for name, value in memory.items():
        print(f"  {name:<40} " + (f"{value:8.1f} MB peak" if value is not None else "(peak memory: CUDA only)"))
    return dict(batch=[size.batch, size.seq], dtype="bfloat16", seconds=times, ratios=ratios, peak_mb=memory)


# --- 6. mBERT- and XLM-R-size encoders ------------------------------------------------------------------------------

def encoder_configs(size: Size) -> dict:
    from transformers import BertConfig, XLMRobertaConfig
    if size.name == "tiny":
        common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        return {"mBERT-size (tiny)": BertConfig(vocab_size=1000, **common),
                "XLM-R-size (tiny)": XLMRobertaConfig(vocab_size=1000, pad_token_id=1, max_position_embeddings=130,
                                                      type_vocab_size=1, **common)}
    return {"mBERT-size": BertConfig(vocab_size=119_547),  # bert-base-multilingual-cased: 12 x 768, 12 heads
            "XLM-R-size": XLMRobertaConfig(vocab_size=250_002, max_position_embeddings=514, type_vocab_size=1,
                                           pad_token_id=1)}  # xlm-roberta-base


def check_scale(report: Report, size: Size, device: torch.device) -> dict:
    from transformers import AutoModel
    out = {}
    for name, config in encoder_configs(size).items():
        torch.manual_seed(0)
        with torch.device(device):
            encoder = AutoModel.from_config(config, add_pooling_layer=False, attn_implementation="sdpa")
        d, n = config.hidden_size, config.num_hidden_layers
        batch = random_batch(config.vocab_size, size.scale_batch, size.scale_seq, False, device)
        head = ClassificationHead(d, 3).to(device)
        encoder.train(), head.train()

        def plain():  # the Hugging Face encoder as it comes: no hooks, every weight trainable
            with torch.autocast(device.type, dtype=torch.bfloat16):
                hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                loss = task_loss(head(hidden, batch["input_ids"].shape), batch["labels"])
            loss.backward()
            encoder.zero_grad(set_to_none=True), head.zero_grad(set_to_none=True)

        measure = lambda fn: dict(seconds=timed(fn, device, size.repeats), peak_mb=peak_mb(fn, device))  # noqa: E731
        results = {"plain forward + backward": measure(plain)}
        freeze(encoder)
        model = AdapterModel(encoder, ClassificationHead(d, 3), AdapterSet(d, n, 16)).to(device)
        model.train()
        params = list(model.head.parameters()) + list(model.task_adapter.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        for case, trainable in (("all-trainable adapter step", set(range(n))), ("GU top-only step", {n - 1})):
            set_trainable(model.task_layers, trainable)
            results[case] = measure(lambda: train_step(model, params, optimizer, batch, torch.bfloat16))
        floor = results["plain forward + backward"]
        for case, r in results.items():
            r["examples_per_s"] = size.scale_batch / r["seconds"]
            r["time_vs_plain"] = r["seconds"] / floor["seconds"]
            r["memory_vs_plain"] = r["peak_mb"] / floor["peak_mb"] if r["peak_mb"] is not None else None
            memory = f"{r['peak_mb']:8.0f} MB ({r['memory_vs_plain']:.2f}x)" if r["peak_mb"] is not None else ""
            print(f"  {name:<18} {case:<27} {1000 * r['seconds']:8.1f} ms  {r['examples_per_s']:8.1f} ex/s  "
                  f"{r['time_vs_plain']:.2f}x  {memory}")
        out[name] = dict(batch=[size.scale_batch, size.scale_seq], dtype="bfloat16", **results)
        del encoder, head, model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# --- the run -----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--size", choices=("full", "tiny"), help="default: full on CUDA, tiny on CPU")
    p.add_argument("--model", default=str(SHARED / "models" / "multilingual-e5-small"))
    p.add_argument("--train-file", default=str(SHARED / "data" / "mnli" / "train.jsonl"))
    p.add_argument("--dev-file", default=str(SHARED / "data" / "xnli" / "dev-en.tsv"))
    p.add_argument("--out", help="JSON file (default on CUDA: bench/results/gpu-<device name>.json; on CPU: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device visible; on a machine without one run --device cpu",
              file=sys.stderr)
        return 2
    size = {"full": FULL, "tiny": TINY}[args.size or ("full" if device.type == "cuda" else "tiny")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    print(f"gpu_check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, size {size.name}", flush=True)
    if device.type != "cuda":
        print("  no GPU here: these are the CUDA path's checks run on the CPU at tiny size; they measure no GPU",
              flush=True)
    report, started = Report(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = prepare(args, size, tmp)
        sections = {"train": lambda: check_train(report, files, size, device, tmp),
                    "fisher": lambda: check_fisher(report, files, size, device),
                    "attention": lambda: check_attention(report, files, size, device),
                    "syncs": lambda: check_syncs(report, files, size, device, tmp),
                    "ratios": lambda: check_ratios(report, files, size, device),
                    "scale": lambda: check_scale(report, size, device)}
        for section, run in sections.items():
            print(f"\n{section}", flush=True)
            begin = time.perf_counter()
            try:
                report.results[section] = run()
            except Exception as err:  # a crash is a finding: record it, go on with the other sections
                report.check(section, "ran", False, f"{type(err).__name__}: {str(err)[:300]}")
                traceback.print_exc()
            print(f"  ({time.perf_counter() - begin:.0f} s)", flush=True)
    failed = report.failed()
    seconds = time.perf_counter() - started
    print(f"\n{len(report.checks) - len(failed)}/{len(report.checks)} checks passed in {seconds:.0f} s on {name}"
          + ("" if device.type == "cuda" else " (no GPU measured)"))
    for check in failed:
        print(f"  FAIL {check['section']}: {check['check']} {check['detail']}")
    result = dict(device=name, gpu=device.type == "cuda", size=size.name, torch=torch.__version__,
                  cuda=torch.version.cuda, seconds=round(seconds, 1), checks=report.checks, **report.results)
    out = args.out or (ROOT / "bench" / "results" / f"gpu-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.json"
                       if device.type == "cuda" else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str))
        print(f"→ {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

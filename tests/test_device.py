"""The CUDA path, tested where a CPU can test it: autocast runs on CPU end to end, checkpoints hold plain data and one
device's RNG, the fp16 loss scaler's skipped steps, TF32 off where tr(F) and evaluation measure, --deterministic,
the device checks. bench/gpu_check.py proves the rest on a GPU (tests/test_gpu_check.py runs it on CPU)."""

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import evaluate
import train
from fun.config import ConfigError, TrainConfig, resolve
from fun.device import allow_tf32
from fun.evaluation import predict
from fun.fisher import fisher_trace
from fun.run import Progress, Run, rng_state, set_rng_state
from fun.tasks import TASKS
from tiny import assert_same_run, write_nli


def run_args(model_dir, nli_files, out, *extra):
    train_file, dev_file = nli_files
    return ["--model", str(model_dir), "--train-file", str(train_file), "--dev-file", str(dev_file),
            "--output-dir", str(out), "--batch-size", "8", "--no-progress", *extra]


def one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def deterministic_restored():
    """--deterministic switches process-wide state: put it back for the tests that follow."""
    before = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(before[0])
    if before[1] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# --- autocast on CPU: train (through tr(F)) and evaluate ---------------------------------------------------------

def test_bf16_run_through_fisher_then_evaluate_with_deterministic(tiny_bert_dir, nli_files, tmp_path,
                                                                  deterministic_restored):
    """--bf16 runs on CPU through FUN's tr(F), logging and evaluation; evaluate.py --bf16 reproduces the dev score
    the run selected its best checkpoint by (same autocast, same batches)."""
    out = tmp_path / "run"
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--schedule", "fun", "--k", "2", "--fisher-batches", "2",
                               "--fisher-every", "3", "--fisher-log-batches", "1", "--max-steps", "8",
                               "--eval-every", "4", "--bf16", "--deterministic")) == 0
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    config = json.loads((out / "config.json").read_text())
    assert config["bf16"] and config["deterministic"] and config["device"] == "cpu"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(v == v for r in records if "fisher" in r for v in r["fisher"].values())  # tr(F) logged, finite
    events = json.loads((out / "schedule.json").read_text())
    assert len(events) == 3 and all("fisher" in e for e in events)  # FUN chose by tr(F) under bf16
    test_dir = tmp_path / "xnli"
    test_dir.mkdir()
    (test_dir / "dev-en.tsv").write_text(nli_files[1].read_text())
    write_nli(test_dir / "dev-de.tsv", 20, seed=7, fmt="tsv")
    assert evaluate.main([str(out), "--test-dir", str(test_dir), "--test-split", "dev", "--languages", "de",
                          "--bf16", "--deterministic", "--device", "cpu", "--no-progress"]) == 0
    results = json.loads((out / "results-dev.json").read_text())
    best = json.loads((out / "summary.json").read_text())["best"]
    assert results["source"] == best["metrics"] and "de" in results["per_language"]


def test_fp16_on_cpu_skipped_step_leaves_weights_and_lr_schedule(tmp_path):
    """fp16: when the loss scaler finds inf gradients, the optimizer step is skipped, and so is the LR schedule's
    (it used to advance anyway). The step's loss is still read, in the step's one host read."""
    cfg = TrainConfig(output_dir=str(tmp_path), lr=1e-2, lr_schedule="linear", fp16=True)
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    params = list(layer.parameters())
    optimizer, scheduler, scaler = train.make_optimizer(cfg, params, total=10, device=torch.device("cpu"))
    assert scaler.is_enabled() and optimizer.defaults["fused"]
    x, y = torch.randn(8, 4), torch.randint(3, (8,))

    def loss_of(scale_input: float):
        with torch.autocast("cpu", dtype=torch.float16):
            logits = layer(x * scale_input)
        return nn.functional.cross_entropy(logits.float(), y)

    before = [p.detach().clone() for p in params]
    lr, loss = train.update(loss_of(1e3), params, optimizer, scheduler, scaler, 1.0)  # scaled grads overflow fp16
    assert loss == loss and lr == pytest.approx(1e-2)
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "a skipped step moved the weights"
    assert scheduler.last_epoch == 0 and scheduler.get_last_lr()[0] == pytest.approx(1e-2)
    assert scaler.get_scale() == 2.0 ** 15  # halved from 2^16 by the overflow
    lr, _ = train.update(loss_of(1.0), params, optimizer, scheduler, scaler, 1.0)
    assert not all(torch.equal(p, b) for p, b in zip(params, before))
    assert scheduler.last_epoch == 1 and scheduler.get_last_lr()[0] == pytest.approx(1e-2 * 9 / 10)


def test_fp16_refused_for_deberta(tmp_path):
    model = tmp_path / "deberta"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    with pytest.raises(ConfigError, match="--bf16") as err:
        resolve(TrainConfig(output_dir=str(tmp_path / "r"), model=str(model), fp16=True))
    assert err.value.field == "fp16"
    assert resolve(TrainConfig(output_dir=str(tmp_path / "r"), model=str(model), bf16=True)).bf16


# --- checkpoints: plain data, one device's RNG ------------------------------------------------------------------

class FakeCuda:
    """torch.cuda's RNG functions for a machine with `count` GPUs: per-device states, recorded restores."""

    def __init__(self, monkeypatch, count: int):
        self.count, self.restored = count, []
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        for name in ("get_rng_state_all", "set_rng_state_all"):  # every visible GPU's: what must not be used
            monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: pytest.fail(f"torch.cuda.{name} called"))

    def index(self, device) -> int:
        device = torch.device(device)
        return 0 if device.index is None else device.index

    def get(self, device="cuda"):
        assert self.index(device) < self.count, f"{device} is not visible"
        return torch.full((16,), 10 + self.index(device), dtype=torch.uint8)

    def set(self, state, device="cuda"):
        assert self.index(device) < self.count, f"{device} is not visible"
        self.restored.append((state.clone(), self.index(device)))


def test_cuda_rng_saved_for_the_training_gpu_and_restored_with_fewer_visible(tmp_path, monkeypatch):
    """Started with 8 GPUs visible on cuda:3, resumed in a 1-GPU task (cuda:0): the training GPU's generator
    comes back onto the training device; no other GPU's state is saved or restored."""
    cuda = FakeCuda(monkeypatch, count=8)
    layer = nn.Linear(2, 2)
    run = Run(tmp_path / "run")
    run.start({"seed": 1})
    run.track(torch.device("cuda:3"), layer=layer)
    run.checkpoint(Progress(step=5))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # tensors and plain data only
    assert state["device"] == "cuda" and torch.equal(state["rng"]["cuda"], torch.full((16,), 13, dtype=torch.uint8))
    cuda.count = 1
    resumed = Run(tmp_path / "run", resume=True)
    resumed.track(torch.device("cuda"), layer=nn.Linear(2, 2))
    assert resumed.restore().step == 5
    ((restored, index),) = cuda.restored
    assert index == 0 and torch.equal(restored, state["rng"]["cuda"])


def test_rng_state_round_trip_is_plain_data():
    torch.manual_seed(3)
    state = rng_state(torch.device("cpu"))
    assert set(state) == {"python", "numpy", "torch"}  # no CUDA generator for a CPU run
    draws = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state, torch.device("cpu"))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


def test_checkpoint_written_on_cuda_resumes_on_cpu_with_a_note(tiny_bert_dir, nli_files, tmp_path, monkeypatch,
                                                              capsys):
    """A run stopped after step 3 whose checkpoint says CUDA (with a CUDA generator) continues on CPU and ends
    as the uninterrupted run: only the note says that the device changed."""
    common = ["--schedule", "gu", "--k", "2", "--max-steps", "6", "--log-every", "1", "--save-every", "3"]
    assert train.main(run_args(tiny_bert_dir, nli_files, tmp_path / "ref", *common)) == 0
    out = tmp_path / "moved"
    calls = {"n": 0}
    task_loss = train.task_loss

    def crash_at_step_4(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("crash")  # no checkpoint at this step
        return task_loss(*args)
    monkeypatch.setattr(train, "task_loss", crash_at_step_4)
    with pytest.raises(RuntimeError, match="crash"):
        train.main(run_args(tiny_bert_dir, nli_files, out, *common))
    monkeypatch.setattr(train, "task_loss", task_loss)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == 3
    state["device"], state["rng"]["cuda"] = "cuda", torch.zeros(16, dtype=torch.uint8)
    torch.save(state, out / "checkpoint.pt")
    capsys.readouterr()
    assert train.main(run_args(tiny_bert_dir, nli_files, out, *common, "--resume")) == 0
    assert "was written on cuda and the run continues on cpu" in capsys.readouterr().err
    assert_same_run(tmp_path / "ref", out)


def test_pickled_checkpoint_is_refused_in_one_line(tiny_bert_dir, nli_files, tmp_path, capsys):
    """A checkpoint that needs unpickling (an older version's: NumPy's RNG state as an array) is never unpickled."""
    out = tmp_path / "run"
    args = run_args(tiny_bert_dir, nli_files, out, "--max-steps", "2")
    assert train.main(args) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, out / "checkpoint.pt")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_error_line(capsys, train.main(args + ["--resume"]))
    assert "checkpoint.pt cannot be resumed" in line and "--overwrite" in line
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


# --- TF32: off where tr(F) and evaluation measure -----------------------------------------------------------------

def test_fisher_and_evaluation_measure_without_tf32(tiny_bert_dir, nli_files):
    model, tokenizer = train.build_model(resolve(TrainConfig(output_dir="-", model=str(tiny_bert_dir))), TASKS["xnli"])
    split = TASKS["xnli"].split("dev", tokenizer, 32, str(nli_files[1]))
    batch = {k: v[:4] for k, v in train.collate(split.features[:4], tokenizer.pad_token_id).items()}
    seen = []
    model.head.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.matmul.allow_tf32))
    allow_tf32(True)  # as train.py's training step on CUDA
    try:
        fisher_trace(model, [batch])
        predict(model, TASKS["xnli"], split, 8, tokenizer.pad_token_id, progress=False)
        assert seen and not any(seen)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored afterwards
    finally:
        allow_tf32(False)


# --- the device is checked where the run runs ----------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
def test_device_errors_are_one_line(tiny_bert_dir, nli_files, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_error_line(capsys, train.main(run_args(tiny_bert_dir, nli_files, out, "--device", "cuda")))
    assert line.startswith("error: --device: 'cuda': no CUDA device is visible") and "--device cpu" in line
    assert "not a device" in one_error_line(capsys, train.main(run_args(tiny_bert_dir, nli_files, out,
                                                                         "--device", "gpu0")))
    assert not out.exists()
    line = one_error_line(capsys, evaluate.main([str(out), "--device", "cuda"]))
    assert "config.json" in line  # the run directory is checked first; then the device:
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--max-steps", "1")) == 0
    line = one_error_line(capsys, evaluate.main([str(out), "--device", "cuda", "--test-dir", str(tmp_path)]))
    assert "no CUDA device is visible" in line

"""The training loop: only scheduled parameters move; the run directory contract; the CLI end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fun.tasks.base
import train
from fun.model import AdapterModel

ROOT = Path(__file__).resolve().parents[1]


def run_args(model_dir, nli_files, out, *extra):
    train_file, dev_file = nli_files
    return ["--model", str(model_dir), "--train-file", str(train_file), "--dev-file", str(dev_file),
            "--output-dir", str(out), "--batch-size", "8", "--no-progress", *extra]


def test_only_scheduled_adapters_and_head_change(tiny_bert_dir, nli_files, tmp_path, monkeypatch):
    built = {}

    class Recording(AdapterModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["model"] = self
            built["init"] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(fun.tasks.base, "AdapterModel", Recording)  # Task.build_model builds it
    out = tmp_path / "run"
    # GU with k=4: layer 3 trains from step 1, layer 2 from step 4; layers 0 and 1 stay frozen
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--schedule", "gu", "--k", "4", "--max-steps", "5")) == 0
    model, init = built["model"], built["init"]
    after = model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    moved_prefixes = ("head.", "adapters.task.layers.2.", "adapters.task.layers.3.")
    assert changed == {k for k in init if k.startswith(moved_prefixes)}, "exactly head + adapters 2, 3 moved"
    assert all(not k.startswith("encoder.") for k in changed)  # every encoder weight bit-identical
    # AdamW holds state only for parameters that ever had a gradient (no state / weight decay for frozen ones)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    trained = sum(1 for k in init if k.startswith(moved_prefixes))
    assert len(ckpt["optimizer"]["state"]) == trained
    assert sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) == sum(
        1 for k in init if k.startswith(("head.", "adapters.task.")))  # one optimizer over all, created once
    # the saved final adapter is what was trained
    saved = load_file(out / "final" / "adapter.safetensors")
    assert torch.equal(saved["task.layers.3.adapter_up.weight"], after["adapters.task.layers.3.adapter_up.weight"])


def test_trainable_count_printed_and_run_directory(tiny_bert_dir, nli_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--max-steps", "3", "--eval-every", "2")) == 0
    printed = capsys.readouterr().out
    assert "trainable params: " in printed and " / " in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["schedule"] == "standard" and cfg["total_steps"] == 3 and cfg["lr"] == 5e-4  # paper XNLI default
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [2, 3]
    assert all({"step", "loss", "lr", "trainable"} <= set(l) for l in lines)
    assert lines[0]["trainable"] == [0, 1, 2, 3] and "dev" in lines[0]
    assert json.loads((out / "schedule.json").read_text()) == []
    for d in ("best", "final"):
        assert (out / d / "adapter.safetensors").exists() and (out / d / "adapter_config.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["best"]["step"] in (2, 3)


def test_cli_gu_k2_four_layers(tiny_bert_dir, nli_files, tmp_path):
    """Acceptance: a GU run with --k 2 on a 4-layer model grows `trainable` top-down every 2 steps."""
    out = tmp_path / "gu"
    cmd = [sys.executable, str(ROOT / "train.py"), *run_args(tiny_bert_dir, nli_files, out, "--schedule", "gu",
           "--k", "2", "--max-steps", "9", "--log-every", "1", "--threads", "1")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["trainable"] for l in lines] == [[3], [2, 3], [2, 3], [1, 2, 3], [1, 2, 3], [0, 1, 2, 3],
                                               [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    events = json.loads((out / "schedule.json").read_text())
    assert events == [{"step": 2, "layers": [2]}, {"step": 4, "layers": [1]}, {"step": 6, "layers": [0]}]


def test_full_finetuning_trains_the_encoder(tiny_bert_dir, nli_files, tmp_path, monkeypatch):
    built = {}

    class Recording(AdapterModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["model"], built["init"] = self, {k: v.detach().clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(fun.tasks.base, "AdapterModel", Recording)  # Task.build_model builds it
    assert train.main(run_args(tiny_bert_dir, nli_files, tmp_path / "full", "--schedule", "full", "--max-steps", "2",
                               "--lr", "1e-3")) == 0
    model, init = built["model"], built["init"]
    assert model.task_adapter is None
    after = model.state_dict()
    assert not torch.equal(init["encoder.encoder.layer.0.output.dense.weight"], after["encoder.encoder.layer.0.output.dense.weight"])

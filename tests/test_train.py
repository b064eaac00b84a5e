"""The training loop: only scheduled parameters move; the run directory contract; the CLI end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from fun.model import AdapterModel
from tiny import recording

ROOT = Path(__file__).resolve().parents[1]


def run_args(model_dir, nli_files, out, *extra):
    train_file, dev_file = nli_files
    return ["--model", str(model_dir), "--train-file", str(train_file), "--dev-file", str(dev_file),
            "--output-dir", str(out), "--batch-size", "8", "--no-progress", *extra]


@pytest.mark.parametrize("weight_decay", ["0", "0.5"])
def test_only_scheduled_adapters_and_head_change(tiny_bert_dir, nli_files, tmp_path, monkeypatch, weight_decay):
    """Frozen adapters stay bit-identical even with weight decay: they have no gradient, so AdamW skips them."""
    Recording, built = recording(AdapterModel)

    monkeypatch.setattr(train, "AdapterModel", Recording)  # train.build_model builds it
    out = tmp_path / "run"
    # GU with k=4: layer 3 trains from step 1, layer 2 from step 4; layers 0 and 1 stay frozen
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--schedule", "gu", "--k", "4", "--max-steps", "5",
                               "--weight-decay", weight_decay)) == 0
    model, init = built["model"], built["init"]
    after = model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    moved_prefixes = ("head.", "adapters.task.layers.2.", "adapters.task.layers.3.")
    assert changed == {k for k in init if k.startswith(moved_prefixes)}, "exactly head + adapters 2, 3 moved"
    assert all(not k.startswith("encoder.") for k in changed)  # every encoder weight bit-identical
    # AdamW holds state only for parameters that ever had a gradient (no state / weight decay for frozen ones)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    trained = sum(1 for k in init if k.startswith(moved_prefixes))
    optimizer = ckpt["parts"]["optimizer"]
    assert len(optimizer["state"]) == trained
    assert optimizer["param_groups"][0]["weight_decay"] == float(weight_decay)
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == sum(
        1 for k in init if k.startswith(("head.", "adapters.task.")))  # one optimizer over all, created once
    # the saved final adapter is what was trained
    saved = load_file(out / "final" / "adapter.safetensors")
    assert torch.equal(saved["task.layers.3.adapter_up.weight"], after["adapters.task.layers.3.adapter_up.weight"])


def test_trainable_count_printed_and_run_directory(tiny_bert_dir, nli_files, tmp_path, capsys):
    """Hidden 32, 4 layers, rf 16: each adapter is 32·2+2 + 2·32+32 = 162 parameters; the 2-layer classification
    head 32·32+32 + 32·3+3 = 1,155. Standard trains 4·162 + 1,155 = 1,803; GU starts with one adapter: 1,317."""
    from transformers import AutoModel
    encoder_params = sum(p.numel() for p in AutoModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).parameters())
    total = encoder_params + 1_803
    out = tmp_path / "run"
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--max-steps", "3", "--eval-every", "2")) == 0
    printed = capsys.readouterr().out
    assert f"trainable params: 1,803 / {total:,} ({100 * 1803 / total:.3f}%) at step 0; ever trainable: 1,803" in printed
    assert train.main(run_args(tiny_bert_dir, nli_files, tmp_path / "gu", "--max-steps", "1", "--schedule", "gu")) == 0
    assert f"trainable params: 1,317 / {total:,}" in capsys.readouterr().out
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
    Recording, built = recording(AdapterModel)

    monkeypatch.setattr(train, "AdapterModel", Recording)  # train.build_model builds it
    assert train.main(run_args(tiny_bert_dir, nli_files, tmp_path / "full", "--schedule", "full", "--max-steps", "2",
                               "--lr", "1e-3")) == 0
    model, init = built["model"], built["init"]
    assert model.task_adapter is None
    after = model.state_dict()
    assert not torch.equal(init["encoder.encoder.layer.0.output.dense.weight"], after["encoder.encoder.layer.0.output.dense.weight"])


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_lr_schedule_has_no_warmup_and_decays_to_zero_at_n(tiny_bert_dir, nli_files, tmp_path, schedule):
    """The lr of step i (1-based) is lr·(N - i + 1)/N for linear decay, lr for constant (paper App. B: no warmup)."""
    out = tmp_path / schedule
    assert train.main(run_args(tiny_bert_dir, nli_files, out, "--max-steps", "4", "--lr", "1e-3", "--log-every", "1",
                               "--lr-schedule", schedule)) == 0
    lrs = [json.loads(l)["lr"] for l in (out / "log.jsonl").read_text().splitlines()]
    expected = [1e-3 * (4 - i) / 4 for i in range(4)] if schedule == "linear" else [1e-3] * 4
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)


def test_help_lists_every_setting():
    """The flags are generated from fun.config.TrainConfig: one per field, with its one-line doc."""
    import dataclasses
    from fun.config import TrainConfig
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in proc.stdout, field.name

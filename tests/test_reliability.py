"""Exact resume after a kill, determinism, and one clear error (exit 2) for each kind of bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from tiny import assert_same_run, kill_when, train_cli, write_nli

ROOT = Path(__file__).resolve().parents[1]


def base_args(model_dir, nli_files, out, *extra):
    train_file, dev_file = nli_files
    return ["--model", str(model_dir), "--train-file", str(train_file), "--dev-file", str(dev_file),
            "--output-dir", str(out), "--batch-size", "8", "--no-progress", "--threads", "1", *extra]


SCHEDULE_ARGS = {
    "standard": ["--schedule", "standard"],
    "gu": ["--schedule", "gu", "--k", "5"],
    "fun": ["--schedule", "fun", "--k", "5", "--fisher-batches", "2", "--fisher-every", "7", "--fisher-log-batches", "1"],
}


@pytest.mark.parametrize("schedule", list(SCHEDULE_ARGS))
def test_sigterm_then_resume_is_bit_identical(tiny_bert_dir, nli_files, tmp_path, schedule):
    common = [*SCHEDULE_ARGS[schedule], "--max-steps", "30", "--log-every", "1", "--eval-every", "10",
              "--save-every", "1000"]
    ref = tmp_path / "ref"
    assert train_cli(base_args(tiny_bert_dir, nli_files, ref, *common)).returncode == 0
    out = tmp_path / "killed"
    args = base_args(tiny_bert_dir, nli_files, out, *common)
    code, err = kill_when(out, args, 8, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err  # stopped cleanly with a checkpoint, not finished
    assert "resume" in err and "Traceback" not in err
    assert not (out / "final").exists()
    resumed = train_cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(ref, out)


def test_sigkill_resumes_from_last_periodic_checkpoint(tiny_bert_dir, nli_files, tmp_path):
    common = ["--schedule", "rand", "--k", "4", "--max-steps", "30", "--log-every", "1", "--save-every", "3"]
    ref = tmp_path / "ref"
    assert train_cli(base_args(tiny_bert_dir, nli_files, ref, *common)).returncode == 0
    out = tmp_path / "killed"
    args = base_args(tiny_bert_dir, nli_files, out, *common)
    code, _ = kill_when(out, args, 10, signal.SIGKILL)
    assert code == -signal.SIGKILL
    resumed = train_cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(ref, out)  # lines logged after the checkpoint were truncated, then written once


def test_same_seed_identical_different_seed_differs(tiny_bert_dir, nli_files, tmp_path):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert train.main(base_args(tiny_bert_dir, nli_files, tmp_path / name, "--schedule", "gu", "--k", "2",
                                    "--max-steps", "6", "--seed", seed)) == 0
    assert_same_run(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError):
        assert_same_run(tmp_path / "a", tmp_path / "c")


# --- bad input: one line, exit code 2, no traceback, nothing overwritten ------------------------------------

def expect_usage_error(args, capsys, *needles):
    code = train.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    message = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(message) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in message[0], message[0]
    return message[0]


def test_bad_inputs(tiny_bert_dir, nli_files, tmp_path, capsys):
    out = tmp_path / "run"
    ok = lambda *extra: base_args(tiny_bert_dir, nli_files, out, "--max-steps", "2", *extra)
    expect_usage_error(ok("--task", "nope"), capsys, "--task: invalid choice: 'nope'")
    expect_usage_error(ok("--schedule", "nope"), capsys, "--schedule: invalid choice: 'nope'")
    expect_usage_error(ok("--schedule", "gu", "--k", "0"), capsys, "--k: 0: must be a positive integer")
    expect_usage_error(ok("--schedule", "gu", "--k", "-3"), capsys, "--k: -3: must be a positive integer")
    expect_usage_error(ok("--schedule", "order", "--order", "3,3"), capsys, "--order")
    offline = base_args("no-such-org/no-such-model", nli_files, out)
    expect_usage_error(offline, capsys, "--model: no-such-org/no-such-model: not a local model directory", "no network")
    empty_model = tmp_path / "empty-model"
    empty_model.mkdir()
    expect_usage_error(base_args(empty_model, nli_files, out), capsys, "config.json")
    (empty_model / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    expect_usage_error(base_args(empty_model, nli_files, out), capsys, "weights")
    train_file, dev_file = nli_files
    missing = ok("--train-file", str(tmp_path / "missing.jsonl"))
    expect_usage_error(missing, capsys, "no such file")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    expect_usage_error(ok("--train-file", str(empty)), capsys, "empty")
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text(train_file.read_text().splitlines()[0] + "\n{not json\n")
    expect_usage_error(ok("--train-file", str(malformed)), capsys, f"{malformed}:2")
    bad_label = tmp_path / "label.jsonl"
    bad_label.write_text('{"premise": "a", "hypothesis": "b", "label": 7}\n')
    expect_usage_error(ok("--train-file", str(bad_label)), capsys, f"{bad_label}:1", "label")
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("a\tb\tentailment\nonly two\tcolumns\n")
    expect_usage_error(ok("--dev-file", str(bad_tsv)), capsys, f"{bad_tsv}:2")


def test_existing_run_is_never_overwritten(tiny_bert_dir, nli_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(base_args(tiny_bert_dir, nli_files, out, "--max-steps", "2")) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    expect_usage_error(base_args(tiny_bert_dir, nli_files, out, "--max-steps", "3"), capsys, "--resume", "--overwrite")
    expect_usage_error(base_args(tiny_bert_dir, nli_files, out, "--max-steps", "3", "--resume"), capsys, "max_steps")
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    expect_usage_error(base_args(tiny_bert_dir, nli_files, other, "--overwrite"), capsys, "not hold a run")
    assert (other / "notes.txt").read_text() == "mine"
    assert train.main(base_args(tiny_bert_dir, nli_files, out, "--max-steps", "3", "--overwrite")) == 0


def test_schedule_that_cannot_finish_warns(tiny_bert_dir, nli_files, tmp_path, capsys):
    assert train.main(base_args(tiny_bert_dir, nli_files, tmp_path / "r", "--schedule", "gu", "--k", "5",
                                "--max-steps", "4")) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "step 15" in err and "only 4 steps" in err


def test_nan_loss_stops_with_checkpoint(tiny_bert_dir, nli_files, tmp_path, capsys):
    out = tmp_path / "nan"
    msg = expect_usage_error(base_args(tiny_bert_dir, nli_files, out, "--max-steps", "50", "--lr", "1e30",
                                       "--save-every", "1"), capsys, "loss is", "at step")
    assert (out / "checkpoint.pt").exists()
    step = int(msg.split("at step ")[1].split(";")[0])
    assert torch.load(out / "checkpoint.pt", weights_only=False)["progress"]["step"] == step - 1

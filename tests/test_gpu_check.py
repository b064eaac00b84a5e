"""bench/gpu_check.py, the one command that proves the CUDA path on a GPU, run at tiny size on CPU so it cannot rot.
On CPU it also checks what a CPU can: bf16/fp16 runs killed and resumed identically, one host read per step."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_passes_on_cpu_and_says_it_measured_no_gpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "they measure no GPU" in proc.stdout and "(no GPU measured)" in proc.stdout
    result = json.loads(out.read_text())
    assert result["gpu"] is False and result["size"] == "tiny"
    checks = result["checks"]
    assert all(c["ok"] for c in checks) and {c["section"] for c in checks} == {"train", "fisher", "attention", "syncs"}
    assert sum("resumed run identical" in c["check"] for c in checks) == 2  # bf16 and fp16
    assert set(result["syncs"]) == {"train.py, GU, bf16", "train.py, GU, fp16", "MLM loop, bf16"}
    assert all(counts == [1] * len(counts) and counts for counts in result["syncs"].values())
    assert set(result["ratios"]["ratios"]) == {"GU top-only / all-trainable step", "SDPA / eager step",
                                               "tr(F) vmap / per-example loop", "tr(F) / training step"}
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"]["ratios"].values())
    for encoder in result["scale"].values():
        assert {"plain forward + backward", "all-trainable adapter step", "GU top-only step"} <= set(encoder)
        assert all(encoder[case]["examples_per_s"] > 0 for case in ("all-trainable adapter step", "GU top-only step"))

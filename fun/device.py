"""Where and how precisely a run computes: the device, TF32, deterministic kernels.

TF32 (TensorFloat-32: fp32 matmuls with a 10-bit mantissa on NVIDIA Ampere and later GPUs) follows one rule. The
training step may use it (`allow_tf32`, set by train.py on CUDA). Everything that *measures* runs in full fp32
(`full_fp32`): tr(F), which decides FUN's picks, and every evaluation. So a tr(F) or a dev score is the same number
whether train.py, evaluate.py or `fisher.py compute` computed it. Under --bf16/--fp16 autocast the matmuls run in
that format anyway; the rule is about the fp32 ones.

`set_deterministic` is train.py's and evaluate.py's --deterministic (docs/design.md says what repeats bit for bit).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

DEVICE_TYPES = ("cpu", "cuda")


def get_device(name: str) -> torch.device:
    """`name` (cpu, cuda, cuda:N) as a device this process can use; ValueError saying why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"'{name}' is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"'{name}': this project runs on {' or '.join(DEVICE_TYPES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"'{name}': no CUDA device is visible to this process (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda}); run it on a GPU node, or pass --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"'{name}': this process sees {count} CUDA device(s) (cuda:0..cuda:{count - 1}; "
                             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return device


def allow_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls (cuBLAS) and convolutions (cuDNN), process-wide; a no-op on CPU."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off inside the block, restored after it: what measures computes in full fp32. The flag is read when a
    kernel is launched, so steps already queued on the GPU keep the mode they were launched with."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    allow_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def set_deterministic() -> None:
    """Deterministic kernels from here on: cuBLAS with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS
    first runs, so call this before any CUDA work; a value already in the environment is kept) and
    `torch.use_deterministic_algorithms(True)`, under which an op that has only a non-deterministic CUDA kernel
    raises instead of running. No effect on results on CPU, whose kernels are deterministic already."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

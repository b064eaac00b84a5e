"""Batched inference and scoring of one split (zero-shot evaluation, paper §3.1 and §4).

Fast path: `torch.inference_mode`, length-sorted batches with dynamic padding, non-blocking transfers;
logits come back per feature in the original order (trimmed to the feature's own length for span QA). Evaluation
runs in full fp32 (no TF32, fun/device.py), so the dev scores of training equal evaluate.py's.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from fun.data import Split, collate, length_sorted_batches, to_device
from fun.device import full_fp32
from fun.tasks.base import Task


@torch.inference_mode()
@full_fp32()
def predict(model: torch.nn.Module, task: Task, split: Split, batch_size: int, pad_token_id: int,
            device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
            progress: bool = True) -> list[torch.Tensor]:
    """Per-feature logits (H, K) in the order of `split.features`."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(split.features)
    batches = length_sorted_batches(split.features, batch_size)
    for idx in tqdm(batches, desc=f"eval {split.name}", disable=not progress, leave=False):
        batch = collate([split.features[i] for i in idx], pad_token_id)
        batch = to_device(batch, device, skip=("labels",))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch).float().cpu()  # (B, H, K)
        for row, i in zip(logits, idx):
            if task.token_level:
                row = row[:, :len(split.features[i]["input_ids"])]
            out[i] = row
    model.train(was_training)
    return out


def evaluate(model: torch.nn.Module, task: Task, split: Split, batch_size: int, pad_token_id: int,
             device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
             progress: bool = True) -> dict[str, float]:
    return task.score(split, predict(model, task, split, batch_size, pad_token_id, device, autocast_dtype, progress))

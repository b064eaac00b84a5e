"""Data shared by every task: the tokenised split, dynamic padding, resumable training order, length-sorted
evaluation, and reading local files with errors that name the file and line.

Features are plain dicts of Python lists (`input_ids`, `attention_mask`, optional `token_type_ids`, optional
`labels`); multiple-choice features hold one list per choice. Padding happens per batch, to its longest row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Split:
    """One tokenised data split: `features` feed the model (one or more per example), `examples` feed the metric."""
    examples: list[dict]
    features: list[dict]
    lang: str = "en"
    name: str = ""


def _pad(rows: list, value: int, length: int) -> list:
    if rows and isinstance(rows[0], list):  # multiple choice: one row per choice
        return [_pad(r, value, length) for r in rows]
    return rows + [value] * (length - len(rows))


def collate(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad `features` to the longest row of the batch → tensors (B, T) or (B, C, T); labels (B,) or (B, H)."""
    length = max(feature_length(f) for f in features)
    batch = {}
    for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in features[0]:
            batch[key] = torch.tensor([_pad(f[key], value, length) for f in features], dtype=torch.long)
    for key, value in (("labels", -100), ("mlm_positions", 0)):
        if key in features[0]:
            rows = [f[key] for f in features]
            if isinstance(rows[0], list):  # token-level (MLM targets): ragged; -100 is cross-entropy's ignore_index
                width = max(map(len, rows))
                rows = [r + [value] * (width - len(r)) for r in rows]
            batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The batch on `device`. For CUDA it is copied from pinned memory with non_blocking=True, so the copy is
    asynchronous (a pageable source would make non_blocking a no-op)."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=pin) for k, v in batch.items() if k not in skip}


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The training order of one epoch: a permutation drawn from (seed, epoch) alone, so a run resumes exactly."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=g).tolist()


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = False) -> list[list[int]]:
    """The batches of one epoch (example indices), a pure function of (seed, epoch); the last partial batch is dropped.

    `group_by_length` (Hugging Face Trainer's `group_by_length`): the shuffled order is cut into mega-batches of 50
    batches, each sorted by length before it is split into batches, and the batches are then shuffled. Batches hold
    examples of similar length, so dynamic padding wastes little compute; which examples meet in a batch changes.
    """
    order = epoch_order(len(lengths), seed, epoch)
    if group_by_length:
        mega = 50 * batch_size
        order = [i for m in range(0, len(order), mega) for i in sorted(order[m:m + mega], key=lambda i: -lengths[i])]
    batches = [order[b * batch_size:(b + 1) * batch_size] for b in range(len(order) // batch_size)]
    if group_by_length:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch + 1)
        batches = [batches[b] for b in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def training_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0, start: int = 0,
                     group_by_length: bool = False) -> Iterator[tuple[int, int, list[int]]]:
    """Endless (epoch, index-in-epoch, example indices) batches, from batch `start` of `epoch` on (resume)."""
    if len(lengths) // batch_size == 0:
        raise ValueError(f"only {len(lengths)} training features for a batch size of {batch_size}")
    while True:
        batches = epoch_batches(lengths, batch_size, seed, epoch, group_by_length)
        for b in range(start, len(batches)):
            yield epoch, b, batches[b]
        epoch, start = epoch + 1, 0


def feature_length(feature: dict) -> int:
    """Tokens of a feature: its longest row (multiple choice holds one row per choice)."""
    ids = feature["input_ids"]
    return max(len(r) for r in ids) if ids and isinstance(ids[0], list) else len(ids)


def length_sorted_batches(features: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Evaluation batches of similar length (less padding); the caller restores the original order."""
    order = sorted(range(len(features)), key=lambda i: feature_length(features[i]), reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# --- reading local files, with errors that name the file and line --------------------------------------------

class LanguageNotFound(ValueError):
    """A file of several languages (a `language` column) holds no rows of the language asked for."""


def check_file(path: str | Path, what: str = "file") -> Path:
    """`path` if it is a non-empty file; else FileNotFoundError / ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: no such file")
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path}: the file is empty")
    return path


def read_jsonl(path: str | Path, what: str = "data file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; malformed JSON → ValueError naming file:line."""
    path = check_file(path, what)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: malformed JSON ({err.msg}); expected one JSON object per line") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def read_tsv(path: str | Path, what: str = "data file") -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for each non-blank line, split on tabs (no quoting, as XTREME's and XNLI's TSV files)."""
    path = check_file(path, what)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield n, line.split("\t")


def read_csv(path: str | Path, what: str = "data file") -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for each non-blank row of a CSV file (quoted cells may span lines: the row's first line)."""
    path = check_file(path, what)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for cells in reader:
                if any(c.strip() for c in cells):
                    yield start, cells
                start = reader.line_num + 1
        except csv.Error as err:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


TABLE_FORMATS = {".jsonl": "JSONL", ".json": "JSONL", ".csv": "CSV", ".tsv": "TSV", ".txt": "TSV"}


def read_table(path: str | Path, columns: Sequence[str], what: str = "data file") -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) for each row of a JSONL, CSV or TSV file (by suffix; TSV otherwise).

    A CSV/TSV file's first row is its header when it names every one of `columns`; otherwise the file has no header
    and its cells are `columns`, in that order (as XTREME's `premise<TAB>hypothesis<TAB>label`). Every row must hold
    every column; errors name the file and line."""
    path = Path(path)
    if TABLE_FORMATS.get(path.suffix.lower()) == "JSONL":
        for n, obj in read_jsonl(path, what):
            missing = [c for c in columns if c not in obj]
            if missing:
                raise ValueError(f"{path}:{n}: no key {', '.join(map(repr, missing))} (keys: {', '.join(obj)})")
            yield n, obj
        return
    rows = read_csv(path, what) if TABLE_FORMATS.get(path.suffix.lower()) == "CSV" else read_tsv(path, what)
    header, layout = None, ""
    for n, cells in rows:
        if header is None:
            named = [c.strip() for c in cells]
            if set(columns) <= set(named):  # a header row
                header, layout = named, f"in the header on line {n}"
                continue
            header, layout = list(columns), "without a header: " + ", ".join(columns)
        if len(cells) != len(header):
            raise ValueError(f"{path}:{n}: {len(cells)} cells; expected {len(header)}, as {layout}")
        yield n, dict(zip(header, cells))

"""The one task interface: loading, tokenisation, head, metric per task (XNLI, XCOPA, XQuAD, MLQA, classify).

The training loop, evaluation and the Fisher code only see `Task` and logits of shape (B, H, K) — H
independent categorical distributions over K outcomes (fun/heads.py) — so none of them branch on the task.
A task is built from a run's settings (`fun.tasks.build_task`), so a saved run rebuilds its task from config.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fun.data import Split

Value = float | tuple[float, float] | dict[str, float | tuple[float, float]]  # see Defaults


@dataclass(frozen=True)
class Defaults:
    """Paper hyperparameters (paper Table 3) for one task.

    `epochs` and `lr` are a number, a (standard, scheduled) pair, or a {model family: either} dict;
    `k` maps (model family, schedule) → k. Families without paper values (mDeBERTa) take mBERT's.
    """
    epochs: Value
    lr: Value
    batch_size: int
    max_length: int
    k: dict = field(default_factory=dict)          # {(model family, schedule): k}
    lr_schedule: str = "linear"
    fisher_every: int = 100                        # tr(F) curve interval (paper footnote 7: 50 for XCOPA)

    def get(self, name: str, family: str, scheduled: bool):
        """The paper value of `name` for a model family, standard (False) or scheduled (True) training."""
        value = getattr(self, name)
        if isinstance(value, dict):
            value = value.get(family, value["mbert"])
        return value[scheduled] if isinstance(value, tuple) else value

    def get_k(self, family: str, schedule: str) -> int:
        """The paper's k; schedules without their own column (rand, order, gu-rev) use GU's."""
        column = "gu" if schedule in ("rand", "order", "gu-rev") else schedule
        return self.k.get((family, column)) or self.k.get(("mbert", column)) or self.k.get(("mbert", "gu"), 800)


class SettingError(ValueError):
    """A task setting that cannot work; `field` names it (fun/config.py reports it as that field's flag)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Task:
    """Base class: subclasses set the attributes and implement `load`, `encode`, `make_head`, `decode`, `metrics`."""

    name: str
    metric: str                        # the model-selection metric key in `score`'s result
    languages: tuple[str, ...]         # zero-shot target languages (paper §4)
    extra_languages: tuple[str, ...] = ()  # also in the dataset, not in the paper's tables (--languages)
    source_lang: str = "en"
    token_level: bool = False          # K is the sequence length (span QA): trim padded logits per feature
    defaults: Defaults

    def load(self, split: str, path: str | None = None, lang: str = "en") -> list[dict]:
        """Raw examples of `split` ("train", "dev", "test") from `path` (a local file or directory in the
        official format) or, when `path` is None, from the Hugging Face Hub (fun/hub.py)."""
        raise NotImplementedError

    def local_files(self, split: str, directory: str | Path, lang: str) -> list[Path]:
        """The files `load(split, directory, lang)` looks for in a local directory, in the order it tries them
        ([]: the task does not say)."""
        return []

    def local_file(self, split: str, directory: str | Path, lang: str) -> Path | None:
        """The file `load(split, directory, lang)` reads: the first of `local_files` that exists, else the first, so
        that evaluate.py can skip languages whose files are absent (None: the task does not say)."""
        files = self.local_files(split, directory, lang)
        return next((f for f in files if f.exists()), files[0] if files else None)

    def target_languages(self, split: str, directory: str | Path | None) -> tuple[str, ...]:
        """The zero-shot target languages evaluate.py takes when none are given: the paper's (paper §4)."""
        return self.languages

    def known_languages(self) -> tuple[str, ...] | None:
        """The languages `--languages` may name (None: any)."""
        return self.languages + self.extra_languages

    def encode(self, examples: list[dict], tokenizer, max_length: int, train: bool) -> list[dict]:
        """Examples → features (lists of token ids, with `labels` of shape (H,) or () for training)."""
        raise NotImplementedError

    def make_head(self, hidden_size: int, dropout: float) -> nn.Module:
        raise NotImplementedError

    def decode(self, split: Split, logits: list[torch.Tensor]):
        """The model's per-feature logits (each (H, K)) → its predictions for the examples of `split`."""
        raise NotImplementedError

    def metrics(self, split: Split, predictions) -> dict[str, float]:
        """Metrics of `decode`'s predictions against the gold labels of `split`."""
        raise NotImplementedError

    def score(self, split: Split, logits: list[torch.Tensor]) -> dict[str, float]:
        """Metrics of the model's per-feature logits (each (H, K)) on `split`."""
        return self.metrics(split, self.decode(split, logits))

    def prediction_records(self, split: Split, predictions):
        """What evaluate.py writes for `decode`'s predictions: one record per example, with its id, line or row in
        the data, the predicted and the gold label (span QA: the official {question id: answer text})."""
        return [dict(where(e), prediction=self.label_name(p), label=self.label_name(e["label"]))
                for e, p in zip(split.examples, predictions)]

    def label_name(self, index: int):
        """How predictions files name a class."""
        return index

    def check_training(self, settings: Mapping[str, Any]) -> None:
        """Refuse training settings (a TrainConfig's fields) this task cannot work with: SettingError naming the field."""

    def settings(self) -> dict:
        """What rebuilding this task needs beyond its name (`fun.tasks.build_task`): nothing for the paper's tasks."""
        return {}

    def split(self, split: str, tokenizer, max_length: int, path: str | None = None, lang: str = "en",
              max_examples: int | None = None, seed: int = 0) -> Split:
        examples = self.load(split, path, lang)
        if max_examples is not None and max_examples < len(examples):
            # a seeded random subsample, not the first N (paper Table 1; the released code took the first N)
            g = torch.Generator().manual_seed(seed)
            keep = sorted(torch.randperm(len(examples), generator=g)[:max_examples].tolist())
            examples = [examples[i] for i in keep]
        if not examples:
            raise ValueError(f"{self.name} {split} data{' ' + str(path) if path else ''}: no examples")
        features = self.encode(examples, tokenizer, max_length, train=split == "train")
        return Split(examples, features, lang, f"{self.name}:{split}:{lang}")


def where(example: dict) -> dict:
    """Where an example comes from: its `id` in the data, its `line` in a local file, its `row` in a Hub split."""
    return {k: example[k] for k in ("id", "line", "row") if k in example}


def argmax_choices(logits: list[torch.Tensor]) -> list[int]:
    """The predicted class (or choice) per example of (1, K) logits: classification and multiple choice."""
    return torch.stack(logits)[:, 0].argmax(-1).tolist()  # (N, 1, K) → (N,)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch and the H heads (span QA: (CE_start + CE_end) / 2, as HF)."""
    labels = labels.view(logits.shape[0], -1)  # (B, H)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

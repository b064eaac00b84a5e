"""Tasks: `TASKS[name]` → the `Task` (fun/tasks/base.py) of each of the paper's benchmarks, and `build_task`, which
builds the task a run's settings name (a benchmark, or a classification task of your own), so that train.py,
evaluate.py and fisher.py rebuild it from config.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fun.tasks.base import SettingError, Task, task_loss
from fun.tasks.classify import Classification
from fun.tasks.extractive_qa import MLQA, XQuAD
from fun.tasks.xcopa import XCOPA
from fun.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (XNLI(), XCOPA(), XQuAD(), MLQA())}
TASK_NAMES: tuple[str, ...] = (*TASKS, Classification.name)


def build_task(name: str, settings: Mapping[str, Any] | None = None) -> Task:
    """The task `name`, built from a run's settings (a TrainConfig's fields, or its config.json): one of the paper's
    benchmarks, or `classify` from its columns, labels and data (fun/tasks/classify.py). SettingError names a
    setting that cannot work."""
    if name == Classification.name:
        return Classification.from_settings(settings or {})
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return TASKS[name]


__all__ = ["TASKS", "TASK_NAMES", "SettingError", "Task", "build_task", "task_loss"]

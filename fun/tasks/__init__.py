"""Tasks: `TASKS[name]` → the `Task` (fun/tasks/base.py) of each of the paper's benchmarks, and `build_task`, which
builds the task a run's settings name, so that train.py, evaluate.py and fisher.py rebuild it from config.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fun.tasks.base import Task, task_loss
from fun.tasks.extractive_qa import MLQA, XQuAD
from fun.tasks.xcopa import XCOPA
from fun.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (XNLI(), XCOPA(), XQuAD(), MLQA())}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def build_task(name: str, settings: Mapping[str, Any] | None = None) -> Task:
    """The task `name`, built from a run's settings (a TrainConfig's fields, or its config.json)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return TASKS[name]


__all__ = ["TASKS", "TASK_NAMES", "Task", "build_task", "task_loss"]

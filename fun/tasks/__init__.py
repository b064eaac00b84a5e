"""Task registry: `TASKS[name]` → the `Task` (fun/tasks/base.py) for that benchmark."""

from fun.tasks.base import Split, Task, task_loss
from fun.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (XNLI(),)}

__all__ = ["TASKS", "Split", "Task", "task_loss"]

"""Task registry: `TASKS[name]` → the `Task` (fun/tasks/base.py) for that benchmark."""

from fun.tasks.base import Task, task_loss
from fun.tasks.extractive_qa import MLQA, XQuAD
from fun.tasks.xcopa import XCOPA
from fun.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (XNLI(), XCOPA(), XQuAD(), MLQA())}

__all__ = ["TASKS", "Task", "task_loss"]

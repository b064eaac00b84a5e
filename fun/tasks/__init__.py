"""Task registry: `TASKS[name]` → the `Task` (fun/tasks/base.py) for that benchmark."""

from fun.tasks.base import Split, Task, task_loss
from fun.tasks.extractive_qa import MLQA, XQuAD
from fun.tasks.mlm import MLM
from fun.tasks.xcopa import XCOPA
from fun.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (XNLI(), XCOPA(), XQuAD(), MLQA(), MLM())}

__all__ = ["TASKS", "Split", "Task", "task_loss"]

"""Fine-tuning tasks: the registry of names, readers for the standard file layouts, and the GLUE metrics."""

from .metrics import METRIC_SETS, compute_metrics
from .examples import Example
from .readers import TASKS, Task, TaskData, get_task, load_task_data

__all__ = ["METRIC_SETS", "TASKS", "Example", "Task", "TaskData", "compute_metrics", "get_task", "load_task_data"]

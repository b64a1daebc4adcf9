"""Task registry for the paper's benchmarks: one ``TaskSpec`` per task, turned into ``Record``s.

Built-in tasks: arc_challenge, arc_easy, openbookqa, boolq, siqa (preset ``seen``); hellaswag,
winogrande, piqa (preset ``unseen``); gsm8k; alpaca (CC BY-NC 4.0, non-commercial); gpt4tools.
Each module documents its sources (local file formats, hub id), splits and license.

    from loragen.data.tasks import TaskLoader
    records = TaskLoader(data_dir="../shared/data", shots=3).records("arc_easy", "test")

Users add tasks with ``register_task`` or from a config (``task_from_config``; see ``registry``).
"""

from loragen.data.records import Record
from loragen.data.tasks import alpaca, arc, boolq, gpt4tools, gsm8k, hellaswag, openbookqa, piqa, siqa, winogrande
from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec
from loragen.data.tasks.generic import ChoiceTask, FreeTask, LLMAdaptersTask
from loragen.data.tasks.loader import HUB, TaskLoader
from loragen.data.tasks.registry import (
    PRESETS,
    REGISTRY,
    expand_tasks,
    get_task,
    known_tasks,
    register_task,
    task_from_config,
)

for _module in (arc, openbookqa, boolq, siqa, hellaswag, winogrande, piqa, gsm8k, alpaca, gpt4tools):
    for _spec in _module.TASKS:
        register_task(_spec, replace=True)



def task_records(task: str, split: str, data_dir: str | None = None, **loader_args) -> list[Record]:
    """``Record``s of one (task, split): ``TaskLoader(data_dir, **loader_args).records(task, split)``."""
    return TaskLoader(data_dir, **loader_args).records(task, split)


__all__ = ["HUB", "PRESETS", "REGISTRY", "ChoiceTask", "FreeTask", "HubSource", "Item", "LLMAdaptersTask",
           "Malformed", "TaskLoader", "TaskSpec", "expand_tasks", "get_task", "known_tasks", "register_task",
           "task_from_config", "task_records"]

"""Task registry: one ``TaskSpec`` per task, turned into ``Record``s.

Built-in tasks: arc_challenge, arc_easy, openbookqa, boolq, siqa (preset ``seen``); hellaswag,
winogrande, piqa (preset ``unseen``); gsm8k, math; alpaca (CC BY-NC 4.0, non-commercial); gpt4tools;
the many-task suite's datasets (``classify``: rte, cb, qnli, esnli, mrpc, stsb, wic, sst2, trec,
ag_news, mc_taco; ``reading``: commonsenseqa, dream, cosmosqa) and every dataset's task families
(``DATASET.FAMILY``, see ``families``); presets ``suite``, ``suite_no_nc`` and ``dev_unseen`` (``suite``).
Each module documents its sources (local file formats, hub id), splits and license.

    from loragen.data.tasks import TaskLoader
    records = TaskLoader(data_dir="DATA", shots=3).records("arc_easy", "test")

Users add tasks with ``register_task`` or from a config (``task_from_config``; see ``registry``).
"""

from loragen.data.records import Record
from loragen.data.tasks import (
    alpaca,
    arc,
    boolq,
    classify,
    gpt4tools,
    gsm8k,
    hellaswag,
    openbookqa,
    piqa,
    reading,
    siqa,
    winogrande,
)
from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec
from loragen.data.tasks.generic import ChoiceTask, FreeTask, LLMAdaptersTask
from loragen.data.tasks.loader import HUB, TaskLoader
from loragen.data.tasks.registry import (
    PRESETS,
    REGISTRY,
    dataset_of,
    expand_tasks,
    get_task,
    known_tasks,
    register_task,
    task_from_config,
)
from loragen.data.tasks.suite import build_families, suite_presets

_NATIVE = [
    spec
    for module in (
        arc,
        openbookqa,
        boolq,
        siqa,
        hellaswag,
        winogrande,
        piqa,
        gsm8k,
        alpaca,
        gpt4tools,
        reading,
        classify,
    )
    for spec in module.TASKS
]
for _spec in [*_NATIVE, *build_families(_NATIVE)]:
    register_task(_spec, replace=True)
PRESETS.update(suite_presets(REGISTRY))


def task_records(task: str, split: str, data_dir: str | None = None, **loader_args) -> list[Record]:
    """``Record``s of one (task, split): ``TaskLoader(data_dir, **loader_args).records(task, split)``."""
    return TaskLoader(data_dir, **loader_args).records(task, split)


__all__ = [
    "HUB",
    "PRESETS",
    "REGISTRY",
    "ChoiceTask",
    "FreeTask",
    "HubSource",
    "Item",
    "LLMAdaptersTask",
    "Malformed",
    "TaskLoader",
    "TaskSpec",
    "dataset_of",
    "expand_tasks",
    "get_task",
    "known_tasks",
    "register_task",
    "task_from_config",
    "task_records",
]

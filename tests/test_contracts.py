"""The typed contracts between methods and DataModules (``loragen.contracts``) hold for every class loragen ships:
a DataModule that stopped providing what evaluation reads, or a method missing what the DataModule asks, fails
here rather than by a silent fallback."""

from __future__ import annotations

import inspect

import pytest

from loragen.contracts import EvaluationData, PromptReading, evaluation_data
from tests.conftest import _data


def test_the_record_datamodule_provides_what_evaluation_reads():
    data = _data()
    assert isinstance(data, EvaluationData)
    assert data.tasks == sorted(data.tasks) and data.tasks  # the quickstart tasks
    assert data.extra_specs == {}


def test_the_task_datamodule_provides_it_by_inheritance():
    from loragen.data.datamodule import RecordDataModule
    from loragen.data.task_datamodule import TaskDataModule

    assert issubclass(TaskDataModule, RecordDataModule)


def _methods() -> list[type]:
    import loragen.models.baselines as baselines
    from loragen.models.edge_method import EdgeMethod
    from loragen.models.lora_gen_module import LoRAGenModule

    found = [LoRAGenModule]
    found += [c for _, c in inspect.getmembers(baselines, inspect.isclass) if issubclass(c, EdgeMethod)]
    return found


@pytest.mark.parametrize("method", _methods(), ids=lambda c: c.__name__)
def test_every_method_says_which_training_sequences_it_needs(method):
    for name in ("train_with_system_prompt", "train_teacher_prompt"):  # PromptReading's members, as properties
        assert isinstance(getattr(method, name), property), name


def test_a_method_instance_is_prompt_reading():
    from loragen.models.lora_gen_module import LoRAGenModule
    from tests.conftest import TINY_POOL

    module = LoRAGenModule(cloud="tiny:qwen2", edge="tiny:llama", pool=TINY_POOL, router_hidden=16)
    assert isinstance(module, PromptReading)
    assert module.train_teacher_prompt is False and module.train_with_system_prompt is False


def test_a_trainer_without_a_loragen_datamodule_gives_no_evaluation_data():
    import lightning as L

    assert evaluation_data(None) is None
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert evaluation_data(trainer) is None  # no DataModule attached

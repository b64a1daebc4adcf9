"""What a method and its DataModule ask of each other, as typed protocols (not attribute lookups by name).

- ``EvaluationData``: what a method's evaluation reads from the DataModule of its Trainer (the stages'
  tokenized examples, the task list, how a generated answer is graded, the task specs beyond the registry).
  ``RecordDataModule`` and its subclasses provide it.
- ``PromptReading``: what a DataModule asks of the method it serves, to tokenize the training sequences the
  method needs (the system prompt in the edge's context, the prompted-edge teacher sequence). Every
  ``EdgeMethod`` provides it.

``evaluation_data(trainer)`` is the DataModule of a Trainer when it provides ``EvaluationData`` (a plain
LightningDataModule or none: None, and evaluation falls back to exact-match grading without task lists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from loragen.data.records import Record
    from loragen.data.tasks.base import TaskSpec


@runtime_checkable
class EvaluationData(Protocol):
    examples: dict[str, list[dict[str, Any]]]
    """Tokenized examples per stage key (``train``, ``val``, ``test``, ``predict``)."""
    extra_specs: dict[str, TaskSpec]
    """Task specs the DataModule defines beyond the registry (empty for plain records)."""

    @property
    def tasks(self) -> list[str]:
        """The evaluation stages' task names, sorted."""
        ...

    def judge(self, text: str, record: Record) -> bool | None:
        """Grade a generated answer to ``record`` (None: unparseable)."""
        ...

    def system_prompt_ids(self) -> list[list[int]]:
        """Every distinct tokenized system prompt of the configured stages (``loragen encode``)."""
        ...

    def tokenize_system_prompt(self, text: str) -> list[int]:
        """A system prompt's cloud token ids, truncated as the data's prompts are."""
        ...


@runtime_checkable
class PromptReading(Protocol):
    @property
    def train_with_system_prompt(self) -> bool:
        """Training sequences carry the system prompt in the edge's context too."""
        ...

    @property
    def train_teacher_prompt(self) -> bool:
        """Training examples also carry the sequence with the system prompt (a teacher for distillation)."""
        ...

    @property
    def train_sibling_prompt(self) -> bool:
        """Training examples also carry a sibling task's system prompt (the sibling margin's counterfactual)."""
        ...


def evaluation_data(trainer: Any) -> EvaluationData | None:
    """The Trainer's DataModule if it provides ``EvaluationData``, else None."""
    datamodule = trainer.datamodule if trainer is not None else None
    return datamodule if isinstance(datamodule, EvaluationData) else None

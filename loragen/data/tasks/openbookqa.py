"""OpenBookQA (Mihaylov et al. 2018; license unclear -- research use, check before redistributing).

Local files: LLM-Adapters JSON (``llm-adapters/openbookqa/{train,test}.json``). Hub:
``allenai/openbookqa`` (``main``: question_stem, choices, answerKey).
"""

from __future__ import annotations

from typing import Any

from loragen.data.tasks.arc import parse_ai2
from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_choice


class OpenBookQATask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, "answer")
        if isinstance(row, dict) and "choices" in row:
            return parse_ai2(row, "question_stem")
        raise Malformed("neither an LLM-Adapters record nor an openbookqa row (question_stem/choices)")


OPENBOOKQA = OpenBookQATask(
    name="openbookqa",
    description="Answer the elementary science question using common knowledge by choosing the correct option.",
    files={"train": "llm-adapters/openbookqa/train.json", "test": "llm-adapters/openbookqa/test.json"},
    hub=HubSource("allenai/openbookqa", "main", {"train": "train", "val": "validation", "test": "test"}),
    answer_kind="choice_label",
    cloze="{question}",  # the harness asks the question stem alone
    license="License unclear (HF card 'unknown'; AI2 repository Apache-2.0): research use; cite Mihaylov et al. "
    "2018; LLM-Adapters compilation ODC-By 1.0.",
    notes="Local LLM-Adapters files have no validation split (use val_split: test or the hub).",
)
TASKS = [OPENBOOKQA]

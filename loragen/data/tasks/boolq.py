"""BoolQ (Clark et al. 2019; CC BY-SA 3.0), closed-book as in LLM-Adapters (no passage).

Local files: LLM-Adapters JSON (``llm-adapters/boolq/{train,test}.json``; its test split is the
public dev set). Hub: ``google/boolq`` (question, answer: bool, passage -- the passage is not used,
so hub and local records are the same task).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec, get_str
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_boolq

OPTIONS = ("true", "false")  # the LLM-Adapters answers, for generation scoring
CLOZE_OPTIONS = ("no", "yes")  # the harness's continuations and order, for option scoring


def boolq_item(question: str, label: int) -> Item:
    question = question.rstrip("?")
    return Item(f"Question: {question}?\nAnswer:", OPTIONS[label], OPTIONS, label, OPTIONS[label], question=question)


class BoolQTask(TaskSpec):
    """Closed-book: lm-evaluation-harness asks ``{passage}\\nQuestion: {question}?\\nAnswer:`` with the
    continuations ``no`` / ``yes``; our data has no passage, so the cloze formulation is that question
    without it (options ``no`` / ``yes`` in the harness's order, label 1 = yes; generation keeps the
    LLM-Adapters ``true`` / ``false``, label 0 = true)."""

    def formulate(self, item: Item, formulation: str) -> Item:
        item = super().formulate(item, formulation)
        if formulation == "cloze" and item.label is not None:
            label = 1 - item.label  # true (0) -> yes (1)
            return dataclasses.replace(item, options=CLOZE_OPTIONS, output=CLOZE_OPTIONS[label], label=label)
        return item

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return boolq_item(*parse_boolq(row))
        question = get_str(row, "question")
        answer = row.get("answer", label)
        if isinstance(answer, str) and answer.strip().lower() in OPTIONS:
            answer = answer.strip().lower() == "true"
        if not isinstance(answer, bool):
            raise Malformed(f"answer {answer!r} is not true/false")
        return boolq_item(question, 0 if answer else 1)


# alike in shape to hellaswag.py's HELLASWAG: another dataset's files, hub source and licence; kept apart
BOOLQ = BoolQTask(
    name="boolq",
    description="Answer the yes/no question about general knowledge.",
    files={
        "train": "llm-adapters/boolq/train.json",
        "val": "llm-adapters/boolq/test.json",
        "test": "llm-adapters/boolq/test.json",
    },
    hub=HubSource("google/boolq", None, {"train": "train", "val": "validation", "test": "validation"}),
    answer_kind="boolean",
    cloze="Question: {question}?\nAnswer:",
    headline="acc",
    license="License: CC BY-SA 3.0 (BoolQ); LLM-Adapters compilation ODC-By 1.0. Adapted data is share-alike.",
    notes="val and test are both the public dev set (BoolQ's test labels are not public).",
)
TASKS = [BOOLQ]

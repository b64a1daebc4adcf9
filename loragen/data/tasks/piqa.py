"""PIQA (Bisk et al., AAAI 2020; AFL-3.0 -- keep attribution, cite the paper).

Local files: ``piqa/train.hf.jsonl`` (goal, sol1, sol2, label 0/1, as converted from the hub) or the
official ``{train,valid}.jsonl`` with ``{train,valid}-labels.lst`` (0/1), and the LLM-Adapters JSON
(``Solution1/Solution2``). Hub: ``ybisk/piqa``. The public test labels are hidden, so ``test`` is
the validation set (as in LLM-Adapters).
"""

from __future__ import annotations

from typing import Any

from loragen.data.tasks.base import (
    HubSource,
    Item,
    TaskSpec,
    choice_item,
    get_text,
    inline_or_file_label,
    parse_index,
)
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_choice


class PiqaTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, "solution")
        goal, options = get_text(row, "goal"), [get_text(row, "sol1"), get_text(row, "sol2")]  # raw, as the harness
        raw = inline_or_file_label(row, "label", label)
        return choice_item(goal, options, parse_index(raw, 2, base=0), "solution", normalize=False)


PIQA = PiqaTask(
    name="piqa",
    description="Choose the solution that best achieves the goal, using physical commonsense.",
    files={"train": "piqa/train.hf.jsonl", "val": "piqa/valid.jsonl", "test": "piqa/valid.jsonl"},
    hub=HubSource("ybisk/piqa", None, {"train": "train", "val": "validation", "test": "validation"}),
    answer_kind="choice_label",
    answer_prefix="solution",
    license="License: AFL-3.0 (keep attribution notices; cite Bisk et al., AAAI 2020).",
    notes="val and test are both the public validation set (valid.jsonl + valid-labels.lst; test labels are hidden).",
)
TASKS = [PIQA]

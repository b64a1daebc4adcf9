"""ARC-Challenge and ARC-Easy (Clark et al. 2018; CC BY-SA 4.0).

Local files: the LLM-Adapters JSON (``llm-adapters/ARC-*/{train,test}.json``). Hub:
``allenai/ai2_arc`` (question, choices {text, label}, answerKey); the same rows are accepted in
local JSON/JSONL files.
"""

from __future__ import annotations

from typing import Any

from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec, choice_item, get_str
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_choice

LICENSE = "License: CC BY-SA 4.0 (ARC); LLM-Adapters compilation ODC-By 1.0. Adapted data is share-alike."


def parse_ai2(row: dict[str, Any], question_key: str = "question") -> Item:
    """The hub schema of ARC / OpenBookQA: choices {text: [...], label: [A..E or 1..5]}, answerKey."""
    question = get_str(row, question_key)
    choices = row.get("choices")
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list):
        raise Malformed("missing field 'choices' with 'text' and 'label' lists")
    keys = [str(k).strip() for k in choices.get("label", [])]
    key = str(row.get("answerKey", "")).strip()
    if key not in keys:
        raise Malformed(f"answerKey {key!r} is not one of the option labels {keys}")
    return choice_item(question, choices["text"], keys.index(key), "answer")


class ArcTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, "answer")
        if isinstance(row, dict) and "choices" in row:
            return parse_ai2(row)
        raise Malformed("neither an LLM-Adapters record (instruction/answer) nor an ai2_arc row (question/choices)")


def _arc(name: str, folder: str, level: str) -> ArcTask:
    return ArcTask(
        name=name,
        description=f"Answer the {level}grade-school science question by choosing the correct option.",
        files={"train": f"llm-adapters/{folder}/train.json", "test": f"llm-adapters/{folder}/test.json"},
        hub=HubSource("allenai/ai2_arc", folder, {"train": "train", "val": "validation", "test": "test"}),
        answer_kind="choice_label",
        license=LICENSE,
        notes="Local LLM-Adapters files have no validation split (use val_split: test or the hub).",
    )


ARC_CHALLENGE = _arc("arc_challenge", "ARC-Challenge", "challenging ")
ARC_EASY = _arc("arc_easy", "ARC-Easy", "")
TASKS = [ARC_CHALLENGE, ARC_EASY]

"""HellaSwag (Zellers et al. 2019; MIT -- keep the copyright notice).

Local files in the published format (rowanz/hellaswag ``data/hellaswag_{train,val,test}.jsonl``:
ind, activity_label, ctx_a, ctx_b, ctx, endings [4], label, source_id, split, split_type), or the
LLM-Adapters JSON (``Ending1..Ending4``). Hub: ``Rowan/hellaswag`` (label as a string; empty in test).
Text is cleaned as in common evaluation harnesses (``[title]`` -> ". ", other ``[...]`` removed).
The test labels are hidden, so ``test`` is the validation set.
"""

from __future__ import annotations

import re
from typing import Any

from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec, choice_item, get_str, parse_index
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_choice


def clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocessing, exactly (so both ask the same question)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


class HellaSwagTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, "ending")
        if isinstance(row, dict) and isinstance(row.get("ctx_a"), str) and row["ctx_a"].strip():
            get_str(row, "ctx_b", allow_empty=True)  # type check
            ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"  # raw text: the harness cleans it once, below
        else:  # harnesses build ctx_a + " " + ctx_b.capitalize(); ctx alone is the fallback
            get_str(row, "ctx")
            ctx = row["ctx"]
        endings = row.get("endings")
        if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings) or len(endings) < 2:
            raise Malformed("field 'endings' must be a list of at least two strings")
        raw = row.get("label")
        if raw in (None, ""):
            raw = label
        if raw in (None, ""):
            raise Malformed("no label (the published test split has none: evaluate on val)")
        activity = row.get("activity_label")
        question = clean(f"{activity}: {ctx}" if isinstance(activity, str) and activity.strip() else ctx)
        return choice_item(
            question,
            [clean(e) for e in endings],
            parse_index(raw, len(endings), base=0),
            "ending",
            normalize=False,
            **({"id": row["ind"]} if "ind" in row else {}),
        )


HELLASWAG = HellaSwagTask(
    name="hellaswag",
    description="Choose the most plausible continuation of the described activity.",
    files={
        "train": "hellaswag/hellaswag_train.jsonl",
        "val": "hellaswag/hellaswag_val.jsonl",
        "test": "hellaswag/hellaswag_val.jsonl",
    },
    hub=HubSource("Rowan/hellaswag", None, {"train": "train", "val": "validation", "test": "validation"}),
    answer_kind="choice_label",
    answer_prefix="ending",
    shot_splits=("train", "val"),
    cloze="{question}",
    license="License: MIT (Copyright (c) 2019 Rowan Zellers; keep the notice).",
    notes="val and test are both the published validation set (test labels are hidden). Few-shot examples come "
    "from train; if no train file is given they come from val, and those items are then removed from the "
    "evaluated items.",
)
TASKS = [HELLASWAG]

"""Social IQa (Sap et al. 2019; CC BY 4.0 -- credit the authors).

Local files: the official ``siqa/{train,dev}.jsonl`` (context, question, answerA/B/C) with
``{train,dev}-labels.lst`` (1/2/3), and the LLM-Adapters ``llm-adapters/social_i_qa/test.json``
(= the dev set). Hub: ``allenai/social_i_qa`` (label "1"/"2"/"3" in the row). The question is
"CONTEXT QUESTION" in both forms, so raw and LLM-Adapters records read the same.
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


# alike in shape to piqa.py (imports, parse_row): other fields, option count and label base; kept apart
class SiqaTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, "answer")
        question = f"{get_text(row, 'context')} {get_text(row, 'question')}"  # raw text, as the harness reads it
        options = [get_text(row, key) for key in ("answerA", "answerB", "answerC")]
        raw = inline_or_file_label(row, "label", label)
        return choice_item(question, options, parse_index(raw, 3, base=1), "answer", normalize=False)


SIQA = SiqaTask(
    name="siqa",
    description="Answer the question about people's actions and social situations by choosing the correct option.",
    files={"train": "siqa/train.jsonl", "val": "siqa/dev.jsonl", "test": "llm-adapters/social_i_qa/test.json"},
    hub=HubSource("allenai/social_i_qa", None, {"train": "train", "val": "validation", "test": "validation"}),
    answer_kind="choice_label",
    shot_splits=("train", "val"),
    cloze="Q: {question}\nA:",  # the harness's social_iqa
    headline="acc",  # social_iqa reports acc only
    license="License: CC BY 4.0 (AI2; credit Sap et al. 2019); LLM-Adapters compilation ODC-By 1.0.",
    notes="val and test are both the public dev set (test in LLM-Adapters form). Few-shot examples come from the "
    "raw train split (siqa/train.jsonl + train-labels.lst); without it, from val -- and then those items are "
    "removed from the evaluated dev items.",
)
TASKS = [SIQA]

"""WinoGrande 1.1 (Sakaguchi et al. 2019; CC-BY -- credit the authors).

Local files: ``winogrande/{train_xs,...,train_xl,dev}.jsonl`` (sentence with ``_``, option1, option2,
answer "1"/"2"), optionally with ``*-labels.lst``; ``train_xl.hf.jsonl`` (no qID); the LLM-Adapters
JSON (``Option1/Option2``). Hub: ``allenai/winogrande`` (``winogrande_xs``; every size shares the
dev set). The public test labels are hidden, so ``test`` is the dev set (as in LLM-Adapters).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from loragen.data.tasks.base import (
    HubSource,
    Item,
    Malformed,
    TaskSpec,
    choice_item,
    get_text,
    inline_or_file_label,
    parse_index,
)
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_choice


class WinograndeTask(TaskSpec):
    """Option scoring uses lm-evaluation-harness's *partial scoring*: the sentence up to the blank with
    each option substituted is that option's context, and the rest of the sentence (the same for
    both) is the continuation scored after it."""

    def formulate(self, item: Item, formulation: str) -> Item:
        sentence = item.question or ""
        if formulation == "choices" or item.options is None or "_" not in sentence:
            return super().formulate(item, formulation)
        blank = sentence.index("_")
        rest = sentence[blank + 1 :].strip()
        if not rest:  # nothing after the blank (possible in LLM-Adapters rows): no partial scoring possible
            return super().formulate(item, formulation)
        contexts = tuple(sentence[:blank] + option for option in item.options)
        return dataclasses.replace(
            item, input=sentence, output=rest, options=(rest,) * len(contexts), contexts=contexts
        )

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, "option")
        sentence = get_text(row, "sentence")  # raw text, as the harness reads it
        if "_" not in sentence:
            raise Malformed("sentence has no blank '_'")
        if not sentence[sentence.index("_") + 1 :].strip():
            raise Malformed("nothing follows the blank '_' (partial scoring needs a continuation)")
        options = [get_text(row, "option1"), get_text(row, "option2")]
        raw = inline_or_file_label(row, "answer", label)
        qid = row.get("qID")
        return choice_item(
            sentence,
            options,
            parse_index(raw, 2, base=1, what="answer"),
            "option",
            normalize=False,
            **({"id": qid} if qid else {}),
        )


WINOGRANDE = WinograndeTask(
    name="winogrande",
    description="Choose the option that correctly fills the blank (_) in the sentence.",
    files={"train": "winogrande/train_xs.jsonl", "val": "winogrande/dev.jsonl", "test": "winogrande/dev.jsonl"},
    hub=HubSource("allenai/winogrande", "winogrande_xs", {"train": "train", "val": "validation", "test": "validation"}),
    answer_kind="choice_label",
    answer_prefix="option",
    headline="acc",
    license="License: CC-BY (credit Sakaguchi et al. 2019).",
    notes="Train defaults to the smallest size (train_xs); point files.winogrande.train at train_s/m/l/xl for more. "
    "val and test are both the dev set (test labels are hidden).",
)
TASKS = [WINOGRANDE]

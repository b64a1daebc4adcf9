"""Alpaca (Taori et al. 2023) for instruction-aware pre-training.

**License: CC BY-NC 4.0 -- non-commercial (research) use only; the outputs were generated with
OpenAI text-davinci-003, so OpenAI's terms also apply.** Do not use it for commercial models.

Local files: Alpaca JSON (instruction, input, output), e.g. ``alpaca/alpaca_data_1k.json``. Hub:
``tatsu-lab/alpaca``. Records (DESIGN §2.1): system prompt = the instruction, user input = the
instance input, output = the output; no options and no few-shot examples. An empty instance input
becomes the minimal user turn ``empty_input`` (``"Response:"``), so the edge prompt is never empty
(tokenizers without a BOS token would give it no tokens at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec, get_str


@dataclass
class AlpacaTask(TaskSpec):
    empty_input: str = "Response:"

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        instruction = get_str(row, "instruction")
        user = row.get("input", "")
        if not isinstance(user, str):
            raise Malformed(f"field 'input' must be a string, got {type(user).__name__}")
        output = row.get("output")
        if not isinstance(output, str) or not output.strip():
            raise Malformed("missing or empty field 'output'")
        return Item(user.strip() or self.empty_input, output.strip(), system=instruction)


ALPACA = AlpacaTask(
    name="alpaca",
    description="",
    files={"train": "alpaca/alpaca_data_1k.json"},
    hub=HubSource("tatsu-lab/alpaca", None, {"train": "train"}),
    answer_kind="text",
    shot_splits=(),
    non_commercial=True,
    license="License: CC BY-NC 4.0 -- NON-COMMERCIAL use only (Stanford: research use only; generated with OpenAI "
    "text-davinci-003, so OpenAI's terms also apply).",
    notes="System prompt = the instruction (per record); only a train split (the first 335 records of the original "
    "file are in alpaca/alpaca_data.first335.json).",
)
TASKS = [ALPACA]

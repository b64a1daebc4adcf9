"""GPT4Tools (Yang et al., NeurIPS 2023) tool-use data, in its published format.

Files (``AILab-CVC/GPT4Tools`` distributes them on Google Drive / OneDrive only, no hub dataset):
``gpt4tools_71k.json`` (train), ``gpt4tools_val_seen.json`` (val), ``gpt4tools_test_unseen.json``
(test): JSON arrays of ``{"instruction", "input", "output"}`` (evaluation files add ``id``). The
instruction is the Visual-ChatGPT-style prompt: a system message listing the available tools and
the ReAct format, then ``Previous conversation:``, ``New input: ...``, a fixed reminder, and any
earlier Thought / Action / Observation turns. The output is the next turn::

    Thought: Do I need to use a tool? Yes
    Action: Segment the Image
    Action Input: image/abc.png
    Observation:

or ``Thought: Do I need to use a tool? No\\nAI: ...``.

Records: system prompt = the tool-listing part of the instruction plus the fixed reminder (it differs
per item: each lists its own tools), user input = ``Previous conversation: ...`` onwards (chat
history, new input, earlier turns), output = the output. Scored with
``loragen.eval.tool_use.ToolUseSuccess`` (SR_t, SR_act, SR_args, SR).
License: not stated by the authors; the data was generated with GPT-3.5 and its no-tool items come
from Alpaca-GPT4 (CC BY-NC 4.0): research use only.
"""

from __future__ import annotations

import re
from typing import Any

from loragen.data.tasks.base import Item, Malformed, TaskSpec

HISTORY_MARKER = "Previous conversation:"
_REMINDER = re.compile(
    r"\n?(GPT4Tools needs to use tools to observe images, not directly imagine them\..*?"
    r"Let's think step by step\.)[ \t]*\n?",
    re.DOTALL,
)
_THOUGHT = re.compile(r"Thought: Do I need to use a tool\? (Yes|No)")


def split_instruction(instruction: str) -> tuple[str, str]:
    """(system prompt, user input) of a GPT4Tools instruction."""
    head, marker, rest = instruction.partition(HISTORY_MARKER)
    if not marker:
        raise Malformed(f"instruction has no {HISTORY_MARKER!r} section: not in the GPT4Tools format")
    if "TOOLS" not in head and "Action:" not in head:
        raise Malformed("instruction lists no tools: not in the GPT4Tools format")
    system = head.strip()
    reminder = _REMINDER.search(rest)
    if reminder:
        system = f"{system}\n\n{reminder.group(1).strip()}"
        rest = rest[: reminder.start()] + "\n" + rest[reminder.end() :]
    user = (marker + rest).strip()
    return system, user


class Gpt4ToolsTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if not isinstance(row, dict):
            raise Malformed(f"a record must be a JSON object, got {type(row).__name__}")
        instruction, output, extra = row.get("instruction"), row.get("output"), row.get("input") or ""
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str):
            raise Malformed("a GPT4Tools record needs string fields 'instruction', 'input' and 'output'")
        thought = _THOUGHT.search(output)
        if thought is None:
            raise Malformed("output has no 'Thought: Do I need to use a tool? Yes/No' line")
        needs_tool = thought.group(1) == "Yes"
        if needs_tool and not ("Action:" in output and "Action Input:" in output):
            raise Malformed("output says a tool is needed but has no 'Action:' and 'Action Input:' lines")
        system, user = split_instruction(instruction)
        if extra.strip():
            user = f"{user}\n{extra.strip()}"
        meta = {"needs_tool": needs_tool, **({"id": row["id"]} if "id" in row else {})}
        return Item(user, output.strip(), answer=output.strip(), system=system, meta=meta)


GPT4TOOLS = Gpt4ToolsTask(
    name="gpt4tools",
    description="",
    files={
        "train": "gpt4tools/gpt4tools_71k.json",
        "val": "gpt4tools/gpt4tools_val_seen.json",
        "test": "gpt4tools/gpt4tools_test_unseen.json",
    },
    hub=None,
    answer_kind="tool",
    shot_splits=(),
    license="License: not stated by the authors (generated with GPT-3.5; no-tool items from Alpaca-GPT4, "
    "CC BY-NC 4.0): research use only.",
    notes="No hub dataset: download the three files from the links in AILab-CVC/GPT4Tools into DATA_DIR/gpt4tools/. "
    "val = seen tools, test = unseen tools. The system prompt (tool list) comes from each record.",
)
TASKS = [GPT4TOOLS]

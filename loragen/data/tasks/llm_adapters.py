"""The LLM-Adapters instruction format (Hu et al., EMNLP 2023; compilation ODC-By 1.0).

Each record is ``{"instruction", "input", "output", "answer"}``; multiple-choice instructions read::

    Please choose the correct answer to the question: QUESTION

    Answer1: ... Answer2: ... Answer3: ...

    Answer format: answer1/answer2/answer3

with ``Solution`` (PIQA), ``Ending`` (HellaSwag) or ``Option`` (WinoGrande) instead of ``Answer``;
BoolQ asks "Please answer the following question with true or false, question: ...". The output is
"the correct answer is answerN" and ``answer`` the label. GSM8K's instruction is the question and
its answer the number.
"""

from __future__ import annotations

import re
from typing import Any

from loragen.data.tasks.base import Item, Malformed, choice_item, get_str, normalize_space

_CHOICE_RE = re.compile(
    r"\APlease choose the correct [^:\n]*:\s*(?P<body>.*?)\s*\n\s*Answer format:\s*"
    r"(?P<format>(?P<word>[a-z]+)1(?:/[a-z]+\d+)+)\s*\Z",
    re.DOTALL,
)
_BOOLQ_RE = re.compile(
    r"\APlease answer the following question with true or false, question:\s*(?P<question>.*?)\s*\n\s*"
    r"Answer format:\s*true/false\s*\Z",
    re.DOTALL,
)


def is_llm_adapters(row: Any) -> bool:
    return isinstance(row, dict) and "instruction" in row and "answer" in row


def _check_output(row: dict[str, Any], answer: str) -> None:
    output = normalize_space(row.get("output", "")).lower()
    if output and output != f"the correct answer is {answer}".lower():
        raise Malformed(f"output {row.get('output')!r} disagrees with answer {answer!r}")


def _match_instruction(row: dict[str, Any], pattern: re.Pattern[str], form: str) -> re.Match[str]:
    """The record's instruction matched by ``pattern``; ``Malformed`` if missing or not in that ``form``."""
    instruction = row.get("instruction")
    if not isinstance(instruction, str):
        raise Malformed("missing field 'instruction'")
    match = pattern.match(instruction.strip())
    if match is None:
        raise Malformed(f"instruction is not in the LLM-Adapters {form} format")
    return match


def parse_choice(row: dict[str, Any], expect_word: str | None = None) -> Item:
    """A multiple-choice LLM-Adapters record -> ``Item`` (options in order, 0-based label)."""
    match = _match_instruction(row, _CHOICE_RE, "multiple-choice")
    word = match["word"]
    if expect_word is not None and word != expect_word:
        raise Malformed(f"answer format uses {word}N, expected {expect_word}N")
    n_format = len(match["format"].split("/"))
    marker = re.compile(r"(?:\A|\s+)" + word.capitalize() + r"(\d+):\s*")
    parts = marker.split(match["body"])
    question, numbers, texts = parts[0], parts[1::2], parts[2::2]
    if numbers != [str(k) for k in range(1, len(numbers) + 1)] or len(numbers) != n_format:
        raise Malformed(f"options are not numbered {word.capitalize()}1..{word.capitalize()}{n_format}")
    answer = get_str(row, "answer").lower()
    found = re.fullmatch(word + r"(\d+)", answer)
    if found is None:
        raise Malformed(f"answer {row.get('answer')!r} is not {word}N")
    label = int(found.group(1)) - 1
    if not 0 <= label < len(texts):
        raise Malformed(f"answer {answer!r} is outside the {len(texts)} options")
    _check_output(row, answer)
    return choice_item(question, texts, label, word)


def parse_boolq(row: dict[str, Any]) -> tuple[str, int]:
    """A BoolQ LLM-Adapters record -> (question, label) with label 0 = true, 1 = false."""
    match = _match_instruction(row, _BOOLQ_RE, "true/false")
    answer = get_str(row, "answer").lower()
    if answer not in ("true", "false"):
        raise Malformed(f"answer {row.get('answer')!r} is not true/false")
    _check_output(row, answer)
    return normalize_space(match["question"]), ("true", "false").index(answer)

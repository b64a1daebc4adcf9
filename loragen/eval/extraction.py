"""Answer extraction for the generation scoring mode.

A generated answer is free text; these functions pull the predicted answer out of it in the
LLM-Adapters conventions (``"the correct answer is answer3"`` -> ``"answer3"``, ``true`` / ``false``,
the final number of a GSM8K solution) or by matching it against the option texts. Every function
returns ``None`` when nothing can be extracted: the caller counts that as an unparseable generation
(and as wrong), it is never silently mapped to an answer.

Kinds (``extract_answer(kind, text, ...)``):

- ``choice_label``: the first ``answerN`` / ``solutionN`` / ``endingN`` / ``optionN`` in the text
  (LLM-Adapters' evaluation takes the first match too); ``prefix`` restricts the word, ``num_options``
  the range of N. Returns e.g. ``"answer3"``.
- ``boolean``: the first ``true``/``false`` (or ``yes``/``no``) word -> ``"true"`` / ``"false"``.
- ``number``: GSM8K: the number after ``####``, else after "the answer is", else the last number in
  the text; commas, currency signs and a trailing ``.0`` are removed (``"1,234.0"`` -> ``"1234"``).
- ``option_text``: which of ``options`` the text names (see ``match_option``); returns the option text.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

KINDS = ("choice_label", "boolean", "number", "option_text")
CHOICE_WORDS = ("answer", "solution", "ending", "option")

_CHOICE_RE = re.compile(r"\b(answer|solution|ending|option)\s?(\d+)\b", re.IGNORECASE)
_BOOL_RE = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)
_NUMBER = r"-?[$€£]?\s?-?\d[\d,]*(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_FINAL_RE = re.compile(r"####\s*(" + _NUMBER + ")")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE)


def extract_answer(
    kind: str,
    text: str | None,
    *,
    options: Sequence[str] | None = None,
    prefix: str | None = None,
    num_options: int | None = None,
) -> str | None:
    """The answer predicted by ``text`` in the form of ``kind``, or ``None`` when unparseable."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}: choose one of {list(KINDS)}")
    if not text or not text.strip():
        return None
    if kind == "choice_label":
        return extract_choice_label(text, prefix=prefix, num_options=num_options or (len(options) if options else None))
    if kind == "boolean":
        return extract_boolean(text)
    if kind == "number":
        return extract_number(text)
    if options is None:
        raise ValueError("option_text extraction needs the options")
    return match_option(text, options)


def extract_choice_label(text: str, *, prefix: str | None = None, num_options: int | None = None) -> str | None:
    """First ``answerN``-style label in ``text`` (``prefix`` = the word to accept, default any)."""
    for match in _CHOICE_RE.finditer(text):
        word, number = match.group(1).lower(), int(match.group(2))
        if prefix is not None and word != prefix.lower():
            continue
        if number < 1 or (num_options is not None and number > num_options):
            return None  # names an option that does not exist: wrong, and counted as unparseable
        return f"{word}{number}"
    return None


def extract_boolean(text: str) -> str | None:
    match = _BOOL_RE.search(text)
    if match is None:
        return None
    return "true" if match.group(1).lower() in ("true", "yes") else "false"


def normalize_number(raw: str) -> str | None:
    """Canonical string of a number: no commas, currency or spaces; integers without ``.0``."""
    cleaned = re.sub(r"[\s,$€£]", "", raw).rstrip(".")
    if cleaned in ("", "-"):
        return None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def extract_number(text: str) -> str | None:
    for pattern in (_FINAL_RE, _ANSWER_IS_RE):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    matches = _NUMBER_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def _norm(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def match_option(text: str, options: Sequence[str]) -> str | None:
    """The option ``text`` names: an exact match (case, punctuation and spacing ignored), else the
    longest option the text starts with, else the only option contained in the text; else ``None``."""
    said = _norm(text)
    normed = [_norm(o) for o in options]
    if not said:
        return None
    for option, norm in zip(options, normed):
        if said == norm:
            return option
    starts = [(len(n), o) for o, n in zip(options, normed) if n and (said.startswith(n + " ") or said == n)]
    if starts:
        longest = max(length for length, _ in starts)
        best = [o for length, o in starts if length == longest]
        return best[0] if len(best) == 1 else None
    contained = [o for o, n in zip(options, normed) if n and re.search(r"\b" + re.escape(n) + r"\b", said)]
    # an option contained in another (e.g. "cat" in "black cat") is not evidence on its own
    contained = [o for o in contained if not any(o != p and _norm(o) in _norm(p) for p in contained)]
    return contained[0] if len(contained) == 1 else None


def answers_match(kind: str, predicted: str | None, reference: str | None) -> bool:
    """Whether an extracted answer equals the reference answer (numbers compared by value)."""
    if predicted is None or reference is None:
        return False
    if kind == "number":
        a, b = normalize_number(predicted), normalize_number(reference)
        return a is not None and a == b
    if kind == "option_text":
        return _norm(predicted) == _norm(reference)
    return predicted.strip().lower() == reference.strip().lower()


def exact_match(text: str, reference: str) -> bool | None:
    """Whitespace- and case-insensitive equality of a generated answer with the reference; None (unparseable)
    for an empty answer. The grading of records whose task has no answer extraction of its own."""
    answer = " ".join(text.split()).lower()
    return (answer == " ".join(reference.split()).lower()) if answer else None

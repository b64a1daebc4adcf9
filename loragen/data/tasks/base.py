"""What a task is to loragen: ``TaskSpec`` (sources, description, prompt format, answer kind) and
``Item`` (one parsed example before its system prompt is attached).

A ``TaskSpec`` subclass implements ``parse_row(row, label)`` for its file formats (and
``parse_hub_row`` if the hub's schema differs). Everything else -- reading files, reporting
malformed rows, drawing few-shot examples, building ``Record``s -- is shared (``loader.py``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.data.jsonrows import Malformed, Row, read_rows  # Malformed re-exported: task parsers raise it
from loragen.data.records import Record
from loragen.models.config import SCORINGS as SCORING_MODES  # how a model grades items (eval.scoring)

FORMULATIONS = ("cloze", "choices")


def formulation_for(scoring: str) -> str:
    """Option scoring asks the harness's cloze question; generation needs the options listed."""
    if scoring not in SCORING_MODES:
        raise LoRAGenError(f"scoring={scoring!r} is unknown: choose one of {', '.join(SCORING_MODES)}")
    return "choices" if scoring == "generate" else "cloze"


@dataclass
class HubSource:
    """A public dataset on the model hub, loaded with ``datasets.load_dataset(path, name, split=...)``.

    ``splits`` maps loragen split names (train / val / test) to the hub's split names.
    """

    path: str
    name: str | None = None
    splits: dict[str, str] = field(default_factory=dict)


@dataclass
class Item:
    """One example: the user ``input`` (already formatted), the gold ``output``, and for multiple
    choice the option texts with the 0-based ``label``. ``answer`` is the label in the
    LLM-Adapters style (``answer2``, ``true``, ``18``) for generation scoring; ``system`` is set only
    by tasks whose system prompt belongs to the item (Alpaca instruction, GPT4Tools tool list).

    Multiple-choice items are parsed in the *choices* formulation (``input`` lists the options, for
    ``scoring: generate``) and keep the bare ``question``, from which ``TaskSpec.formulate`` builds the
    *cloze* formulation of option scoring. ``contexts`` (partial scoring, WinoGrande): one context
    per option, and ``options`` are then the continuations scored after each."""

    input: str
    output: str
    options: tuple[str, ...] | None = None
    label: int | None = None
    answer: str | None = None
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    question: str | None = None
    contexts: tuple[str, ...] | None = None
    plain: str | None = None


@dataclass
class TaskSpec:
    """One benchmark task.

    Args:
        name: registry name (``arc_easy``); the ``task`` of every record.
        description: first part of the system prompt (followed by the few-shot examples).
        files: split -> default path relative to ``data_dir`` (the layout of ``docs/data.md``).
        hub: public hub source for users with a hub (used only when no local file is given).
        answer_kind: how a generated answer is extracted (``loragen.eval.extraction`` kinds, or
            ``tool`` for GPT4Tools ReAct output, or ``text`` for none).
        answer_prefix: the label word of ``choice_label`` answers (``answer``, ``solution``, ...).
        cloze: the question of option scoring (``scoring: loglik``) in lm-evaluation-harness's
            formulation of the task, ``{question}`` being the parsed question; each option text is
            scored as the continuation after a space. No options are listed.
        shot_splits: splits few-shot examples may come from, in order of preference; the first one
            available is used. Items equal to a few-shot example are removed from every split
            built (so an example is never also an evaluated or a training item). Empty: no shots
            (tasks whose system prompt comes from the item).
        license / notes: shown in ``describe()``; say where the data may not be used.
        dataset: the dataset the items come from (default: ``name``); task families over the same
            items share it, and so do licences, dev carves and the unseen-task guard.
        family: ``native`` (the dataset's own formulation) or the family's name (``loragen.data.tasks.families``).
        non_commercial: the data's licence forbids commercial use (``suite_no_nc`` leaves the task out).
        harness: the lm-evaluation-harness task this formulation equals, or "" (see ``grading``).
        carve: the dataset has one labelled file (``files['train']``): its ``val`` and ``test`` splits are
            this many items carved from it (seeded by the dataset name), and ``train`` is the rest.
        max_shots: at most this many few-shot examples in the system prompt (long inputs); None = ``shots``.
        paraphrases: further descriptions of the same task, meaning the same as ``description``;
            training may draw one per record (``data.train_descriptions``).
        heldout_description: a paraphrase never used in training, for evaluation only
            (``data.eval_description: heldout``).
        reader: ``reader(path) -> rows`` for a local file format other than JSON / JSONL (TSV, CSV,
            line-aligned files; ``loragen.data.tasks.tabular``); None reads JSON / JSONL.
        headline: the metric lm-evaluation-harness reports as this task's headline (``acc_norm`` where it
            reports acc_norm, else ``acc``); ``eval.metric: harness`` reports each task by it.
    """

    name: str
    description: str = ""
    files: dict[str, str] = field(default_factory=dict)
    hub: HubSource | None = None
    answer_kind: str = "option_text"
    answer_prefix: str = "answer"
    cloze: str = "Question: {question}\nAnswer:"
    shot_splits: tuple[str, ...] = ("train",)
    license: str = ""
    notes: str = ""
    dataset: str = ""
    family: str = "native"
    non_commercial: bool = False
    harness: str = ""
    carve: int = 0
    max_shots: int | None = None
    paraphrases: tuple[str, ...] = ()
    heldout_description: str | None = None
    headline: str = "acc_norm"
    reader: Any = None

    def __post_init__(self) -> None:
        self.dataset = self.dataset or self.name

    @property
    def splits(self) -> list[str]:
        names = set(self.files) | set(self.hub.splits if self.hub else ())
        if self.carve and "train" in self.files:
            names |= {"val", "test"}
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(names, key=lambda s: (order.get(s, 3), s))

    def read(self, path: Path) -> list[Row]:
        """The raw rows of a local file, each with its ``file:line`` (JSON array or JSONL by default; tasks
        with other formats -- TSV, CSV, line-aligned files -- set ``reader``)."""
        return self.reader(path) if self.reader is not None else read_rows(path)

    def grading(self) -> str:
        """How an item of this task is graded, in words (the suite's table)."""
        free = {
            "text": "generation, exact match",
            "tool": "generation, GPT4Tools success rates",
            "number": "generation, the final number",
        }
        if self.answer_kind in free:
            return free[self.answer_kind]
        harness = f"= lm-eval `{self.harness}`" if self.harness else "loragen's formulation"
        return f"option log-likelihood, acc / acc_norm, headline {self.headline} ({harness})"

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        """Turn one raw row (and its line of a ``*-labels.lst`` file, if any) into an ``Item``.
        Raise ``Malformed`` for a row that cannot be used."""
        raise NotImplementedError(f"{type(self).__name__} does not implement parse_row")

    def parse_hub_row(self, row: dict[str, Any]) -> Item:
        return self.parse_row(row, None)

    def formulate(self, item: Item, formulation: str) -> Item:
        """The item as it is asked: ``cloze`` (option scoring, the harness's formulation: the question
        alone, each option text its continuation) or ``choices`` (the options listed in the input,
        for generation scoring). Items without a parsed question are the same in both."""
        if formulation not in FORMULATIONS:
            raise ValueError(f"unknown formulation {formulation!r}: choose one of {FORMULATIONS}")
        if formulation == "choices" or item.question is None or item.options is None:
            return item
        return dataclasses.replace(item, input=self.cloze.format(question=item.question))

    def format_shot(self, item: Item) -> str:
        """A few-shot example in the system prompt, in the formulation of the items it precedes."""
        context = item.contexts[item.label] if item.contexts and item.label is not None else item.input
        return f"{context} {item.output}"

    def system_prompt(self, shots: Sequence[Item], description: str | None = None) -> str:
        """``description`` (default: the task's own) followed by the few-shot examples."""
        text = self.description if description is None else description
        return "\n\n".join(part for part in [text, *(self.format_shot(s) for s in shots)] if part)

    def to_record(self, item: Item, system: str, split: str, where: str) -> Record:
        meta = {"answer": item.answer, "split": split, "source": where, "answer_kind": self.answer_kind, **item.meta}
        return Record(
            item.system if item.system is not None else system,
            item.input,
            item.output,
            self.name,
            item.options,
            item.label,
            meta,
            contexts=item.contexts,
        )

    def extract(self, text: str, record: Record) -> str | None:
        """The answer a generated ``text`` gives, in the form of ``record.meta['answer']``; None if unparseable."""
        from loragen.eval.extraction import extract_answer

        if self.answer_kind in ("text", "tool"):
            return text.strip() or None
        return extract_answer(self.answer_kind, text, options=record.options, prefix=self.answer_prefix)

    def is_correct(self, text: str, record: Record) -> bool | None:
        """Generation scoring: True/False, or None when the generation is unparseable."""
        from loragen.eval.extraction import answers_match

        predicted = self.extract(text, record)
        if predicted is None:
            return None
        if self.answer_kind == "tool":
            from loragen.eval.tool_use import score_tool_use

            return score_tool_use(record.output, text).success
        reference = record.output if self.answer_kind in ("option_text", "text") else record.meta.get("answer")
        kind = self.answer_kind if self.answer_kind != "text" else "option_text"
        return answers_match(kind, predicted, reference)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.description}", f"  splits: {', '.join(self.splits)}"]
        lines += [f"  {split}: {path}" for split, path in self.files.items()]
        if self.hub:
            lines.append(f"  hub: {self.hub.path}" + (f" ({self.hub.name})" if self.hub.name else ""))
        if self.shot_splits:
            lines.append(f"  few-shot examples from: {' or '.join(self.shot_splits)}")
        for extra in (self.license, self.notes):
            if extra:
                lines.append(f"  {extra}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers for families


def normalize_space(text: str) -> str:
    return " ".join(str(text).split())


def get_text(row: dict[str, Any], key: str) -> str:
    """A required string field exactly as written (raw benchmark files: lm-evaluation-harness reads their
    text unchanged, so loragen asks the same question); ``Malformed`` if missing, not text or blank."""
    get_str(row, key)
    return row[key]


def get_str(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    """A required string field, whitespace-normalised; ``Malformed`` if missing, not text or empty."""
    if not isinstance(row, dict):
        raise Malformed(f"a record must be a JSON object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        raise Malformed(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise Malformed(f"field {key!r} must be a string, got {type(value).__name__}")
    value = normalize_space(value)
    if not value and not allow_empty:
        raise Malformed(f"field {key!r} is empty")
    return value


def parse_index(raw: Any, n_options: int, base: int, what: str = "label") -> int:
    """A label given as a number (``base`` 0 or 1, int or digit string) -> 0-based index in range."""
    if isinstance(raw, bool) or raw is None:
        raise Malformed(f"missing or invalid {what} {raw!r}")
    text = str(raw).strip()
    if not re.fullmatch(r"-?\d+", text):
        raise Malformed(f"{what} {raw!r} is not a number")
    index = int(text) - base
    if not 0 <= index < n_options:
        raise Malformed(f"{what} {raw!r} is outside the {n_options} options")
    return index


def format_choice_input(question: str, options: Sequence[str]) -> str:
    """The choices formulation (generation scoring): ``Question: ...\\nChoices:\\n- ...\\nAnswer:``."""
    choices = "\n".join(f"- {option}" for option in options)
    return f"Question: {question}\nChoices:\n{choices}\nAnswer:"


def choice_item(
    question: str, options: Sequence[str], label: int, prefix: str, *, normalize: bool = True, **meta: Any
) -> Item:
    """A multiple-choice ``Item`` (checks: a question, >= 2 non-empty options, label in range, the correct
    option's text not repeated among the others). ``normalize=False`` keeps texts a task has already
    cleaned exactly as the harness does (HellaSwag)."""
    if normalize:
        options, question = tuple(normalize_space(o) for o in options), normalize_space(question)
    options = tuple(options)
    if not question:
        raise Malformed("empty question")
    if len(options) < 2 or not all(options):
        raise Malformed("a multiple-choice record needs at least two non-empty options")
    if not 0 <= label < len(options):
        raise Malformed(f"label {label} is outside the {len(options)} options")
    plain = [normalize_space(o) for o in options]  # options that differ only in whitespace are the same answer
    if plain.count(plain[label]) > 1:  # duplicated distractors are harmless; a duplicated answer is not
        raise Malformed(
            "the correct option's text also appears as another option (option scoring cannot tell them apart)"
        )
    return Item(
        format_choice_input(question, options),
        options[label],
        options,
        label,
        f"{prefix}{label + 1}",
        meta=dict(meta),
        question=question,
    )


def inline_or_file_label(row: dict[str, Any], key: str, file_label: str | None) -> Any:
    """The label from the row, or from the labels file; both present and different, or neither, is malformed."""
    inline = row.get(key) if isinstance(row, dict) else None
    if inline not in (None, "") and file_label is not None and str(inline).strip() != file_label.strip():
        raise Malformed(f"label {inline!r} in the record disagrees with {file_label!r} in the labels file")
    found = inline if inline not in (None, "") else file_label
    if found is None:
        article = "an" if key[:1] in "aeiou" else "a"
        raise Malformed(f"no {key} (neither {article} {key!r} field nor a line in the labels file)")
    return found

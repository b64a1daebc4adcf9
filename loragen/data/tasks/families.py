"""Task families: tasks over a dataset's items whose correct output depends on the instruction.

A family task (``DATASET.FAMILY``) reads and parses exactly the items of its dataset's native task and
then asks them differently; only its system prompt says how. On the same item the families' correct
outputs differ (the test suite checks it), so a generator that ignores its prompt cannot serve them all.

Multiple-choice datasets (every option list; not WinoGrande, whose partial scoring has no option list):

- ``incorrect``: answer with a wrong option. Scored over two options -- the correct one and one seeded
  distractor, in seeded order -- whose label is the distractor; the input is the native one.
- ``letter``: the options listed as ``A. ...`` after the question; the letter of the correct one is
  scored (lm-evaluation-harness's ``commonsense_qa`` form).
- ``judge``: a proposed answer is shown after the question (the correct one or a seeded distractor,
  half and half); ``yes`` / ``no`` scored.

Classification datasets (and BoolQ): the input is the item's content without the answer cue (``plain``):

- ``renamed``: the classes are answered by letters, assigned to them by a seeded permutation per dataset
  and stated only in the instruction ("answer B if the sentences agree, A if not");
- ``swapped``: the dataset's own label words, each meaning another class (the next one, cyclically; an
  ordinal scale is reversed).

Word problems (GSM8K, math): ``number``, the final number alone instead of the worked solution.

Every family is graded by option log-likelihood (``acc`` / ``acc_norm``) or, for ``number``, by generation
and the final number; none is an lm-evaluation-harness task except ``commonsenseqa.letter``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from loragen.data.jsonrows import Row
from loragen.data.tasks.base import Item, Malformed, TaskSpec, format_choice_input, normalize_space

CHOICE_FAMILIES = ("incorrect", "letter", "judge")
LABEL_FAMILIES = ("renamed", "swapped")
NUMBER_FAMILIES = ("number",)
LETTERS = "ABCDEFGHIJ"
_CUE = re.compile(r"\n(?:Answer|A):\Z")


def kind_of(spec: TaskSpec) -> str | None:
    """Which families a native task has: ``choice``, ``label``, ``number`` or None."""
    from loragen.data.tasks.boolq import BoolQTask
    from loragen.data.tasks.classify import LabelTask
    from loragen.data.tasks.gsm8k import Gsm8kTask
    from loragen.data.tasks.winogrande import WinograndeTask

    if isinstance(spec, LabelTask | BoolQTask):
        return "label"
    if isinstance(spec, Gsm8kTask):
        return "number"
    if isinstance(spec, WinograndeTask) or spec.answer_kind not in ("choice_label", "option_text"):
        return None
    return "choice"


def families_of(kind: str | None) -> tuple[str, ...]:
    return {"choice": CHOICE_FAMILIES, "label": LABEL_FAMILIES, "number": NUMBER_FAMILIES}.get(kind or "", ())


def item_rng(family: str, item: Item) -> random.Random:
    """A generator seeded by the family and the item's content: the same item is asked the same way in
    every run, split and process."""
    key = "\x1f".join([family, item.question or item.input, *(item.options or ())])
    return random.Random(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest())


def class_names(spec: TaskSpec, words: tuple[str, ...], family: str) -> tuple[str, ...]:
    """The answer of each class (in class order) in a label family: letters for ``renamed`` (a seeded
    permutation per dataset), the label words moved by one class (or reversed, ordinal) for ``swapped``."""
    n = len(words)
    if family == "renamed":
        letters = list(LETTERS[:n])
        random.Random(f"loragen-renamed|{spec.dataset}").shuffle(letters)
        if letters == sorted(letters) and n > 1:  # never the identity: class order must not give it away
            letters = letters[1:] + letters[:1]
        return tuple(letters)
    if family == "swapped":
        if getattr(spec, "ordinal", False):
            return tuple(reversed(words))
        return tuple(words[(i + 1) % n] for i in range(n))
    return words


def _stem(base: TaskSpec, item: Item) -> str:
    """The native question without its answer cue (``Question: q`` of ``Question: q\\nAnswer:``)."""
    return _CUE.sub("", base.cloze.format(question=item.question)) if item.question else item.input


def _distractors(native: Item) -> list[int]:
    assert native.options is not None and native.label is not None  # checked by ``FamilyTask.formulate``
    correct = normalize_space(native.options[native.label])
    return [i for i, o in enumerate(native.options) if i != native.label and normalize_space(o) != correct]


def _incorrect(spec: FamilyTask, item: Item, native: Item, formulation: str) -> Item:
    assert native.options is not None and native.label is not None  # checked by ``FamilyTask.formulate``
    rng = item_rng(spec.family, item)
    wrong = rng.choice(_distractors(native))
    pair = [native.label, wrong]
    rng.shuffle(pair)
    options = tuple(native.options[i] for i in pair)
    label = pair.index(wrong)
    question = cast(str, item.question)  # choice items keep their question (``choice_item``)
    text = native.input if formulation == "cloze" else format_choice_input(question, options)
    return dataclasses.replace(
        native, input=text, options=options, label=label, output=options[label], answer=options[label], contexts=None
    )


def _letter(spec: FamilyTask, item: Item, native: Item, formulation: str) -> Item:
    assert native.options is not None and native.label is not None  # checked by ``FamilyTask.formulate``
    letters = tuple(LETTERS[: len(native.options)])
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, native.options))
    return dataclasses.replace(
        native,
        input=f"{_stem(spec._base_task, item)}\n{listed}\nAnswer:",
        options=letters,
        output=letters[native.label],
        answer=letters[native.label],
        contexts=None,
    )


def _judge(spec: FamilyTask, item: Item, native: Item, formulation: str) -> Item:
    assert native.options is not None and native.label is not None  # checked by ``FamilyTask.formulate``
    rng = item_rng(spec.family, item)
    shown_correct = rng.random() < 0.5
    shown = native.label if shown_correct else rng.choice(_distractors(native))
    options, label = ("no", "yes"), int(shown_correct)
    text = f"{_stem(spec._base_task, item)}\nProposed answer: {native.options[shown]}\nAnswer:"
    return dataclasses.replace(
        native, input=text, options=options, label=label, output=options[label], answer=options[label], contexts=None
    )


def _relabel(spec: FamilyTask, item: Item, native: Item, formulation: str) -> Item:
    assert native.options is not None and native.label is not None  # checked by ``FamilyTask.formulate``
    names = class_names(spec._base_task, tuple(native.options), spec.family)
    if spec.family == "swapped":  # the same words, each standing for another class: the gold class's new word
        options, label = tuple(native.options), native.options.index(names[native.label])
    else:
        options, label = names, native.label
    return dataclasses.replace(
        native,
        input=item.plain or native.input,
        options=options,
        label=label,
        output=options[label],
        answer=options[label],
        contexts=None,
    )


def _number(spec: FamilyTask, item: Item, native: Item, formulation: str) -> Item:
    return dataclasses.replace(native, output=cast(str, native.answer))  # word problems carry their final number


TRANSFORMS = {
    "incorrect": _incorrect,
    "letter": _letter,
    "judge": _judge,
    "renamed": _relabel,
    "swapped": _relabel,
    "number": _number,
}


@dataclass
class FamilyTask(TaskSpec):
    """``base``'s items, asked as ``family`` says (see the module docstring)."""

    base: TaskSpec | None = None

    @property
    def _base_task(self) -> TaskSpec:
        """``base``: always given (``family_task``); its None default only keeps the dataclass's field order."""
        assert self.base is not None
        return self.base

    def read(self, path: Path) -> list[Row]:
        return self._base_task.read(path)

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        return self._base_task.parse_row(row, label)

    def parse_hub_row(self, row: dict[str, Any]) -> Item:
        return self._base_task.parse_hub_row(row)

    def formulate(self, item: Item, formulation: str) -> Item:
        # label families ask plain content and name the classes in the instruction, so they use the cloze
        # classes in both formulations (BoolQ's generation form answers true/false in another class order)
        native = self._base_task.formulate(item, "cloze" if self.family in LABEL_FAMILIES else formulation)
        if self.family != "number" and (native.options is None or native.label is None):
            raise Malformed(f"task {self.name}: the item has no options to ask as the {self.family} family")
        if self.family in ("incorrect", "judge") and not _distractors(native):
            raise Malformed(f"task {self.name}: the item has no wrong option")
        return TRANSFORMS[self.family](self, item, native, formulation)


def family_task(base: TaskSpec, family: str, description: str) -> FamilyTask:
    """The ``family`` task over ``base``'s items (sources, licence and dataset are the base's)."""
    if family not in TRANSFORMS:
        raise ValueError(f"unknown task family {family!r}: choose one of {', '.join(TRANSFORMS)}")
    answer_kind = "number" if family == "number" else "option_text"
    return FamilyTask(
        name=f"{base.name}.{family}",
        description=description,
        files=dict(base.files),
        hub=base.hub,
        answer_kind=answer_kind,
        answer_prefix=base.answer_prefix,
        cloze=base.cloze,
        shot_splits=base.shot_splits,
        license=base.license,
        notes=f"The {family} family over {base.name}'s items.",
        dataset=base.dataset,
        headline=base.headline if family == "incorrect" else "acc",  # letters, yes/no, label words: acc
        family=family,
        non_commercial=base.non_commercial,
        harness="commonsense_qa" if (base.name, family) == ("commonsenseqa", "letter") else "",
        carve=base.carve,
        max_shots=base.max_shots,
        base=base,
    )

"""Task descriptions as data: the paraphrases of every suite task and the held-out one.

``descriptions.yaml`` (beside this module) holds a small grammar -- per dataset a few intros (and, for
classification, what each class means), per family a few frames -- whose combinations are the
paraphrases; ``t2l/`` holds the Text-to-LoRA descriptions of eight benchmarks (Apache-2.0, attributed in
``t2l/README.md``). ``Descriptions.of(dataset, family, answers)`` gives a task's training paraphrases and its
held-out paraphrase; the registry attaches them to each task (``TaskSpec.paraphrases`` /
``heldout_description``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from loragen import LoRAGenError

HERE = Path(__file__).resolve().parent
GRAMMAR = HERE / "descriptions.yaml"
T2L = HERE / "t2l"


@dataclass(frozen=True)
class Paraphrases:
    train: tuple[str, ...]
    heldout: str


def mapping(answers: tuple[str, ...], meanings: list[str]) -> str:
    """ "'True' if the hypothesis follows, 'False' if it does not" (the last pair joined by "and")."""
    parts = [f"'{answer}' if {meaning}" for answer, meaning in zip(answers, meanings)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@cache
def grammar() -> dict:
    data = yaml.safe_load(GRAMMAR.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "frames" not in data or "datasets" not in data:
        raise LoRAGenError(f"{GRAMMAR} must hold 'frames' and 'datasets' (reinstall loragen)")
    return data


@cache
def t2l_descriptions(dataset: str) -> tuple[str, ...]:
    """The Text-to-LoRA paraphrases of ``dataset`` (none for datasets it does not cover)."""
    path = T2L / f"{dataset}.yaml"
    if not path.is_file():
        return ()
    found = yaml.safe_load(path.read_text(encoding="utf-8")).get("descriptions") or []
    return tuple(" ".join(str(d).split()) for d in found if str(d).strip())


def paraphrases(dataset: str, kind: str | None, family: str, answers: tuple[str, ...] = ()) -> Paraphrases | None:
    """The grammar's paraphrases of ``dataset`` asked as ``family`` (of kind ``choice``, ``label`` or
    ``number``); ``answers``: each class's answer in the family (label families). None: not in the grammar."""
    data = grammar()
    entry = data["datasets"].get(dataset)
    frames = data["frames"].get(kind or "", {}).get(family)
    if entry is None or frames is None:
        t2l = t2l_descriptions(dataset) if family == "native" else ()
        return Paraphrases(t2l[:-1], t2l[-1]) if len(t2l) > 1 else None
    meanings = entry.get("classes") or []
    if kind == "label" and len(meanings) != len(answers):
        raise LoRAGenError(
            f"{GRAMMAR}: dataset {dataset!r} lists {len(meanings)} class meanings for {len(answers)} classes"
        )
    slots = {"mapping": mapping(answers, meanings)} if kind == "label" else {}
    train = tuple(frame.format(intro=intro, **slots) for intro in entry["intro"] for frame in frames["train"])
    heldout = frames["heldout"].format(intro=entry["heldout"], **slots)
    if family == "native":  # the benchmark's Text-to-LoRA paraphrases too, the last one held out with the rest
        train += t2l_descriptions(dataset)[:-1]
    return Paraphrases(train, heldout)

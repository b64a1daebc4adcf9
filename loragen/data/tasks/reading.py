"""Multiple-choice datasets of the many-task suite: CommonsenseQA, DREAM and Cosmos QA.

Option scoring asks the question in the cloze form of ARC (``Question: ...\\nAnswer:``, each option text
the continuation); DREAM and Cosmos QA put their dialogue / passage first
(``PASSAGE\\nQuestion: ...\\nAnswer:``). lm-evaluation-harness has
``commonsense_qa`` in the lettered form (the choices listed as ``A. ...``, the letters scored): that
formulation is the ``commonsenseqa.letter`` family. DREAM and Cosmos QA are not in the harness.
Local files are read into the schema of each dataset's hub copy, so one parser reads both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from loragen.data.jsonrows import Malformed, Row, read_rows
from loragen.data.tasks.base import HubSource, Item, TaskSpec, choice_item, get_str, parse_index
from loragen.data.tasks.tabular import read_table


def _csqa(row: dict[str, Any]) -> Item:
    """Local rows nest the question (``question: {stem, choices: [{label, text}]}``); hub rows are flat
    (``question``, ``choices: {label: [...], text: [...]}``)."""
    question, choices = row.get("question"), row.get("choices")
    if isinstance(question, dict):
        choices = question.get("choices")
        question = question.get("stem")
        if isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
            choices = {"label": [c.get("label") for c in choices], "text": [c.get("text") for c in choices]}
    if not isinstance(question, str) or not isinstance(choices, dict) or not isinstance(choices.get("text"), list):
        raise Malformed("expected a question with choices {label, text}")
    keys = [str(k).strip() for k in choices.get("label") or []]
    key = str(row.get("answerKey", "")).strip()
    if key not in keys:
        raise Malformed(f"answerKey {key!r} is not one of the option labels {keys}")
    texts = choices["text"]
    if not all(isinstance(t, str) for t in texts):
        raise Malformed("option texts must be strings")
    return choice_item(question, texts, keys.index(key), "answer", **({"id": row["id"]} if row.get("id") else {}))


def _dream(row: dict[str, Any]) -> Item:
    dialogue, options = row.get("dialogue"), row.get("choice")
    if not isinstance(dialogue, list) or not dialogue or not all(isinstance(t, str) for t in dialogue):
        raise Malformed("field 'dialogue' must be a list of turns")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise Malformed("field 'choice' must be a list of strings")
    answer = get_str(row, "answer")
    plain = [" ".join(o.split()) for o in options]
    if answer not in plain:
        raise Malformed(f"answer {answer!r} is not one of the choices")
    question = "\n".join(" ".join(t.split()) for t in dialogue) + "\nQuestion: " + get_str(row, "question")
    return choice_item(
        question,
        plain,
        plain.index(answer),
        "answer",
        normalize=False,  # keep the turns' line breaks
        **({"id": row["id"]} if row.get("id") else {}),
    )


def _dream_file(path: Path) -> list[Row]:
    """DREAM's JSON (``[[turns], [{question, choice, answer}, ...], id]`` per dialogue) as hub rows, one
    per question (``file:line#qN``)."""
    rows: list[Row] = []
    for where, dialogue in read_rows(path):
        if isinstance(dialogue, Malformed):
            rows.append((where, dialogue))
            continue
        if not (isinstance(dialogue, list) and len(dialogue) == 3 and isinstance(dialogue[1], list)):
            rows.append((where, Malformed("a DREAM record is [turns, questions, id]")))
            continue
        turns, questions, ident = dialogue
        for j, q in enumerate(questions):
            if not isinstance(q, dict):
                rows.append((f"{where}#q{j}", Malformed("a question must be an object")))
                continue
            rows.append(
                (
                    f"{where}#q{j}",
                    {
                        "dialogue": turns,
                        "question": q.get("question"),
                        "choice": q.get("choice"),
                        "answer": q.get("answer"),
                        "id": f"{ident}#{j}",
                    },
                )
            )
    return rows


def _cosmos(row: dict[str, Any]) -> Item:
    options = [get_str(row, f"answer{i}") for i in range(4)]
    question = f"{get_str(row, 'context')}\nQuestion: {get_str(row, 'question')}"
    return choice_item(
        question,
        options,
        parse_index(row.get("label"), 4, base=0),
        "answer",
        normalize=False,
        **({"id": row["id"]} if row.get("id") else {}),
    )


@dataclass
class ReadingTask(TaskSpec):
    """A multiple-choice dataset parsed by ``parse`` (rows in the hub's schema) and read by ``reader``."""

    parse: Any = None
    answer_kind: str = "option_text"

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if not isinstance(row, dict):
            raise Malformed(f"a record must be an object, got {type(row).__name__}")
        return self.parse(row)


# alike in shape to the task declarations of classify.py, boolq.py and hellaswag.py: each names its own dataset's
# files, hub source and licence; kept apart
COMMONSENSEQA = ReadingTask(
    name="commonsenseqa",
    parse=_csqa,
    description="Answer the commonsense question by choosing the correct option.",
    files={
        "train": "commonsenseqa/train_rand_split.jsonl",
        "val": "commonsenseqa/dev_rand_split.jsonl",
        "test": "commonsenseqa/dev_rand_split.jsonl",
    },
    hub=HubSource("tau/commonsense_qa", None, {"train": "train", "val": "validation", "test": "validation"}),
    license="License: MIT (HF card; no licence file with the copy).",
    notes="val and test are both the dev split (test labels are hidden). The lettered form of "
    "lm-evaluation-harness's commonsense_qa is the commonsenseqa.letter family.",
)
DREAM = ReadingTask(
    name="dream",
    parse=_dream,
    reader=_dream_file,
    max_shots=1,
    cloze="{question}\nAnswer:",
    description="Read the dialogue and answer the question about it by choosing the correct option.",
    files={"train": "dream/train.json", "val": "dream/dev.json", "test": "dream/dev.json"},
    hub=HubSource("dream", None, {"train": "train", "val": "validation", "test": "validation"}),
    license="License: NON-COMMERCIAL research use only (dream/license.txt).",
    non_commercial=True,
    notes="One item per question (a dialogue has one to several); dialogues are long: at most 1 shot. "
    "val and test are both the dev split. Not in lm-evaluation-harness: asked in ARC's cloze form.",
)
COSMOSQA = ReadingTask(
    name="cosmosqa",
    parse=_cosmos,
    reader=partial(read_table, delimiter=","),
    max_shots=1,
    carve=500,
    cloze="{question}\nAnswer:",
    description="Read the passage and answer the commonsense question about it by choosing the correct option.",
    files={"train": "cosmosqa/valid.csv"},
    hub=HubSource("allenai/cosmos_qa", None, {"train": "train", "val": "validation", "test": "validation"}),
    license="License: CC BY 4.0 (credit Huang et al. 2019).",
    notes="Only the labelled valid split is available locally: val/test are 500 items carved from it, train is "
    "the rest. Passages are long: at most 1 shot. Not in lm-evaluation-harness: asked in ARC's cloze form.",
)

TASKS = [COMMONSENSEQA, DREAM, COSMOSQA]

"""The generic record format every user can write, and its loader.

One record per JSONL line (or one item of a JSON array):

    {"system": "task instruction + few-shot examples", "input": "user input", "output": "answer",
     "task": "optional task name", "options": ["optional", "choices"], "label": 0}

``system`` goes to the cloud (once per distinct prompt); ``input`` + ``output`` go to the edge.
``options`` + ``label`` (both or neither) enable multiple-choice accuracy by option log-likelihood:
each option is scored as the continuation (after a space) of ``input``. Optional ``contexts`` (one
per option) give each option its own context instead, the options then being the continuations
(lm-evaluation-harness's partial scoring, e.g. WinoGrande); training then uses the gold context.
Records are used as written whatever the scoring mode: write the input your scoring needs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.data.jsonrows import Malformed, read_rows


@dataclass
class Record:
    system: str
    input: str
    output: str
    task: str = "default"
    options: tuple[str, ...] | None = None
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    contexts: tuple[str, ...] | None = None

    @property
    def train_context(self) -> str:
        """What the edge reads before the gold answer in training (the gold option's own context under
        partial scoring)."""
        return self.contexts[self.label] if self.contexts and self.label is not None else self.input


class RecordError(LoRAGenError):
    """A malformed record (reported with file and line)."""


def parse_record(obj: Any, where: str, default_task: str = "default") -> Record:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object with system/input/output, got {type(obj).__name__}")
    for key in ("system", "output"):
        if key not in obj:
            raise RecordError(f"{where}: record has no {key!r} field; every record needs system, input and output")
    values = {k: obj.get(k, "") for k in ("system", "input", "output")}
    for key, value in values.items():
        if not isinstance(value, str):
            raise RecordError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    options, label = obj.get("options"), obj.get("label")
    if (options is None) != (label is None):
        raise RecordError(f"{where}: 'options' and 'label' go together; give both or neither")
    if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise RecordError(f"{where}: 'options' must be a list of at least two strings")
        if not isinstance(label, int) or not 0 <= label < len(options):
            raise RecordError(f"{where}: label {label!r} is outside the {len(options)} options")
        options = tuple(options)
    contexts = obj.get("contexts")
    if contexts is not None:
        if (
            options is None
            or not isinstance(contexts, list)
            or len(contexts) != len(options)
            or not all(isinstance(c, str) and c for c in contexts)
        ):
            raise RecordError(f"{where}: 'contexts' must be a list of non-empty strings, one per option")
        contexts = tuple(contexts)
    known = ("system", "input", "output", "task", "options", "label", "contexts")
    extra = {k: v for k, v in obj.items() if k not in known}
    return Record(
        values["system"],
        values["input"],
        values["output"],
        str(obj.get("task") or default_task),
        options,
        label,
        extra,
        contexts=contexts,
    )


def load_records(path: str | Path, *, strict: bool = False, task: str | None = None) -> list[Record]:
    """Load a JSONL or JSON-array file of records.

    Malformed records are reported with file and line and skipped (with a count), or stop the
    run when ``strict``. A missing or empty file is an error either way.
    """
    path = Path(path)
    if not path.is_file():
        raise LoRAGenError(f"data file {path} does not exist: check the path in your config (data.*_files)")
    default_task = task or path.name.split(".")[0]
    items = [
        (where, RecordError(f"{where}: {obj}") if isinstance(obj, Malformed) else obj) for where, obj in read_rows(path)
    ]
    records: list[Record] = []
    problems: list[str] = []
    for where, obj in items:
        try:
            if isinstance(obj, RecordError):
                raise obj
            records.append(parse_record(obj, where, default_task))
        except RecordError as err:
            problems.append(str(err))
    if problems:
        if strict:
            raise RecordError(problems[0] + f" ({len(problems)} malformed record(s); fix them or drop data.strict)")
        shown = "; ".join(problems[:3])
        warnings.warn(f"skipped {len(problems)} malformed record(s) in {path}: {shown}", stacklevel=2)
    if not records:
        raise LoRAGenError(f"data file {path} has no usable records: each line needs system, input and output")
    return records

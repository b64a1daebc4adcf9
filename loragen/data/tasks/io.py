"""Reading raw task files: JSON arrays and JSONL (with file:line for every row), ``*-labels.lst``
files, and hub datasets. Rows that cannot be read come back as ``Malformed`` in place of the row,
so the loader reports them with the rest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.data.tasks.base import HubSource, Malformed

Row = tuple[str, Any]  # (where, parsed JSON object or Malformed)

_SURROGATE = re.compile(r"[\udc80-\udcff]")


def _has_bad_bytes(obj: Any) -> bool:
    if isinstance(obj, str):
        return bool(_SURROGATE.search(obj))
    if isinstance(obj, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_bad_bytes(v) for v in obj)
    return False


def read_rows(path: Path) -> list[Row]:
    """Rows of a JSON-array or JSONL file, each with its ``path:line``."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="surrogateescape")  # bad bytes survive as markers, reported per row
    if text.lstrip().startswith("["):
        return _json_array(path, text)
    rows: list[Row] = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rows.append((where, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError:
            rows.append((where, Malformed("line is not valid UTF-8")))
        except json.JSONDecodeError as err:
            rows.append((where, Malformed(f"invalid JSON ({err.msg})")))
    return rows


def _json_array(path: Path, text: str) -> list[Row]:
    decoder = json.JSONDecoder()
    rows: list[Row] = []
    pos = text.index("[") + 1
    line, counted = 1, 0

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    while True:
        pos = skip(pos)
        if pos < len(text) and text[pos] == "]":
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise LoRAGenError(f"{path}:{err.lineno}: invalid JSON ({err.msg}): the file cannot be read past "
                               "this point; fix it") from err
        where = f"{path}:{line}"
        rows.append((where, Malformed("record is not valid UTF-8") if _has_bad_bytes(obj) else obj))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            break
        else:
            raise LoRAGenError(f"{path}: invalid JSON array after the record at line {line}: fix the file")
    return rows


def labels_file(path: Path) -> Path | None:
    """The official ``NAME-labels.lst`` next to ``NAME.jsonl`` (SIQA, PIQA, WinoGrande), if present."""
    name = path.name
    for suffix in (".jsonl", ".json"):
        if name.endswith(suffix):
            candidate = path.with_name(name[: -len(suffix)] + "-labels.lst")
            return candidate if candidate.is_file() else None
    return None


def read_labels(path: Path, expected: int) -> list[tuple[str, str | Malformed]]:
    """One label per non-empty line; the count must equal the number of data rows."""
    labels: list[tuple[str, str | Malformed]] = []
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            labels.append((where, line.decode("utf-8").strip()))
        except UnicodeDecodeError:
            labels.append((where, Malformed(f"label line {where} is not valid UTF-8")))
    if len(labels) != expected:
        raise LoRAGenError(f"{path} has {len(labels)} labels for {expected} records in its data file: the two "
                           "files must have one line per record, in the same order")
    return labels


def hub_rows(hub: HubSource, split: str) -> list[Row]:
    """Rows of a hub dataset split (needs a reachable hub or a populated ``datasets`` cache)."""
    import datasets

    hub_split = hub.splits[split]
    try:
        dataset = datasets.load_dataset(hub.path, hub.name, split=hub_split)
    except Exception as err:  # noqa: BLE001 - any hub/cache failure is a user-fixable source problem
        raise LoRAGenError(f"could not load {hub.path} ({hub.name or 'default'}, split {hub_split}) from the hub: "
                           f"{err}. Without a hub, set data.data_dir to local files") from err
    return [(f"{hub.path}[{hub_split}]#{i}", dict(row)) for i, row in enumerate(dataset)]

"""Reading JSON-array and JSONL files row by row, each row with its ``file:line``: one reader for the
record files (``loragen.data.records``) and the raw benchmark files (``loragen.data.tasks``). A row
that cannot be read comes back as ``Malformed`` in its place, so callers report it with the rest;
a JSON array broken past repair is an error."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loragen import LoRAGenError


class Malformed(Exception):
    """A raw row that cannot be used; the reader or loader adds the file and line."""


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
            raise LoRAGenError(
                f"{path}:{err.lineno}: invalid JSON ({err.msg}): the file cannot be read past this point; fix it"
            ) from err
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

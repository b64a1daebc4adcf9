"""Readers for the non-JSON formats of the suite's datasets, each row a dict with its ``file:line``.

They turn a local file into rows in the schema of the dataset's public hub copy wherever one exists, so a
task parses local and hub rows with one ``parse_row``:

- ``read_table``: TSV / CSV with or without a header (GLUE TSVs, AG News and Cosmos QA CSVs, MC-TACO);
- ``read_labelled_lines``: one ``LABEL text`` line per item (SST-2, TREC);
- ``read_aligned``: several line-aligned files read side by side (e-SNLI, WiC data + gold).

A line that cannot be read (bad UTF-8, wrong column count) comes back as ``Malformed`` in its place.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from loragen import LoRAGenError
from loragen.data.jsonrows import Malformed, Row


def _lines(path: Path) -> list[tuple[int, str | Malformed]]:
    """(line number, text) of every non-empty line; a leading UTF-8 BOM is dropped (GLUE files carry one)."""
    out: list[tuple[int, str | Malformed]] = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            out.append((lineno, raw.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((lineno, Malformed("line is not valid UTF-8")))
    return out


def read_table(path: Path, *, delimiter: str, columns: Sequence[str] | None = None, quoted: bool = True) -> list[Row]:
    """Rows of a delimited file as dicts: keyed by the header line, or by ``columns`` when the file has
    no header. ``quoted=False`` reads every character literally (GLUE's TSVs hold unbalanced quotes)."""
    numbered: list[tuple[int, list[str] | Malformed]]
    if quoted:  # CSV fields may span lines: parse the whole text, then find each record's first line
        text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        records = []
        for cells in reader:
            records.append((reader.line_num, cells))
        # line_num is the *last* physical line of a record; the first is one after the previous record's last
        numbered, previous = [], 0
        for last, cells in records:
            numbered.append((previous + 1, cells))
            previous = last
    else:
        numbered = [(n, line if isinstance(line, Malformed) else line.split(delimiter)) for n, line in _lines(path)]
    numbered = [(n, f) for n, f in numbered if isinstance(f, Malformed) or any(x.strip() for x in f)]
    if columns is None:
        if not numbered or isinstance(numbered[0][1], Malformed):
            raise LoRAGenError(f"{path}: no readable header line: the file should start with its column names")
        columns, numbered = [c.strip() for c in numbered[0][1]], numbered[1:]
    rows: list[Row] = []
    for lineno, fields in numbered:
        where = f"{path}:{lineno}"
        if isinstance(fields, Malformed):
            rows.append((where, fields))
        elif any("\udc80" <= ch <= "\udcff" for value in fields for ch in value):
            rows.append((where, Malformed("line is not valid UTF-8")))
        elif len(fields) != len(columns):
            rows.append((where, Malformed(f"{len(fields)} fields, expected {len(columns)} ({', '.join(columns)})")))
        else:
            rows.append((where, dict(zip(columns, fields))))
    return rows


def read_labelled_lines(path: Path, split: Callable[[str], tuple[str, str]], keys: tuple[str, str]) -> list[Row]:
    """One item per line, ``split(line) -> (label, text)``, as ``{keys[0]: label, keys[1]: text}``."""
    rows: list[Row] = []
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        if isinstance(line, Malformed):
            rows.append((where, line))
            continue
        try:
            label, text = split(line)
        except ValueError:
            rows.append((where, Malformed("line is not 'LABEL text'")))
            continue
        rows.append((where, {keys[0]: label, keys[1]: text}))
    return rows


def read_aligned(files: dict[str, Path]) -> list[Row]:
    """Line-aligned files read side by side: row i is ``{key: line i of files[key]}`` (every line kept,
    empty ones too, so the alignment holds). Files of different lengths are an error."""
    columns = {}
    for key, path in files.items():
        if not path.is_file():
            raise LoRAGenError(
                f"{path} does not exist: it is read line by line beside "
                f"{', '.join(str(p) for p in files.values() if p != path)}"
            )
        text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        columns[key] = [line.rstrip("\r") for line in lines]
    lengths = {key: len(lines) for key, lines in columns.items()}
    if len(set(lengths.values())) > 1:
        raise LoRAGenError(f"line-aligned files differ in length ({lengths}): they must have one line per item")
    first = next(iter(files.values()))
    rows: list[Row] = []
    for i in range(next(iter(lengths.values()), 0)):
        values = {key: lines[i] for key, lines in columns.items()}
        where = f"{first}:{i + 1}"
        if any("\udc80" <= ch <= "\udcff" for value in values.values() for ch in value):
            rows.append((where, Malformed("line is not valid UTF-8")))
        else:
            rows.append((where, values))
    return rows

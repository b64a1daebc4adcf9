"""Reading raw task files: JSON arrays and JSONL (with file:line for every row), ``*-labels.lst``
files, and hub datasets. Rows that cannot be read come back as ``Malformed`` in place of the row,
so the loader reports them with the rest."""

from __future__ import annotations

from pathlib import Path

from loragen import LoRAGenError
from loragen.data.jsonrows import Malformed, Row, read_rows  # noqa: F401  (read_rows: the task loader's reader)
from loragen.data.tasks.base import HubSource


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
        raise LoRAGenError(
            f"{path} has {len(labels)} labels for {expected} records in its data file: the two "
            "files must have one line per record, in the same order"
        )
    return labels


def hub_rows(hub: HubSource, split: str) -> list[Row]:
    """Rows of a hub dataset split (needs a reachable hub or a populated ``datasets`` cache)."""
    import datasets

    hub_split = hub.splits[split]
    try:
        dataset = datasets.load_dataset(hub.path, hub.name, split=hub_split)
    except Exception as err:  # noqa: BLE001 - any hub/cache failure is a user-fixable source problem
        raise LoRAGenError(
            f"could not load {hub.path} ({hub.name or 'default'}, split {hub_split}) from the hub: "
            f"{err}. Without a hub, set data.data_dir to local files"
        ) from err
    return [(f"{hub.path}[{hub_split}]#{i}", dict(row)) for i, row in enumerate(dataset)]

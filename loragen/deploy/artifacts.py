"""Files written by deployment: hashes, ``loragen_meta.json`` and atomic output directories.

An output directory is built in a temporary directory beside the target and moved into place only
when complete, so an interrupted or failed write leaves no output directory (and no partial one; a
hard-killed writer's temporary directory is removed by the next write to the same target). Of two
processes writing the same output at once, the first to finish keeps it and the other is told so.
``--overwrite`` replaces only an empty directory or a previous loragen output (one with a
``loragen_meta.json``), never an arbitrary directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.files import atomic_directory, sha256_file  # noqa: F401  (sha256_file is re-exported)

META_FILE = "loragen_meta.json"
META_FORMAT = 1
FORMATS = ("peft", "merged", "gates", "gguf", "gguf-lora")  # what an output directory can hold
GGUF_FORMATS = ("gguf", "gguf-lora")  # for llama.cpp (loragen.deploy.gguf_export)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dir_bytes(directory: Path, exclude: tuple[str, ...] = (META_FILE,)) -> int:
    """Bytes on disk of the files under ``directory`` (recursively), except ``exclude`` names."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.name not in exclude)


def check_output_dir(target: Path, overwrite: bool) -> None:
    """Refuse a target we must not replace; called before any work starts."""
    if not target.exists():
        return
    if not target.is_dir():
        raise LoRAGenError(f"output {target} exists and is not a directory: choose another --output")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise LoRAGenError(f"output directory {target} exists and is not empty: choose another or pass --overwrite")
    if not (target / META_FILE).is_file():
        raise LoRAGenError(
            f"output directory {target} is not a loragen output (no {META_FILE}): refusing to "
            "replace it even with --overwrite; choose another --output"
        )


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it becomes ``target`` (see
    ``loragen.files.atomic_directory``: a concurrent writer that finished first keeps its result)."""
    target = Path(target)
    check_output_dir(target, overwrite)
    with atomic_directory(target, replace=overwrite) as tmp:
        yield tmp


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a loragen JSON file, or the ``loragen_meta.json`` of an output directory."""
    path = Path(path)
    if path.is_dir():
        path = path / META_FILE
    if not path.is_file():
        raise LoRAGenError(f"{path} does not exist: give a gates file or an output directory of `loragen generate`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoRAGenError(f"{path} is not valid JSON ({err.__class__.__name__}): regenerate it") from err
    if not isinstance(data, dict):
        raise LoRAGenError(f"{path} is not a loragen gates/metadata file: regenerate it with `loragen generate`")
    return data

"""Small file helpers shared across loragen: atomic outputs and hashing.

Outputs (cache entries, adapters, results, predictions) are written beside their target and moved
into place only when complete, so an interrupted write never leaves something that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def normal_permissions(directory: Path) -> None:
    """``mkdtemp`` creates owner-only directories; give an output the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` (whose old
    contents are removed), on failure it is deleted and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        normal_permissions(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def load_checkpoint(path: str | Path) -> dict:
    """A loragen checkpoint's contents, read with torch's weights-only unpickler (tensors, numbers,
    strings, containers: nothing in the file can run code). A missing file, a file that is not a
    checkpoint (random bytes, a pickle with code in it) or one loragen did not write fails in one line."""
    import torch

    from loragen import LoRAGenError

    path = Path(path).expanduser()
    if not path.is_file():
        raise LoRAGenError(f"checkpoint {path} does not exist or is not a file: give a .ckpt written by `loragen fit`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or failed: not a checkpoint we trust
        raise LoRAGenError(f"{path} is not a loragen checkpoint ({err.__class__.__name__}; it was read weights-only, "
                           "so nothing in it ran): give a .ckpt written by `loragen fit`") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("loragen"), dict):
        raise LoRAGenError(f"{path} was not written by loragen (it has no loragen section): give a .ckpt written "
                           "by `loragen fit`")
    return checkpoint


RUN_LOCK = ".loragen-fit.lock"
_HELD: dict[str, Any] = {}  # run directories this process holds (a process may fit the same directory again)


def lock_run_directory(directory: str | os.PathLike[str]) -> Any:
    """Hold an exclusive lock on a run directory for the life of this process (``loragen fit``): a second
    fit pointed at the same directory fails in one line instead of interleaving checkpoints and logs.
    The kernel releases the lock when the process ends, however it ends (even SIGKILL), so a crashed run
    never blocks its own resume. Child processes of a multi-process strategy (``LOCAL_RANK`` > 0) share
    their launcher's run and take no lock."""
    import fcntl

    from loragen import LoRAGenError

    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    if key in _HELD:
        return _HELD[key]
    handle = open(directory / RUN_LOCK, "a+")  # noqa: SIM115  (held open: the lock lives as long as it)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise LoRAGenError(f"run directory {directory} is in use by another `loragen fit` ({holder}): wait for it "
                           "to finish or give another --trainer.default_root_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle
    return handle


def release_run_directory(handle: Any) -> None:
    """Give a run directory's lock back (the end of a fit)."""
    if handle is None:
        return
    for key, held in list(_HELD.items()):
        if held is handle:
            del _HELD[key]
    handle.close()


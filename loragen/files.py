"""Small file helpers shared across loragen: atomic outputs and hashing.

Outputs (cache entries, adapters, results, predictions) are written beside their target and moved
into place only when complete, so an interrupted write never leaves something that looks valid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loragen import LoRAGenError


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


class TargetTaken(LoRAGenError):
    """Another process wrote the target while this one was building it; theirs is kept."""


def _temp_prefix(name: str, kind: str) -> str:
    """Temporary names carry the writer's pid, so a later run can tell a hard-killed writer's leftovers
    (pid gone) from a live writer's work in progress."""
    return f".{name}.{kind}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(parent: Path, name: str) -> list[Path]:
    """Remove the temporary files/directories of ``name`` in ``parent`` left by writers that were
    killed (their pid is gone); returns what was removed."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)-")
    for path in parent.iterdir():
        match = pattern.match(path.name)
        if match and int(match.group(2)) != os.getpid() and not _pid_alive(int(match.group(2))):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it becomes ``target``.

    ``replace``: an existing ``target`` is replaced (kept until the swap, restored if the swap fails);
    otherwise the swap is a plain rename that fails if ``target`` became a non-empty directory in the
    meantime (another process won): ``TargetTaken``, and that process's result stays. On failure the
    temporary directory is deleted and ``target`` is left as it was; a hard-killed writer's leftovers
    are removed by the next writer of the same target (``remove_stale_temps``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name, "tmp"), dir=target.parent))
    old: Path | None = None
    try:
        yield tmp
        normal_permissions(tmp)
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name, "old"), dir=target.parent))
            os.replace(target, old / "d")
        try:
            os.rename(tmp, target)  # replaces an empty directory; fails on a non-empty one
        except OSError as err:
            if old is not None and not target.exists():
                os.replace(old / "d", target)
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TargetTaken(
                    f"{target} was written by another process while this one worked; that result "
                    "is kept: choose another output, or pass --overwrite to replace it"
                ) from None
            raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name, "tmp"), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same directory."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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
        raise LoRAGenError(
            f"run directory {directory} is in use by another `loragen fit` ({holder}): wait for it "
            "to finish or give another --trainer.default_root_dir"
        ) from None
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

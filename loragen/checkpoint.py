"""The loragen checkpoint format, in one place: what a checkpoint holds, how it is written, read, upgraded from an
older loragen and resolved from a ``--ckpt_path`` value.

A checkpoint is Lightning's (``state_dict``, ``hyper_parameters``, loops' state) with two loragen rules:

- ``state_dict`` keeps only the trained weights (``EdgeMethod.trained_state_names``): the frozen backbones are
  rebuilt from their sources and filled in on load (``strip_untrained`` / ``fill_untrained``);
- ``checkpoint["loragen"]`` holds the format number and the method's identity (``EdgeMethod.identity``: the
  method, the cloud/edge pair fingerprint, ``init_from``...), checked on load (``EdgeMethod.check_identity``).

Format 1 stored the model's arguments flat (``num_experts``, ``lr``...); format 2 stores the typed groups
(``pool``, ``optim``, ``specificity``; ``eval`` never). A format-1 checkpoint is upgraded into a cached copy the
first time it is used (``upgraded``). Every read is weights-only (``load_checkpoint``: nothing in the file runs).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loragen import LoRAGenError
from loragen.files import sha256_file
from loragen.models.config import GROUPS, STORED_GROUPS

if TYPE_CHECKING:
    from loragen.models.config import PoolConfig

CHECKPOINT_FORMAT = 2  # ``checkpoint["loragen"]["format"]``: 1 = flat model arguments, 2 = the typed groups
# arguments older loragen versions stored in checkpoints and this one does not (dropped on upgrade): retired
# ones, and ``init_from`` (a checkpoint's weights are its own: it never re-reads its starting point)
RETIRED_ARGS = ("length_normalize", "init_from")
_FLAT_NAMES = {"eval_path": ("eval", "path")}


def resolve_checkpoint(source: str | os.PathLike[str]) -> Path:
    """A ``--ckpt_path`` value as a checkpoint file of this loragen: a release becomes its cached
    loragen checkpoint; a checkpoint written before the typed config groups becomes an upgraded copy
    in the cache (its flat model arguments regrouped, evaluation settings dropped; weights untouched)."""
    from loragen.release import is_release, release_checkpoint

    if is_release(source):
        return release_checkpoint(source)
    path = Path(source).expanduser()
    return upgraded(path) if path.is_file() else path


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A loragen checkpoint's contents, read with torch's weights-only unpickler (tensors, numbers,
    strings, containers: nothing in the file can run code). A missing file, a file that is not a
    checkpoint (random bytes, a pickle with code in it) or one loragen did not write fails in one line.
    ``mmap``: tensors stay on disk until touched (a cheap look at the metadata of a large file)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise LoRAGenError(f"checkpoint {path} does not exist or is not a file: give a .ckpt written by `loragen fit`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # unpickling refused or failed: not a checkpoint we trust
        raise LoRAGenError(
            f"{path} is not a loragen checkpoint ({err.__class__.__name__}; it was read weights-only, "
            "so nothing in it ran): give a .ckpt written by `loragen fit`"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("loragen"), dict):
        raise LoRAGenError(
            f"{path} was not written by loragen (it has no loragen section): give a .ckpt written by `loragen fit`"
        )
    return checkpoint


def save_checkpoint(checkpoint: dict[str, Any], target: Path) -> None:
    """Write a checkpoint atomically (a failed write leaves no half-written file)."""
    import io

    import torch

    from loragen.files import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(target, buffer.getvalue())


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Model arguments stored by loragen before the typed groups (checkpoint format 1: flat ``num_experts``,
    ``lr``, ``scoring``, ...) in today's layout. Evaluation settings and retired arguments are dropped (a
    checkpoint never decides how it is evaluated)."""
    flat = {f.name: kind for kind, cls in GROUPS.items() for f in fields(cls)}
    flat.update({name: kind for name, (kind, _) in _FLAT_NAMES.items()})
    upgraded: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, value in hparams.items():
        if name in RETIRED_ARGS or name not in flat or name in GROUPS:
            if name not in RETIRED_ARGS:
                upgraded[name] = value
            continue
        kind = flat[name]
        groups.setdefault(kind, {})[_FLAT_NAMES.get(name, (kind, name))[1]] = value
    upgraded.update({kind: values for kind, values in groups.items() if kind in STORED_GROUPS})
    return upgraded


def upgraded(path: Path) -> Path:
    """``path`` itself, or for a checkpoint of an older loragen (format 1: flat model arguments) its upgraded
    copy, built once in the cache; the copy keeps the source's sha256, so deploy outputs and gates caches
    made from the source still match it."""
    from loragen.backbones import cache_root
    from loragen.files import sha256_file

    checkpoint = load_checkpoint(path, mmap=True)  # not a loragen checkpoint: fails here, in one line
    if checkpoint["loragen"].get("format", 1) >= CHECKPOINT_FORMAT:
        return path
    digest = sha256_file(path)
    target = cache_root() / "upgraded" / f"{path.stem}-{digest[:16]}.ckpt"
    if not target.is_file():
        checkpoint = load_checkpoint(path)  # in memory, not mapped: it is rewritten
        checkpoint["hyper_parameters"] = upgrade_hparams(checkpoint.get("hyper_parameters") or {})
        checkpoint["loragen"].update(format=CHECKPOINT_FORMAT, upgraded_from_sha256=digest)
        save_checkpoint(checkpoint, target)
    print(
        f"loragen: {path} was written by an older loragen (flat model arguments): using its upgraded copy {target}",
        file=sys.stderr,
        flush=True,
    )
    return target


# ----------------------------------------------------------------------------- the loragen section, on save and load


def strip_untrained(checkpoint: dict[str, Any], keep: set[str], identity: dict[str, Any]) -> None:
    """On save: only the trained weights (and Lightning's best-metric entries), and the loragen section."""
    checkpoint["state_dict"] = {
        k: v for k, v in checkpoint["state_dict"].items() if k in keep or k.startswith("best_val_acc")
    }
    checkpoint["loragen"] = {"format": CHECKPOINT_FORMAT, **identity}


def fill_untrained(checkpoint: dict[str, Any], expected: set[str], own: dict[str, Any]) -> None:
    """On load: every trained weight is there with this model's shape (else one line naming it), and the frozen
    backbones' entries are filled in from ``own`` (references, no copies) so loading reports none missing."""
    missing = sorted(expected - set(checkpoint["state_dict"]))
    if missing:
        raise LoRAGenError(
            f"checkpoint lacks trained weights {missing[:3]}: it is incomplete or was trained "
            "with other settings (experts, rank, targets)"
        )
    for name in sorted(expected):
        stored, mine = tuple(checkpoint["state_dict"][name].shape), tuple(own[name].shape)
        if stored != mine:
            raise LoRAGenError(
                f"checkpoint weight {name} has shape {stored}, this model's {mine}: it was "
                "trained with other settings (experts, rank, targets, virtual tokens)"
            )
    for name, tensor in own.items():
        checkpoint["state_dict"].setdefault(name, tensor.detach())


# ----------------------------------------------------------------------------- reading one for deployment


@dataclass
class CheckpointInfo:
    path: Path
    sha256: str
    fingerprint: dict[str, Any]
    hparams: dict[str, Any]  # LoRAGenModule.__init__ arguments as the checkpoint stores them
    pool: PoolConfig  # the expert pool group (its defaults filled in)
    data_hparams: dict[str, Any]
    pool_state: dict[str, Any]  # ExpertPool state dict (A.*, B.*)


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Hash and read a checkpoint (one-line errors for a missing file or a file loragen did not write)."""
    path = resolve_checkpoint(path)  # a released generator (bundled:NAME) becomes its cached checkpoint
    ckpt = load_checkpoint(path)
    if "fingerprint" not in ckpt["loragen"]:
        raise LoRAGenError(f"{path} has no loragen pair fingerprint: it was not written by loragen")
    method = ckpt["loragen"].get("method", "loragen")
    if method != "loragen":
        raise LoRAGenError(
            f"{path} is a {method} checkpoint: generate / apply / serve deploy LoRA-Gen generators "
            "(their gates); evaluate it with `loragen test`"
        )
    from loragen.models.config import group

    hparams = dict(ckpt.get("hyper_parameters", {}))
    prefix = "model.pool."
    pool_state = {k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    # an upgraded copy of an older checkpoint is known by its source's hash (what earlier outputs recorded)
    sha256 = ckpt["loragen"].get("upgraded_from_sha256") or sha256_file(path)
    return CheckpointInfo(
        path=path,
        sha256=sha256,
        fingerprint=dict(ckpt["loragen"]["fingerprint"]),
        hparams=hparams,
        pool=group("pool", hparams.get("pool")),
        data_hparams=dict(ckpt.get("datamodule_hyper_parameters", {})),
        pool_state=pool_state,
    )

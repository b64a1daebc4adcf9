"""Released generators: trained weights only, shipped in the package, addressable as ``bundled:NAME``.

A release directory holds

- ``generator.safetensors``: the trained weights (meta tokens, router, expert pool), float16 by
  default (half the size of the training checkpoint's float32, and no optimizer state);
- ``release.json``: the model's hyperparameters, the cloud/edge pair fingerprint, the sha256 of the
  weights file, the training steps and command, the data it was trained on -- each dataset with its
  tasks and licence, read from the checkpoint's training tasks -- and where the results card is.

``resolve_checkpoint("bundled:NAME")`` (or a release directory) gives a loragen checkpoint file built
from it once in ``$LORAGEN_CACHE/releases/`` (weights upcast to float32, the file's sha256 checked first),
so every command that takes ``--ckpt_path`` (``test``, ``generate``, ``apply``, ``chat``, ``serve``,
``model.init_from``) takes a release as it is. A checkpoint of an older loragen (flat model arguments)
becomes its upgraded copy in ``$LORAGEN_CACHE/upgraded/``; anything else is returned as the path it is.

    loragen release --ckpt_path CKPT --out DIR --name NAME --command "bash scripts/train_release.sh ..."
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from loragen import LoRAGenError

PREFIX = "bundled:"
RELEASE_DIR = Path(__file__).resolve().parent / "releases"
WEIGHTS, META = "generator.safetensors", "release.json"
FORMAT = 1
DTYPES = ("float16", "bfloat16", "float32")


def known_releases() -> dict[str, Path]:
    """Releases shipped in the package: ``releases/<name>/`` with both files present."""
    if not RELEASE_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(RELEASE_DIR.iterdir()) if (p / WEIGHTS).is_file() and (p / META).is_file()}


def is_release(source: str | os.PathLike[str]) -> bool:
    text = str(source)
    return text.startswith(PREFIX) or (Path(text).is_dir() and (Path(text) / META).is_file())


def export_release(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    command: str,
    licences: list[str] | None = None,
    dtype: str = "float16",
    results: str | None = None,
    keep_previous: bool = False,
) -> dict[str, Any]:
    """Write the trained weights of a loragen checkpoint as a release (atomically). ``keep_previous``: a release
    already in ``out_dir`` with other weights is first copied, whole, to ``NAME-vN`` beside it (N the next free
    version; its ``release.json`` renamed to match), so the weights it replaces stay loadable as ``bundled:NAME-vN``;
    re-exporting the same weights keeps no copy (:func:`keep_version`)."""
    import torch
    from safetensors.torch import save_file

    from loragen.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
    from loragen.files import atomic_directory, sha256_file

    if dtype not in DTYPES:
        raise LoRAGenError(f"release dtype {dtype!r} is unknown: choose one of {list(DTYPES)}")
    checkpoint = load_checkpoint(Path(ckpt_path))
    info = checkpoint.get("loragen") or {}
    if "fingerprint" not in info:
        raise LoRAGenError(f"{ckpt_path} has no loragen pair fingerprint: it was not written by loragen")
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
    hparams.setdefault("_class_path", "loragen.models.lora_gen_module.LoRAGenModule")  # releases are LoRA-Gen's
    trained = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    weights = {
        k: v.detach().to(getattr(torch, dtype)).contiguous() if v.is_floating_point() else v for k, v in trained.items()
    }
    data = checkpoint.get("datamodule_hyper_parameters", {})
    trained_on = training_data(data)
    if not licences:  # the licence of every dataset it was trained on, from the registry
        licences = [f"{d['dataset']}: {d['licence']}" for d in trained_on]
    source_sha256 = sha256_file(ckpt_path)
    out = Path(out_dir)
    if keep_previous and out.exists():
        try:
            read_release(out)
        except LoRAGenError:
            raise LoRAGenError(
                f"{out} holds no readable release to keep: move it away, or drop --keep_previous"
            ) from None
    with atomic_directory(out) as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        weights_sha256 = sha256_file(tmp / WEIGHTS)
        if keep_previous and (out / META).is_file():
            keep_version(out, unless=weights_sha256)
        meta = {
            "loragen_release": FORMAT,
            "hparams_format": CHECKPOINT_FORMAT,
            "name": name,
            "weights": WEIGHTS,
            "weights_sha256": weights_sha256,
            "dtype": dtype,
            "hyper_parameters": hparams,
            "fingerprint": info["fingerprint"],
            "max_system_tokens": data.get("max_system_tokens"),
            "trained_steps": checkpoint.get("global_step"),
            "training_command": command,
            "data_licences": list(licences or []),
            "training_data": trained_on,
            "non_commercial_data": sorted(d["dataset"] for d in trained_on if d["non_commercial"]),
            "results": results,
            "source_checkpoint_sha256": source_sha256,
        }
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def keep_version(directory: Path, unless: str | None = None) -> Path | None:
    """Copy the release in ``directory`` to ``<directory>-vN`` (N = 1, 2, ... the first free), named ``<directory
    name>-vN`` in its ``release.json``; the weights file is copied byte for byte (its sha256 still holds). Nothing
    is copied when its weights' sha256 is ``unless`` (the same weights are re-exported) or a version already holds
    them (an export interrupted after its copy); returns the copy or None."""
    import shutil

    from loragen.files import atomic_directory

    meta = read_release(directory)
    versions = sorted(directory.parent.glob(f"{directory.name}-v*"))
    kept = [
        v for v in versions if (v / META).is_file() and read_release(v).get("weights_sha256") == meta["weights_sha256"]
    ]
    if meta["weights_sha256"] == unless or kept:
        return None
    version = 1
    while directory.with_name(f"{directory.name}-v{version}").exists():
        version += 1
    target = directory.with_name(f"{directory.name}-v{version}")
    with atomic_directory(target, replace=False) as tmp:
        shutil.copy2(directory / meta.get("weights", WEIGHTS), tmp / meta.get("weights", WEIGHTS))
        meta["name"] = target.name
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return target


def training_data(data_hparams: dict[str, Any]) -> list[dict[str, Any]]:
    """The datasets a checkpoint's training tasks (registry names and presets) come from: each with its tasks,
    licence and whether it is non-commercial. Empty for data given as record files."""
    from loragen.data.tasks import REGISTRY, expand_tasks
    from loragen.data.tasks.suite import licences

    tasks = [task for task, _ in expand_tasks(data_hparams.get("train_tasks"), "train") if task in REGISTRY]
    return licences(tasks, REGISTRY)


def release_dir(source: str) -> Path:
    """The directory of a release: ``bundled:NAME`` (shipped, else a one-line error naming what is) or a path."""
    if source.startswith(PREFIX):
        name = source[len(PREFIX) :]
        releases = known_releases()
        if name not in releases:
            from loragen.backbones import BUNDLED

            if name in BUNDLED:
                raise LoRAGenError(
                    f"{source} is a bundled base model, not a trained generator: give a checkpoint "
                    f"(released generators: {sorted(releases) or 'none in this install'})"
                )
            raise LoRAGenError(
                f"unknown released generator {name!r}: this install ships "
                f"{sorted(releases) or 'none'}; give a checkpoint written by `loragen fit`"
            )
        return releases[name]
    return Path(source)


def read_release(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoRAGenError(
            f"{directory / META} is not a readable release file ({err.__class__.__name__}): reinstall "
            "loragen or re-export the release"
        ) from None
    if meta.get("loragen_release") != FORMAT or "fingerprint" not in meta or "hyper_parameters" not in meta:
        raise LoRAGenError(f"{directory / META} is not a loragen release (format {FORMAT}): re-export it")
    return meta


def release_checkpoint(source: str | os.PathLike[str]) -> Path:
    """A released generator (``bundled:NAME`` or a release directory) as its loragen checkpoint, built once in the
    cache from the release's verified weights."""
    from safetensors.torch import load_file

    from loragen.backbones import cache_root
    from loragen.checkpoint import CHECKPOINT_FORMAT, save_checkpoint, upgrade_hparams
    from loragen.files import sha256_file

    directory = release_dir(str(source))
    meta = read_release(directory)
    digest = sha256_file(directory / meta.get("weights", WEIGHTS))
    if digest != meta["weights_sha256"]:
        raise LoRAGenError(
            f"{directory / WEIGHTS} does not match the sha256 in {META} (corrupted or edited): "
            "reinstall loragen or re-export the release"
        )
    hparams = meta["hyper_parameters"]
    if meta.get("hparams_format", 1) < CHECKPOINT_FORMAT:  # a release exported before the typed groups
        hparams = upgrade_hparams(hparams)
    tag = hashlib.sha256(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:8]
    target = cache_root() / "releases" / f"{meta['name']}-{digest[:16]}-{tag}.ckpt"
    if target.is_file():
        return target
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(directory / WEIGHTS)).items()}
    import lightning

    checkpoint = {
        "state_dict": state,
        "hyper_parameters": hparams,
        "epoch": 0,
        "global_step": meta.get("trained_steps") or 0,
        "pytorch-lightning_version": lightning.__version__,
        "datamodule_hyper_parameters": {"max_system_tokens": meta.get("max_system_tokens")},
        "loragen": {
            "fingerprint": meta["fingerprint"],
            "format": CHECKPOINT_FORMAT,
            "release": meta["name"],
            "release_weights_sha256": digest,
        },
    }
    save_checkpoint(checkpoint, target)
    return target


def main(argv: list[str]) -> None:
    """``loragen release``: a checkpoint's trained weights as a release directory (jsonargparse, as every loragen
    command: ``--config FILE`` reads these options from YAML, ``--print_config`` writes the resolved ones)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="loragen release",
        description="Write a checkpoint's trained weights as a release directory (generator.safetensors + "
        "release.json), addressable as bundled:NAME once it is under loragen/releases/.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of these options (see --print_config)")
    parser.add_argument("--ckpt_path", required=True, metavar="CKPT", help="checkpoint written by loragen fit")
    parser.add_argument("--out", required=True, metavar="DIR", help="release directory (e.g. loragen/releases/NAME)")
    parser.add_argument("--name", required=True, help="the release's name (bundled:NAME)")
    parser.add_argument("--command", required=True, help="the command that trained it (recorded)")
    parser.add_argument(
        "--licence",
        action="append",
        default=[],
        help="a data licence line (repeatable); default: each training dataset's licence",
    )
    parser.add_argument("--dtype", default="float16", choices=list(DTYPES), help="dtype of the weights file")
    parser.add_argument("--results", help="where the release's results card is (recorded)")
    parser.add_argument(
        "--keep_previous",
        action="store_true",
        help="copy a release already in --out to OUT-vN first (N the next free version), loadable as bundled:NAME-vN",
    )
    args = parser.parse_args(argv)
    try:
        meta = export_release(
            args.ckpt_path,
            args.out,
            name=args.name,
            command=args.command,
            licences=args.licence,
            dtype=args.dtype,
            results=args.results,
            keep_previous=args.keep_previous,
        )
    except LoRAGenError as err:
        print(f"loragen release: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    size = (Path(args.out) / WEIGHTS).stat().st_size
    print(
        f"wrote {args.out}: {size / 1e6:.1f} MB of {meta['dtype']} weights, {meta['trained_steps']} steps, "
        f"sha256 {meta['weights_sha256'][:16]}…"
    )

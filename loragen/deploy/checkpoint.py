"""Read a loragen checkpoint; load the full generator or only its edge side.

The edge side (edge model + expert pool) is all that assembling and merging a LoRA from gates
needs: ``loragen apply`` and cache hits never load the cloud model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loragen import LoRAGenError
from loragen.deploy.artifacts import sha256_file

if TYPE_CHECKING:
    from loragen.backbones import Backbone
    from loragen.models.components.edge_lora import EdgeLoRA
    from loragen.models.components.expert_pool import ExpertPool
    from loragen.models.config import PoolConfig
    from loragen.models.lora_gen_module import LoRAGenModule

_MISSING_KEYS = "Found keys that are in the model state dict but not in the checkpoint"  # backbones: expected


@dataclass
class CheckpointInfo:
    path: Path
    sha256: str
    fingerprint: dict[str, Any]
    hparams: dict[str, Any]  # LoRAGenModule.__init__ arguments as the checkpoint stores them
    pool: PoolConfig  # the expert pool group (its defaults filled in)
    data_hparams: dict[str, Any]
    pool_state: dict[str, Any]  # ExpertPool state dict (A.*, B.*)


@dataclass
class EdgeSide:
    """What the edge side needs: the edge backbone, the trained expert pool and its merge helper."""

    backbone: Backbone
    pool: ExpertPool
    edge_lora: EdgeLoRA


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Hash and read a checkpoint (one-line errors for a missing file or a file loragen did not write)."""
    from loragen.files import load_checkpoint
    from loragen.release import resolve_checkpoint

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


def load_module(
    info: CheckpointInfo, cloud: str | None = None, edge: str | None = None, cloud_states: str | None = None
) -> LoRAGenModule:
    """The full LoRAGenModule (cloud + edge; with ``cloud_states``, the edge and the states file), in eval mode;
    overrides are checked against the fingerprint."""
    from loragen.models.lora_gen_module import LoRAGenModule

    overrides: dict[str, Any] = {
        k: v for k, v in (("cloud", cloud), ("edge", edge), ("cloud_states", cloud_states)) if v is not None
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MISSING_KEYS)
        module = LoRAGenModule.load_from_checkpoint(info.path, map_location="cpu", weights_only=False, **overrides)
    return module.eval()


def edge_side_of(module: LoRAGenModule) -> EdgeSide:
    model = module.model
    return EdgeSide(backbone=model.edge_backbone, pool=model.pool, edge_lora=model.edge_lora)


def load_edge_side(info: CheckpointInfo, edge: str | None = None) -> EdgeSide:
    """Edge model + trained expert pool only (no cloud model); the edge is checked against the fingerprint."""
    from loragen.backbones import load_backbone
    from loragen.models.components.edge_lora import EdgeLoRA
    from loragen.models.components.expert_pool import DEFAULT_TARGETS, ExpertPool, find_target_sites
    from loragen.models.components.fingerprint import PairFingerprint

    pool_config = info.pool
    source = edge or info.fingerprint["edge"]
    backbone = load_backbone(source)
    targets = pool_config.targets(DEFAULT_TARGETS)
    try:
        shapes = {s.name: [s.out_features, s.in_features] for s in find_target_sites(backbone.model, targets)}
    except LoRAGenError:
        shapes = {}
    given = {
        **info.fingerprint,
        "edge": source,
        "edge_arch": str(backbone.model.config.model_type),
        "edge_layers": backbone.num_layers,
        "edge_hidden": backbone.hidden_size,
        "edge_vocab": len(backbone.tokenizer),
        "target_shapes": dict(sorted(shapes.items())),
    }
    PairFingerprint.from_dict(info.fingerprint).check_compatible(PairFingerprint.from_dict(given))
    pool = ExpertPool(
        backbone.model,
        targets,
        num_experts=pool_config.num_experts,
        rank=pool_config.rank,
        lora_alpha=pool_config.lora_alpha,
        top_k=pool_config.top_k,
        seed=info.hparams.get("seed", 0),
    )
    try:
        pool.load_state_dict(info.pool_state)
    except RuntimeError as err:
        raise LoRAGenError(
            f"checkpoint {info.path} has an incomplete or mismatched expert pool: {str(err).splitlines()[0]}"
        ) from err
    return EdgeSide(backbone=backbone, pool=pool, edge_lora=EdgeLoRA(backbone.model, pool))

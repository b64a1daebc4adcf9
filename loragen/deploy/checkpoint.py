"""Read a loragen checkpoint; load the full generator or only its edge side.

The edge side (edge model + expert pool) is all that assembling and merging a LoRA from gates
needs: ``loragen apply`` and cache hits never load the cloud model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loragen import LoRAGenError

if TYPE_CHECKING:
    from loragen.backbones import Backbone
    from loragen.checkpoint import CheckpointInfo
    from loragen.models.components.edge_lora import EdgeLoRA
    from loragen.models.components.expert_pool import ExpertPool
    from loragen.models.lora_gen_module import LoRAGenModule

_MISSING_KEYS = "Found keys that are in the model state dict but not in the checkpoint"  # backbones: expected


@dataclass
class EdgeSide:
    """What the edge side needs: the edge backbone, the trained expert pool and its merge helper."""

    backbone: Backbone
    pool: ExpertPool
    edge_lora: EdgeLoRA


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

"""The identity of a cloud/edge pair, stored with every trained LoRA-Gen state.

A generator trained for one pair produces gates for *that* edge model's layers and experts whose
shapes match *that* edge's linears; loading it onto another pair silently produces nonsense (the
failure mode the paper names), so loading checks the fingerprint and names every differing field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from loragen import LoRAGenError


@dataclass(frozen=True)
class PairFingerprint:
    cloud: str
    edge: str
    cloud_arch: str
    edge_arch: str
    cloud_layers: int
    edge_layers: int
    cloud_hidden: int
    edge_hidden: int
    cloud_vocab: int
    edge_vocab: int
    target_shapes: dict[str, list[int]] = field(default_factory=dict)  # module name -> [out, in]

    @classmethod
    def of(
        cls, cloud: Any, edge: Any, target_shapes: dict[str, tuple[int, int]], cloud_part: dict[str, Any] | None = None
    ) -> PairFingerprint:
        """Build from two ``Backbone`` objects and the expert pool's per-module shapes; ``cloud_part``: the
        cloud's fields when its model is not loaded (those a cloud states file recorded)."""
        from loragen.models.components.cloud_states import cloud_fingerprint

        return cls(
            **(cloud_part if cloud.model is None and cloud_part else cloud_fingerprint(cloud)),
            edge=edge.source,
            edge_arch=str(edge.model.config.model_type),
            edge_layers=edge.num_layers,
            edge_hidden=edge.hidden_size,
            edge_vocab=len(edge.tokenizer),
            target_shapes={k: [int(v[0]), int(v[1])] for k, v in sorted(target_shapes.items())},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairFingerprint:
        return cls(**{**data, "target_shapes": {k: list(v) for k, v in data.get("target_shapes", {}).items()}})

    def differences(self, other: PairFingerprint) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: stored {mine[k]!r} vs. given {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]

    def check_compatible(self, other: PairFingerprint) -> None:
        """Raise if ``other`` (the pair being loaded onto) differs from this stored fingerprint."""
        diffs = self.differences(other)
        if diffs:
            raise PairMismatchError(
                "this state was trained for another cloud/edge pair (" + "; ".join(diffs) + "): load it with "
                f"cloud={self.cloud!r} and edge={self.edge!r}, or train a generator for the new pair"
            )


class PairMismatchError(LoRAGenError):
    """A trained state was loaded onto a cloud/edge pair it was not trained for."""

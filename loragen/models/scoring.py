"""Losses and multiple-choice scoring shared by LoRA-Gen and its baselines.

The vocabulary projection is the most expensive single matmul of a small LM (49k × 576 for
SmolLM2), so logits are computed only where they are used: at answer positions for the loss, and at
option positions for scoring. Options of one item share the prompt's key/value cache, so a
system-prompted reference costs one long prompt pass per item, not one per option.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from loragen.data.tokenize import IGNORE


def _head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def answer_loss(model: Any, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens only (labels ``-100`` elsewhere)."""
    targets = labels[:, 1:]
    used = targets != IGNORE
    if not used.any():
        return hidden.sum() * 0.0
    return F.cross_entropy(_head(model, hidden[:, :-1][used]), targets[used])


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same loss from full logits (for callers that already have them)."""
    shift_logits = logits[:, :-1].float()
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


def _cache_kwarg(decoder: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@torch.no_grad()
def score_options(model: Any, prompt: list[int], options: list[list[int]],
                  length_normalize: bool = True, prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Log-likelihood of each option given the prompt (mean per token when ``length_normalize``).

    The prompt runs once; its key/value cache is repeated for the options, which run as one batch
    (right-padded, so padding never influences a scored position). ``prefix_embeds`` (1, n, hidden)
    are input embeddings placed before the prompt (learned soft prompts).
    """
    decoder = model.get_decoder()
    device = model.get_output_embeddings().weight.device
    prompt_t = torch.tensor([prompt], device=device)
    if prefix_embeds is None:
        first = decoder(input_ids=prompt_t, use_cache=True)
    else:
        embeds = torch.cat([prefix_embeds.to(device), model.get_input_embeddings()(prompt_t)], dim=1)
        first = decoder(inputs_embeds=embeds, use_cache=True)
    start = first.last_hidden_state.shape[1]
    cache = getattr(first, "cache", None) or first.past_key_values
    n, width = len(options), max(len(o) for o in options)
    cache.batch_repeat_interleave(n)
    ids = torch.zeros(n, width, dtype=torch.long, device=device)
    opt_mask = torch.zeros(n, width, dtype=torch.long, device=device)
    for j, option in enumerate(options):
        ids[j, : len(option)] = torch.tensor(option, device=device)
        opt_mask[j, : len(option)] = 1
    mask = torch.cat([torch.ones(n, start, dtype=torch.long, device=device), opt_mask], dim=1)
    positions = torch.arange(start, start + width, device=device).expand(n, -1)
    rest = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   **{_cache_kwarg(decoder): cache}).last_hidden_state
    # Option token i is predicted by the hidden state before it: the prompt's last, then option i-1.
    hidden = torch.cat([first.last_hidden_state[:, -1:].expand(n, -1, -1), rest[:, :-1]], dim=1)
    logp = torch.log_softmax(_head(model, hidden), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    total = (logp * opt_mask).sum(-1)
    return total / opt_mask.sum(-1).clamp_min(1) if length_normalize else total

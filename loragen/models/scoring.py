"""Losses and multiple-choice scoring shared by LoRA-Gen and its baselines.

The vocabulary projection is the most expensive single matmul of a small LM (49k × 576 for
SmolLM2), so logits are computed only where they are used: at answer positions for the loss, and at
continuation positions for option scoring, which runs many (context, continuation) requests per
forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@torch.no_grad()
def score_requests(model: Any, requests: Sequence[tuple[list[int], list[int]]],
                   prefix_embeds: torch.Tensor | None = None, max_batch_tokens: int = 8192) -> list[float]:
    """Summed log-likelihood of each continuation given its context, for many requests per forward.

    A request is ``(context ids, continuation ids)``. As in lm-evaluation-harness, the model reads
    ``(context + continuation)[:-1]`` and the continuation's tokens are scored at the positions that
    predict them. Requests are sorted by length and packed into right-padded batches of at most
    ``max_batch_tokens`` (rows × width): with causal attention a position attends only to earlier
    positions, which are real tokens, so padding changes no scored position (tests compare each
    request scored alone). ``prefix_embeds`` (1, n, hidden) are input embeddings placed before every
    context (learned soft prompts).
    """
    scores = [0.0] * len(requests)
    if not requests:
        return scores
    device = model.get_output_embeddings().weight.device
    decoder = model.get_decoder()
    n_prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    lengths = [len(c) + len(t) - 1 for c, t in requests]
    order = sorted(range(len(requests)), key=lambda i: -lengths[i])
    start = 0
    while start < len(order):
        width = lengths[order[start]] + n_prefix
        rows = max(1, min(len(order) - start, max_batch_tokens // max(width, 1)))
        chunk = order[start:start + rows]
        start += rows
        ids = torch.zeros(len(chunk), width - n_prefix, dtype=torch.long, device=device)
        mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        rows_at, positions, targets, owner = [], [], [], []
        for r, i in enumerate(chunk):
            context, continuation = requests[i]
            sequence = (list(context) + list(continuation))[:-1]
            ids[r, : len(sequence)] = torch.tensor(sequence, device=device)
            mask[r, : n_prefix + len(sequence)] = 1
            first = n_prefix + len(context) - 1  # the position that predicts the first continuation token
            rows_at += [r] * len(continuation)
            positions += range(first, first + len(continuation))
            targets += continuation
            owner += [i] * len(continuation)
        if prefix_embeds is None:
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            embeds = torch.cat([prefix_embeds.to(device).expand(len(chunk), -1, -1),
                                model.get_input_embeddings()(ids)], dim=1)
            hidden = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        picked = hidden[torch.tensor(rows_at, device=device), torch.tensor(positions, device=device)]
        target = torch.tensor(targets, device=device)
        logp = torch.log_softmax(_head(model, picked), -1).gather(-1, target[:, None]).squeeze(-1)
        sums = torch.zeros(len(requests), dtype=logp.dtype, device=device)
        sums.index_add_(0, torch.tensor(owner, device=device), logp)
        for i in chunk:
            scores[i] = float(sums[i])
    return scores

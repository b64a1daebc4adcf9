"""Losses and multiple-choice scoring shared by LoRA-Gen and its baselines.

The vocabulary projection is the most expensive single matmul of a small LM (49k × 576 for
SmolLM2), so logits are computed only where they are used: at answer positions for the loss, and at
continuation positions for option scoring, which runs many (context, continuation) requests per
forward pass.
"""

from __future__ import annotations

import inspect
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


def answer_logits(model: Any, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits at the positions that predict answer tokens (labels ``-100`` elsewhere), row by row:
    shape (answer tokens of the batch, vocabulary)."""
    return _head(model, hidden[:, :-1][labels[:, 1:] != IGNORE])


def answer_loss(model: Any, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens only (labels ``-100`` elsewhere)."""
    targets = labels[:, 1:]
    used = targets != IGNORE
    if not used.any():
        return hidden.sum() * 0.0
    return F.cross_entropy(answer_logits(model, hidden, labels), targets[used])


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same loss from full logits (for callers that already have them)."""
    shift_logits = logits[:, :-1].float()
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


@torch.no_grad()
def score_requests(
    model: Any,
    requests: Sequence[tuple[list[int], list[int]]],
    prefix_embeds: torch.Tensor | None = None,
    max_rows: int = 8,
) -> list[float]:
    """Summed log-likelihood of each continuation given its context, for many requests at once.

    A request is ``(context ids, continuation ids)``; the continuation's tokens are scored at the
    positions that predict them, as in lm-evaluation-harness. Requests that share a context (the
    options of one item) read it once: the distinct contexts run as right-padded batches of at most
    ``max_rows`` rows, sorted by length (little padding), and their key/value cache is repeated for
    the continuations, which run together at their true positions with the cache's padding masked.
    With causal attention a real position attends only to earlier real positions, so padding changes
    no scored position (tests compare every request scored alone). ``prefix_embeds`` (1, n, hidden)
    are input embeddings placed before every context (learned soft prompts).
    """
    scores = [0.0] * len(requests)
    if _sliding_window(model):
        # A sliding window counts cache slots, and a right-padded context leaves padding slots before its
        # continuation: such models read each request whole instead of sharing its context.
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
        for start in range(0, len(order), max_rows):
            chunk = order[start : start + max_rows]
            for i, value in zip(chunk, _score_whole(model, [requests[i] for i in chunk], prefix_embeds), strict=True):
                scores[i] = value
        return scores
    contexts: dict[tuple[int, ...], list[int]] = {}  # distinct context -> its requests
    for i, (context, _) in enumerate(requests):
        contexts.setdefault(tuple(context), []).append(i)
    by_length = sorted(contexts, key=len, reverse=True)
    for start in range(0, len(by_length), max_rows):
        group = by_length[start : start + max_rows]
        members = [(b, i) for b, context in enumerate(group) for i in contexts[context]]
        sums = _score_chunk(model, group, [requests[i][1] for _, i in members], [b for b, _ in members], prefix_embeds)
        for (_, i), value in zip(members, sums, strict=True):
            scores[i] = value
    return scores


def _sliding_window(model: Any) -> bool:
    config = model.config
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def _score_whole(
    model: Any, requests: list[tuple[list[int], list[int]]], prefix_embeds: torch.Tensor | None
) -> list[float]:
    """Each request as one right-padded sequence ``(context + continuation)[:-1]`` (no cache reuse)."""
    device = model.get_output_embeddings().weight.device
    n_prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    sequences = [(list(c) + list(t))[:-1] for c, t in requests]
    ids = torch.zeros(len(sequences), max(map(len, sequences)), dtype=torch.long, device=device)
    mask = torch.zeros(len(sequences), n_prefix + ids.shape[1], dtype=torch.long, device=device)
    rows: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for r, ((context, continuation), sequence) in enumerate(zip(requests, sequences, strict=True)):
        ids[r, : len(sequence)] = torch.tensor(sequence, device=device)
        mask[r, : n_prefix + len(sequence)] = 1
        first = n_prefix + len(context) - 1
        rows += [r] * len(continuation)
        positions += range(first, first + len(continuation))
        targets += continuation
    hidden = _decode(model, ids, mask, prefix_embeds).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
    target = torch.tensor(targets, device=device)
    logp = torch.log_softmax(_head(model, picked), -1).gather(-1, target[:, None]).squeeze(-1)
    totals = torch.zeros(len(requests), dtype=logp.dtype, device=device)
    totals.index_add_(0, torch.tensor(rows, device=device), logp)
    return totals.tolist()


def _decode(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix_embeds: torch.Tensor | None, use_cache: bool = False
) -> Any:
    """The decoder over ``ids``, after the soft prompt ``prefix_embeds`` when given."""
    decoder = model.get_decoder()
    if prefix_embeds is None:
        return decoder(input_ids=ids, attention_mask=mask, use_cache=use_cache)
    embeds = torch.cat(
        [prefix_embeds.to(ids.device).expand(ids.shape[0], -1, -1), model.get_input_embeddings()(ids)], dim=1
    )
    return decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=use_cache)


def _score_chunk(
    model: Any,
    contexts: list[tuple[int, ...]],
    continuations: list[list[int]],
    owner: list[int],
    prefix_embeds: torch.Tensor | None,
) -> list[float]:
    """Summed log-likelihoods of ``continuations`` (continuation j follows ``contexts[owner[j]]``)."""
    device = model.get_output_embeddings().weight.device
    decoder = model.get_decoder()
    n_prefix = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    width = max(len(c) for c in contexts)
    ids = torch.zeros(len(contexts), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(contexts), n_prefix + width, dtype=torch.long, device=device)
    for b, context in enumerate(contexts):
        ids[b, : len(context)] = torch.tensor(context, device=device)
        mask[b, : n_prefix + len(context)] = 1
    first = _decode(model, ids, mask, prefix_embeds, use_cache=True)
    rows = torch.tensor(owner, device=device)
    lengths = mask.sum(-1)  # real positions of each context (with the prefix)
    # the first continuation token is predicted by the context's last real position
    last = first.last_hidden_state[rows, lengths[rows] - 1]
    cont_width = max(len(c) for c in continuations)
    cont = torch.zeros(len(continuations), cont_width, dtype=torch.long, device=device)
    cont_mask = torch.zeros_like(cont)
    for j, continuation in enumerate(continuations):
        cont[j, : len(continuation)] = torch.tensor(continuation, device=device)
        cont_mask[j, : len(continuation)] = 1
    hidden = last[:, None]
    if cont_width > 1:  # tokens 2.. are predicted by the continuation's own earlier positions
        cache = getattr(first, "cache", None) or first.past_key_values
        cache.reorder_cache(rows)
        positions = lengths[rows, None] + torch.arange(cont_width - 1, device=device)
        rest = decoder(
            input_ids=cont[:, :-1],
            attention_mask=torch.cat([mask[rows], cont_mask[:, :-1]], dim=1),
            position_ids=positions,
            use_cache=True,
            **{_cache_kwarg(decoder): cache},
        ).last_hidden_state
        hidden = torch.cat([hidden, rest], dim=1)
    logp = torch.log_softmax(_head(model, hidden[cont_mask.bool()]), -1)
    picked = logp.gather(-1, cont[cont_mask.bool()][:, None]).squeeze(-1)
    totals = torch.zeros(len(continuations), dtype=picked.dtype, device=device)
    totals.index_add_(0, torch.arange(len(continuations), device=device).repeat_interleave(cont_mask.sum(-1)), picked)
    return totals.tolist()


def _cache_kwarg(decoder: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"

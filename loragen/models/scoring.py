"""Losses and multiple-choice scoring shared by LoRA-Gen and its baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loragen.data.tokenize import IGNORE


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens only (labels ``-100`` elsewhere)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE)


def option_logprobs(logits: torch.Tensor, labels: torch.Tensor, length_normalize: bool = True) -> torch.Tensor:
    """Per-row log-likelihood of the labelled (answer) tokens; mean per token when ``length_normalize``."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    logp = torch.log_softmax(shift_logits, -1).gather(-1, shift_labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    total = (logp * mask).sum(-1)
    return total / mask.sum(-1).clamp_min(1) if length_normalize else total


def pick_options(scores: torch.Tensor, item: torch.Tensor, num_items: int) -> torch.Tensor:
    """Index (within its item) of the best-scoring option of every item."""
    best = torch.full((num_items,), -1, dtype=torch.long, device=scores.device)
    best_score = torch.full((num_items,), float("-inf"), device=scores.device)
    position = torch.zeros_like(item)
    for i in range(num_items):  # options are few; clarity over cleverness
        rows = (item == i).nonzero().flatten()
        position[rows] = torch.arange(rows.numel(), device=item.device)
    for row in range(scores.numel()):
        i = int(item[row])
        if scores[row] > best_score[i]:
            best_score[i], best[i] = scores[row], position[row]
    return best

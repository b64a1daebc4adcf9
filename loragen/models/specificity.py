"""Training signals that reward a generated LoRA *specific to its prompt* (LoRA-Gen's ``specificity`` group).

Trained on the answer loss alone, a generator may learn one multi-task LoRA plus a prompt-dependent
perturbation: nothing asks it to read the prompt. Each signal below is off by default (coefficient 0)
and adds a term to the training loss:

- **counterfactual margin** (``margin_coef``): on a row's answer tokens, the LoRA of the row's own
  prompt must beat the LoRA of another task's prompt from the same batch by ``margin`` nats per token,
  ``relu(margin − (ll_own − ll_other))`` averaged over the rows that have another task in the batch. The
  gradient flows through both LoRAs: the own one is pulled up, the other one pushed down on these items.
- **null-prompt control** (``null_coef``): the LoRA generated for task-free prompts (``null_prompts``, which
  must not include the evaluation's task-free probe) is pulled toward the untouched edge: the mean over
  target linears of its squared Frobenius norm ``‖ΔW‖²`` (computed from the rank-``k·r`` factors, never
  materialising ``ΔW``). Whatever a task's LoRA adds must then come from what its prompt says.
- **context distillation** (``distill_coef``): the target is the edge *reading* the full system prompt:
  ``KL(teacher ‖ student)`` over the vocabulary at every answer position, the teacher being the plain edge
  with the system prompt in context (no gradient) and the student the edge with the generated LoRA and
  no system prompt, at temperature ``distill_temperature`` (scaled by T²). It asks directly for "the
  prompted edge's behaviour at the merged edge's token cost".

Generator capacity and input (trained meta tokens, a cloud LoRA, a centred router input) are LoRA-Gen's
own arguments (``train_meta_tokens``, ``cloud_lora_rank``, ``router_center``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from loragen.data.tokenize import IGNORE
from loragen.eval.scoring import answer_logits


def answer_logliks(model: Any, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean log-likelihood per answer token of each row (b,), and which rows have answer tokens."""
    targets = labels[:, 1:]
    used = targets != IGNORE
    logits = answer_logits(model, hidden, labels)
    picked = torch.log_softmax(logits.float(), -1).gather(-1, targets[used][:, None])[:, 0]
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(used)[used]
    counts = used.sum(1)
    sums = torch.zeros(labels.shape[0], device=hidden.device, dtype=picked.dtype).index_add(0, rows, picked)
    return sums / counts.clamp(min=1), counts > 0


def other_task_rows(tasks: list[str]) -> torch.Tensor | None:
    """For each row, a row of the batch from another task (the first row of the next task in order of
    appearance, cyclically); None when the batch holds one task only."""
    order = list(dict.fromkeys(tasks))
    if len(order) < 2:
        return None
    first = {task: tasks.index(task) for task in order}
    following = {task: first[order[(i + 1) % len(order)]] for i, task in enumerate(order)}
    return torch.tensor([following[t] for t in tasks])


def margin_loss(own: torch.Tensor, other: torch.Tensor, valid: torch.Tensor, margin: float) -> torch.Tensor:
    """``relu(margin − (own − other))`` averaged over the valid rows (0 without any)."""
    if not valid.any():
        return own.sum() * 0.0
    return F.relu(margin - (own - other))[valid].mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(teacher ‖ student)`` per answer position, averaged (logits of shape (positions, vocab))."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    t = temperature
    log_student = torch.log_softmax(student.float() / t, -1)
    log_teacher = torch.log_softmax(teacher.float() / t, -1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t


def aligned_answer_rows(labels: torch.Tensor, teacher_labels: torch.Tensor) -> torch.Tensor:
    """Rows whose answer has as many tokens in the student's sequence as in the teacher's (the answer
    positions then pair up one to one); a row where truncation or tokenization differs is left out."""
    return ((labels[:, 1:] != IGNORE).sum(1) == (teacher_labels[:, 1:] != IGNORE).sum(1)) & (
        (labels[:, 1:] != IGNORE).sum(1) > 0
    )

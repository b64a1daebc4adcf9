"""The optimizer and schedule every method trains with (LoRA-Gen and the baselines alike).

AdamW with two parameter groups (matrices decayed; biases, norms, embeddings-like vectors such as
meta tokens, layer embeddings and soft prompts not decayed), linear warmup over ``warmup_steps``,
then cosine decay to ``min_lr_ratio · lr`` at the trainer's last step.

Non-finite steps: a batch whose loss or gradients are NaN/inf never reaches the weights. Its
gradients are dropped before the optimizer step (AdamW leaves parameters without a gradient, and
their moments, untouched), the step is counted (``train/nonfinite_steps``) and named in a warning;
after ``max_nonfinite_steps`` consecutive ones the run stops with a one-line error, and the last
checkpoint written holds the weights from before them. ``loragen.callbacks.NonFiniteGuard`` sets the limit
(1 = stop at the first).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from loragen import LoRAGenError

MAX_NONFINITE_STEPS = 3  # consecutive non-finite steps before a run stops (isolated ones are skipped)

NO_DECAY_NAMES = ("norm", "meta_tokens", "layer_embedding", "prompt_embeddings", "embedding.weight")


def adamw_warmup_cosine(module: Any) -> dict[str, Any]:
    """``configure_optimizers`` output for a LightningModule with an ``optim`` group
    (``loragen.models.config.OptimConfig``)."""
    hp = module.optim
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.dim() < 2 or any(key in name for key in NO_DECAY_NAMES)
        (no_decay if plain else decay).append(param)
    if not decay and not no_decay:
        raise LoRAGenError(
            f"{type(module).__name__} has no trainable parameters: there is nothing to fit; run `loragen test` instead"
        )
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr
    )
    trainer = module._trainer
    total = max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1
    warmup, floor = hp.warmup_steps, hp.min_lr_ratio

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ScheduledTraining:
    """LightningModule hooks every method shares: this optimizer and schedule, and throughput /
    learning-rate logging per training batch (``train/samples_per_s``, ``train/edge_tokens_per_s``,
    ``train/lr``)."""

    _step_start = 0.0
    max_nonfinite_steps = MAX_NONFINITE_STEPS
    _nonfinite_total = 0
    _nonfinite_run = 0

    if TYPE_CHECKING:  # provided by the LightningModule this mixin is combined with
        trainer: Any
        _trainer: Any
        log: Any
        log_dict: Any
        optimizers: Any

        def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def configure_optimizers(self) -> Any:
        return adamw_warmup_cosine(self)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Norm clipping under FSDP goes through the wrapped model's ``clip_grad_norm_`` (the norm over every
        rank's shards), which Lightning's FSDP precision plugin refuses to do; anything else is Lightning's."""
        strategy = self.trainer.strategy
        if gradient_clip_val and type(strategy).__name__ == "FSDPStrategy" and gradient_clip_algorithm != "value":
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)  # type: ignore[misc]  # a mixin: LightningModule provides it

    def on_after_backward(self) -> None:
        """Drop the gradients of a non-finite step (see the module docstring); stop after too many in a row.
        Under DDP the gradients are already averaged, so every rank decides the same."""
        grads = [p.grad for p in self.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        finite = bool(torch.isfinite(torch.stack([g.float().sum() for g in grads])).all())
        if finite:
            self._nonfinite_run = 0
        else:
            for param in self.parameters():
                param.grad = None
            self._nonfinite_total += 1
            self._nonfinite_run += 1
            step = self.trainer.global_step if self._trainer is not None else 0
            if self._nonfinite_run >= self.max_nonfinite_steps:
                raise LoRAGenError(
                    f"stopped at step {step}: {self._nonfinite_run} consecutive steps with a non-finite loss or "
                    "gradients (none reached the weights; the last checkpoint is from before them): lower "
                    "model.init_args.optim.lr, check the data, or resume with --ckpt_path last"
                )
            warnings.warn(
                f"step {step}: non-finite loss or gradients, step skipped (the weights are unchanged; "
                f"{self._nonfinite_total} skipped so far)",
                stacklevel=2,
            )
        if self._trainer is not None:
            self.log("train/nonfinite_steps", float(self._nonfinite_total), reduce_fx="max")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        elapsed = max(time.perf_counter() - self._step_start, 1e-9)
        size = batch["input_ids"].shape[0]
        self.log_dict(
            {
                "train/samples_per_s": size / elapsed,
                "train/edge_tokens_per_s": float(batch["attention_mask"].sum()) / elapsed,
                "train/lr": self.optimizers().param_groups[0]["lr"],
            },
            batch_size=size,
        )

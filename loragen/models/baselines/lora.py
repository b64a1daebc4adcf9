"""LoRA (PEFT) on the edge model, trained on the same mixture as LoRA-Gen: one adapter for all tasks.

With ``system_prompt: true`` the edge reads each task's system prompt in training and at every
request (the strongest conventional setup, and the context cost LoRA-Gen removes); without it the
adapter must absorb the tasks' instructions. Evaluation is deployment-faithful: the adapter is
merged into the dense weights (``merge_adapter``) for the evaluation epoch and unmerged after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from loragen import LoRAGenError
from loragen.models.baselines.base import EdgeBaselineModule
from loragen.models.components.expert_pool import DEFAULT_TARGETS


class LoRABaseline(EdgeBaselineModule):
    """One PEFT LoRA adapter on the edge model.

    Args:
        rank / lora_alpha: LoRA rank and alpha (scale = alpha / rank).
        target_modules: edge linears that receive LoRA (default: every attention and MLP projection,
            as LoRA-Gen's pool).
        lora_dropout: dropout on the LoRA input in training.
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "lora"
    LABEL = "LoRA"
    MERGEABLE = True

    def __init__(self, edge: str = "bundled:smollm2-135m-instruct", cloud: str = "bundled:smollm2-135m-instruct",
                 system_prompt: bool = False, rank: int = 8, lora_alpha: float = 16.0,
                 target_modules: list[str] | None = None, lora_dropout: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 10, min_lr_ratio: float = 0.1,
                 scoring: str = "loglik", metric: str = "acc_norm", max_new_tokens: int = 32,
                 seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._load_edge(edge, seed)
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=list(target_modules or DEFAULT_TARGETS),
                            lora_dropout=lora_dropout, bias="none")
        # PEFT injects its LoRA layers into ``self.edge`` in place; the wrapper is kept out of the
        # module tree so parameters are not registered twice.
        object.__setattr__(self, "_peft", get_peft_model(self.edge, config))

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> None:
        if hp["rank"] < 1:
            raise LoRAGenError(f"rank={hp['rank']} must be >= 1")
        if hp["target_modules"] is not None and not hp["target_modules"]:
            raise LoRAGenError("target_modules is empty: name at least one edge linear, e.g. q_proj")
        if not 0 <= hp["lora_dropout"] < 1:
            raise LoRAGenError(f"lora_dropout={hp['lora_dropout']} must be in [0, 1)")

    def train(self, mode: bool = True) -> LoRABaseline:
        super().train(mode)
        if mode and self.hparams.lora_dropout:  # the LoRA dropout layers follow the training mode
            for name, module in self.edge.named_modules():
                if "lora_dropout" in name:
                    module.train(True)
        return self

    @contextlib.contextmanager
    def deployed(self) -> Iterator[None]:
        """The adapter merged into the dense edge weights, as it would be served; afterwards the
        original weights are put back exactly (unmerging by subtraction drifts, badly in bf16)."""
        originals = {name: p.detach().clone() for name, p in self.edge.named_parameters() if ".base_layer." in name}
        self._peft.merge_adapter()
        try:
            yield
        finally:
            self._peft.unmerge_adapter()
            with torch.no_grad():
                for name, param in self.edge.named_parameters():
                    if name in originals:
                        param.copy_(originals[name])

    def export_adapter(self, directory: str | Path) -> Path:
        """Write the adapter as a standard PEFT adapter directory (atomically)."""
        from loragen.files import atomic_directory

        with atomic_directory(directory) as tmp:
            self._peft.save_pretrained(str(tmp))
        return Path(directory)

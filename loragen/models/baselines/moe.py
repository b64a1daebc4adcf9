"""Mixture-of-LoRA-experts baselines inside the edge model, trained on the same mixture as LoRA-Gen.

- ``MixLoRABaseline`` (MixLoRA-style): each MLP becomes a sparse MoE whose experts are the frozen
  FFN with their own LoRA on gate/up/down; a router picks the top-k experts *per token*; attention
  projections carry one plain LoRA.
- ``LoRAMoEBaseline`` (LoRAMoE-style): each MLP linear gets a pool of LoRA experts mixed by a dense
  softmax router per token (every expert contributes).

Both are trained with the same balance loss as LoRA-Gen (``aux_loss`` × ``aux_coef``, over real
tokens only). Their gates change with every token, so they cannot be merged into dense weights:
they are evaluated as they run, and serving them costs the routing and expert passes per token.
"""

from __future__ import annotations

from typing import Any

import torch

from loragen import LoRAGenError
from loragen.models.baselines.base import EdgeBaselineModule
from loragen.models.components.router import AUX_KINDS


class _MoEBaseline(EdgeBaselineModule):
    MERGEABLE = False

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> None:
        if hp["num_experts"] < 1 or hp["rank"] < 1:
            raise LoRAGenError(f"num_experts={hp['num_experts']} and rank={hp['rank']} must be >= 1")
        if not 1 <= hp.get("top_k", 1) <= hp["num_experts"]:
            raise LoRAGenError(f"top_k={hp['top_k']} must be between 1 and num_experts={hp['num_experts']}")
        if hp["aux_loss"] not in AUX_KINDS:
            raise LoRAGenError(f"aux_loss={hp['aux_loss']!r} is unknown: choose one of {list(AUX_KINDS)}")
        if hp["attention_rank"] < 0:
            raise LoRAGenError(f"attention_rank={hp['attention_rank']} must be >= 0 (0 = no attention LoRA)")

    def aux_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from loragen.models.components.moe_lora import moe_aux_loss

        return moe_aux_loss(self.moe_layers, self.hparams.aux_loss, token_mask=batch["attention_mask"])

    def result_info(self) -> dict[str, Any]:
        return {**super().result_info(), "num_experts": self.hparams.num_experts}


class MixLoRABaseline(_MoEBaseline):
    """MixLoRA-style sparse mixture: token-level top-k routing over LoRA experts of each MLP.

    Args:
        num_experts / top_k / rank / lora_alpha: experts per MLP, experts per token, expert LoRA rank
            and alpha.
        attention_rank: rank of the plain LoRA on q/k/v/o projections (0 = none).
        aux_loss / aux_coef: balance loss (``cv2 | switch | none``) and its coefficient, as LoRA-Gen.
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "mixlora"
    LABEL = "MixLoRA (top-k token routing)"

    def __init__(self, edge: str = "bundled:smollm2-135m-instruct", cloud: str = "bundled:smollm2-135m-instruct",
                 system_prompt: bool = False, num_experts: int = 8, top_k: int = 2, rank: int = 8,
                 lora_alpha: float = 16.0, attention_rank: int = 8, aux_loss: str = "cv2", aux_coef: float = 0.01,
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 10, min_lr_ratio: float = 0.1,
                 scoring: str = "loglik", metric: str = "acc_norm", max_new_tokens: int = 32,
                 seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._load_edge(edge, seed)
        from loragen.models.components.moe_lora import install_mixlora

        self.moe_layers = install_mixlora(self.edge, num_experts=num_experts, top_k=top_k, rank=rank,
                                          lora_alpha=lora_alpha, attention_rank=attention_rank)


class LoRAMoEBaseline(_MoEBaseline):
    """LoRAMoE-style dense mixture: every LoRA expert of each MLP linear, weighted per token by a softmax router.

    Args:
        num_experts / rank / lora_alpha: experts per linear, their LoRA rank and alpha.
        target_modules: MLP linears that get an expert pool.
        attention_rank: rank of a plain LoRA on q/k/v/o projections (0 = none, as in LoRAMoE).
        aux_loss / aux_coef: balance loss and its coefficient, as LoRA-Gen.
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "loramoe"
    LABEL = "LoRAMoE (dense token routing)"

    def __init__(self, edge: str = "bundled:smollm2-135m-instruct", cloud: str = "bundled:smollm2-135m-instruct",
                 system_prompt: bool = False, num_experts: int = 8, rank: int = 8, lora_alpha: float = 16.0,
                 target_modules: list[str] | None = None, attention_rank: int = 0, aux_loss: str = "cv2",
                 aux_coef: float = 0.01, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 10,
                 min_lr_ratio: float = 0.1, scoring: str = "loglik", metric: str = "acc_norm",
                 max_new_tokens: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._load_edge(edge, seed)
        from loragen.models.components.moe_lora import install_loramoe

        self.moe_layers = install_loramoe(self.edge, num_experts=num_experts, rank=rank, lora_alpha=lora_alpha,
                                          targets=tuple(target_modules or ("gate_proj", "up_proj", "down_proj")),
                                          attention_rank=attention_rank)

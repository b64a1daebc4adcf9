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
from torch import nn

from loragen import LoRAGenError
from loragen.models.baselines.base import EdgeBaselineModule
from loragen.models.config import PoolConfig, group


class _MoEBaseline(EdgeBaselineModule):
    MERGEABLE = False

    pool_config: PoolConfig  # always set (``__init__``)
    moe_layers: list[nn.Module]  # set by each subclass

    def __init__(self, pool: PoolConfig = PoolConfig(), attention_rank: int = 8, **kwargs: Any) -> None:
        self.check_args({"attention_rank": attention_rank})
        pool = group("pool", pool)
        super().__init__(**kwargs)
        self.pool_config = pool

    @staticmethod
    def check_args(args: dict[str, Any]) -> None:
        if args.get("attention_rank", 0) < 0:
            raise LoRAGenError(f"attention_rank={args['attention_rank']} must be >= 0 (0 = no attention LoRA)")

    def aux_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from loragen.models.components.moe_lora import moe_aux_loss

        return moe_aux_loss(self.moe_layers, self.pool_config.aux_loss, token_mask=batch["attention_mask"])

    def result_info(self) -> dict[str, Any]:
        return {**super().result_info(), "num_experts": self.pool_config.num_experts}


class MixLoRABaseline(_MoEBaseline):
    """MixLoRA-style sparse mixture: token-level top-k routing over LoRA experts of each MLP.

    Args:
        pool: experts per MLP (``num_experts``), experts per token (``top_k``), expert LoRA ``rank`` and
            ``lora_alpha``, and the balance loss (``aux_loss`` / ``aux_coef``), as LoRA-Gen's pool
            (``target_modules`` does not apply: the experts are whole MLPs).
        attention_rank: rank of the plain LoRA on q/k/v/o projections (0 = none).
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "mixlora"
    LABEL = "MixLoRA (top-k token routing)"

    def __init__(self, attention_rank: int = 8, **kwargs: Any) -> None:
        super().__init__(attention_rank=attention_rank, **kwargs)
        from loragen.models.components.moe_lora import install_mixlora

        pool = self.pool_config
        self.moe_layers = install_mixlora(
            self.edge,
            num_experts=pool.num_experts,
            top_k=pool.top_k,
            rank=pool.rank,
            lora_alpha=pool.lora_alpha,
            attention_rank=attention_rank,
        )


class LoRAMoEBaseline(_MoEBaseline):
    """LoRAMoE-style dense mixture: every LoRA expert of each MLP linear, weighted per token by a softmax router.

    Args:
        pool: experts per linear (``num_experts``), their ``rank`` and ``lora_alpha``, the linears
            (``target_modules``; null = the MLP linears) and the balance loss; ``top_k`` does not apply
            (every expert contributes).
        attention_rank: rank of a plain LoRA on q/k/v/o projections (0 = none, as in LoRAMoE).
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "loramoe"
    LABEL = "LoRAMoE (dense token routing)"

    # alike in shape to MixLoRABaseline.__init__: another installer, its own arguments and default; kept apart
    def __init__(self, attention_rank: int = 0, **kwargs: Any) -> None:
        super().__init__(attention_rank=attention_rank, **kwargs)
        from loragen.models.components.moe_lora import install_loramoe

        pool = self.pool_config
        self.moe_layers = install_loramoe(
            self.edge,
            num_experts=pool.num_experts,
            rank=pool.rank,
            lora_alpha=pool.lora_alpha,
            targets=pool.targets(("gate_proj", "up_proj", "down_proj")),
            attention_rank=attention_rank,
        )

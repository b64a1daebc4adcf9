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
from loragen.models.components import checkpointed
from loragen.models.components.expert_pool import DEFAULT_TARGETS, decoder_layers
from loragen.models.config import PoolConfig, group


class LoRABaseline(EdgeBaselineModule):
    """One PEFT LoRA adapter on the edge model.

    Args:
        pool: one adapter of the rank and scale of the LoRA LoRA-Gen merges into the edge: rank
            ``top_k · rank``, alpha ``top_k · lora_alpha`` (so ``alpha / rank`` is the pool's scale), on the
            pool's ``target_modules`` (default: every attention and MLP projection). ``loragen compare``
            passes LoRA-Gen's pool, so both serve adapters of one size; ``num_experts`` and the balance
            loss do not apply to one adapter.
        lora_dropout: dropout on the LoRA input in training.
        activation_checkpointing: recompute each decoder layer's activations in the backward pass instead of
            storing them (gradients unchanged; a step took 1.47x as long in scripts/benchmark_checkpointing.py).
            Needed to train with the system prompt on long prompts: at batch 8 and the suite's 1k-token prompts
            the stored attention maps alone outgrow 24 GB.
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "lora"
    LABEL = "LoRA"
    MERGEABLE = True

    _peft: Any  # the PeftModel (outside the module tree): it forwards the adapter methods dynamically

    def __init__(
        self,
        pool: PoolConfig = PoolConfig(),
        lora_dropout: float = 0.0,
        activation_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        self.check_args({"lora_dropout": lora_dropout})
        pool = group("pool", pool)
        super().__init__(**kwargs)
        self.pool_config, self.lora_dropout = pool, lora_dropout
        self.activation_checkpointing = activation_checkpointing
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=pool.top_k * pool.rank,
            lora_alpha=pool.top_k * pool.lora_alpha,  # type: ignore[arg-type]  # PEFT annotates int; floats work
            target_modules=list(pool.targets(DEFAULT_TARGETS)),
            lora_dropout=lora_dropout,
            bias="none",
        )
        # PEFT injects its LoRA layers into ``self.edge`` in place; the wrapper is kept out of the
        # module tree so parameters are not registered twice.
        object.__setattr__(self, "_peft", get_peft_model(self.edge, config))

    @staticmethod
    def check_args(args: dict[str, Any]) -> None:
        if not 0 <= args.get("lora_dropout", 0.0) < 1:
            raise LoRAGenError(f"lora_dropout={args['lora_dropout']} must be in [0, 1)")

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.activation_checkpointing:
            return super().hidden_states(input_ids, attention_mask)
        with checkpointed(decoder_layers(self.edge)[1]):
            return super().hidden_states(input_ids, attention_mask)

    def train(self, mode: bool = True) -> LoRABaseline:
        super().train(mode)
        if mode and self.lora_dropout:  # the LoRA dropout layers follow the training mode
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

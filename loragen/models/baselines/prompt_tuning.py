"""Prompt tuning (PEFT): ``num_virtual_tokens`` learned input embeddings read before every request.

The learned-prompt baseline: like LoRA-Gen it trains on the task mixture without the system prompt
in the edge context, but its soft prompt is shared by all tasks and occupies context at every
request (counted in the edge tokens per request); it cannot be merged into weights.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from loragen import LoRAGenError
from loragen.models.baselines.base import EdgeBaselineModule


class PromptTuningBaseline(EdgeBaselineModule):
    """Soft prompt on the edge model (PEFT ``PromptTuningConfig``).

    Args:
        num_virtual_tokens: length of the soft prompt.
        init_text: the soft prompt starts as the embeddings of this text's tokens (repeated to
            ``num_virtual_tokens``), PEFT's text initialisation without a hub tokenizer; empty =
            random initialisation at the scale of the token embeddings.
        Others: see ``EdgeBaselineModule``.
    """

    METHOD = "prompt_tuning"
    LABEL = "prompt tuning"
    MERGEABLE = False

    def __init__(
        self,
        num_virtual_tokens: int = 20,
        init_text: str = "Read the question, then give the correct answer.",
        **kwargs: Any,
    ) -> None:
        self.check_args({"num_virtual_tokens": num_virtual_tokens})
        super().__init__(**kwargs)
        from peft import PromptTuningConfig, TaskType, get_peft_model

        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
        peft_model = get_peft_model(self.edge, config)
        object.__setattr__(self, "_peft", peft_model)  # kept out of the module tree (holds the edge again)
        self.prompt_encoder = peft_model.prompt_encoder  # the trained soft prompt
        self.prefix_tokens = num_virtual_tokens
        table = self.edge.get_input_embeddings().weight
        weight = cast(nn.Embedding, self.prompt_encoder["default"].embedding).weight
        with torch.no_grad():
            ids = self.backbone.tokenizer(init_text, add_special_tokens=False)["input_ids"] if init_text else []
            if ids:
                ids = (ids * (num_virtual_tokens // len(ids) + 1))[:num_virtual_tokens]
                weight.copy_(table[torch.tensor(ids, device=table.device)])
            else:
                weight.normal_(0.0, float(table.std()))
        weight.requires_grad_(True)

    @staticmethod
    def check_args(args: dict[str, Any]) -> None:
        if args.get("num_virtual_tokens", 1) < 1:
            raise LoRAGenError(f"num_virtual_tokens={args['num_virtual_tokens']} must be >= 1")

    def prefix_embeds(self) -> torch.Tensor:
        """(1, n, hidden) in the edge's dtype (the trained parameter itself stays float32, as in PEFT)."""
        dtype = self.edge.get_input_embeddings().weight.dtype
        return cast(nn.Embedding, self.prompt_encoder["default"].embedding).weight.to(dtype)[None]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n, b = self.prefix_tokens, input_ids.shape[0]
        embeds = torch.cat([self.prefix_embeds().expand(b, -1, -1), self.edge.get_input_embeddings()(input_ids)], 1)
        mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        out = self.edge.get_decoder()(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return out.last_hidden_state[:, n:]

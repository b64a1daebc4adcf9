"""``LoRAGen``: cloud generator → router → expert pool → edge model, as one plain ``nn.Module``.

The LightningModule (``loragen.models.LoRAGenModule``) adds loss, metrics, optimizers and
checkpointing around it; deployment code uses it directly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loragen.backbones import Backbone
from loragen.models.components import eval_mode
from loragen.models.components.cloud_states import CloudStates
from loragen.models.components.edge_lora import EdgeLoRA
from loragen.models.components.expert_pool import DEFAULT_TARGETS, ExpertPool, GeneratedLoRA
from loragen.models.components.fingerprint import PairFingerprint
from loragen.models.components.generator import CloudGenerator
from loragen.models.components.router import Router, Routing


class LoRAGen(nn.Module):
    """The LoRA-Gen model for one cloud/edge pair.

    Trainable: meta tokens (optional), cloud LoRA (optional), router, expert pool.
    Frozen: the cloud and edge backbones. With ``cloud_states`` (a ``loragen encode`` file) the cloud backbone
    may be a tokenizer alone (``model=None``): the states stand in for the cloud's passes.
    """

    def __init__(
        self,
        cloud: Backbone,
        edge: Backbone,
        *,
        # alike in shape to LoRAGenModule.__init__ (passes these on) and to data/datamodule.py's and
        # data/task_datamodule.py's __init__ (other arguments): kept apart
        num_experts: int = 8,
        top_k: int = 2,
        rank: int = 8,
        lora_alpha: float = 16.0,
        target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
        router_hidden: int = 256,
        layer_embedding: bool = True,
        router_noise: str = "gaussian",
        router_center: bool = False,
        train_meta_tokens: bool = False,
        cloud_lora_rank: int = 0,
        seed: int = 0,
        cloud_states: CloudStates | None = None,
    ) -> None:
        super().__init__()
        self.cloud_backbone, self.edge_backbone = cloud, edge
        self.edge = edge.model
        self.pool = ExpertPool(
            edge.model,
            target_modules,
            num_experts=num_experts,
            rank=rank,
            lora_alpha=lora_alpha,
            top_k=top_k,
            seed=seed,
        )
        self.generator = CloudGenerator(
            cloud.model,
            self.pool.num_layers,
            train_meta_tokens=train_meta_tokens,
            cloud_lora_rank=cloud_lora_rank,
            seed=seed,
            states=cloud_states,
            describe=cloud.tokenizer.decode,
        )
        self.router = Router(
            self.generator.hidden_size,
            num_experts,
            top_k,
            self.pool.num_layers,
            hidden=router_hidden,
            layer_embedding=layer_embedding,
            noise=router_noise,
            center=router_center,
        )
        self.edge_lora = EdgeLoRA(self.edge, self.pool)
        cloud_part = cloud_states.cloud if cloud_states is not None else None
        self.fingerprint = PairFingerprint.of(cloud, edge, self.pool.module_shapes, cloud_part)

    def route(self, system_ids: torch.Tensor, system_mask: torch.Tensor) -> Routing:
        """Gates for each row of a batch of tokenized system prompts."""
        if self.edge_lora.merged and self.generator.cloud is self.edge:
            raise RuntimeError("cloud and edge share weights and a LoRA is merged: unmerge before routing")
        return self.router(self.generator(system_ids, system_mask))

    def forward(
        self,
        system_ids: torch.Tensor,
        system_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[Any, Routing]:
        """Functional (training) path: edge logits with each sample's generated LoRA applied."""
        routing = self.route(system_ids, system_mask)
        with self.edge_lora.routing(routing.indices, routing.weights):
            out = self.edge(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out, routing

    def hidden_states(
        self,
        system_ids: torch.Tensor,
        system_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Routing]:
        """Functional path up to the edge's final hidden states (the caller applies the LM head
        only where logits are needed)."""
        routing = self.route(system_ids, system_mask)
        with self.edge_lora.routing(routing.indices, routing.weights):
            out = self.edge.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state, routing

    def functional(self, lora: GeneratedLoRA) -> Any:
        """A context in which the edge serves one generated LoRA by hooks, as in training (parity checks)."""
        if lora.indices is None or lora.weights is None:
            raise ValueError("this LoRA carries no routing (indices / weights): serve it merged instead")
        return self.edge_lora.routing(lora.indices[None], lora.weights[None])

    @torch.no_grad()
    def generate(self, system_ids: torch.Tensor, system_mask: torch.Tensor) -> list[GeneratedLoRA]:
        """Deployment: one generated LoRA per system prompt (router in eval mode, no noise)."""
        with eval_mode(self.router):
            routing = self.route(system_ids, system_mask)
        return [self.pool.assemble(g).detach() for g in routing.gates]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what is trained: meta tokens, cloud LoRA, router (with its buffers) and pool (never the
        backbones)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        names |= {n for n, _ in self.named_parameters() if n.startswith(("router.", "pool.", "generator.meta"))}
        names |= {n for n, _ in self.named_buffers() if n.startswith("router.")}
        full = self.state_dict()
        return {n: full[n] for n in sorted(names)}

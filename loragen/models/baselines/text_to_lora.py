"""Text-to-LoRA on loragen's pair: a hypernetwork maps the prompt's embedding to every target's LoRA.

Adapted from Text-to-LoRA (Charakorn et al., "Text-to-LoRA: Instant Transformer Adaption", ICML 2025;
SakanaAI/text-to-lora, Apache-2.0), trained end to end on the answer loss as its SFT variant:

- *Task embedding*: T2L embeds the task description with a separate text encoder (gte-large-en-v1.5 or
  the base LLM's mean hidden state); here the cloud reads the system prompt and its final hidden states
  are mean-pooled (``CloudGenerator(pooling="mean")``: no meta tokens). The cloud stays frozen, so the
  embedding of each prompt is computed once and cached.
- *Hypernetwork* as T2L's: the task embedding through a linear + LayerNorm encoder (``latent/2``); learned
  layer-depth and module-type embeddings (``latent/4`` each, with LayerNorm); their concatenation through
  a mixer MLP, two pre-LayerNorm residual MLP blocks and an MLP to ``head_in``; then one linear head per
  module type that emits the flattened ``A`` (rank × in) and ``B`` (out × rank) of that (layer, module).
  Like T2L's ``match_lora_init``, head weights start at zero and head biases at a PEFT LoRA's
  initialisation (``A`` kaiming-uniform, ``B`` zero), so the untrained hypernetwork emits an ordinary
  fresh LoRA and the edge starts unchanged.
- *Differences*: ``head_in`` defaults to 128, not T2L's 512: with every attention and MLP projection as
  target and rank 16 the heads emit 162,816 numbers per (layer, prompt), and 512 would make them 83 M
  parameters where LoRA-Gen's whole pool has 19.5 M (on SmolLM2-135M); T2L targets ``q_proj`` / ``v_proj``
  at rank 8. The rank and scale are LoRA-Gen's merged ones (``top_k · rank``, ``top_k · lora_alpha``) so
  the two methods serve adapters of one size. No reconstruction pre-training on a library of LoRAs (T2L's
  other variant) and no one-hot task embeddings: only descriptions.

Served exactly as LoRA-Gen (``PromptLoRAMethod``): one LoRA per system prompt, merged into the edge,
without the system prompt, the original weights restored bit for bit; the same prompt-sensitivity rows
(own / another task's / a task-free prompt's / a held-out paraphrase's LoRA) and reference rows.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from loragen.backbones import Backbone
from loragen.models.components import eval_mode
from loragen.models.components.edge_lora import EdgeLoRA
from loragen.models.components.expert_pool import DEFAULT_TARGETS, GeneratedLoRA, decoder_layers, find_target_sites
from loragen.models.components.fingerprint import PairFingerprint
from loragen.models.components.generator import CloudGenerator
from loragen.models.config import EvalConfig, OptimConfig, PoolConfig, group
from loragen.models.prompt_lora import PromptLoRAMethod, distinct_rows, settings_for


def _mlp(size: int, out: int, dropout: float, first: nn.Module, last_dropout: bool = True) -> nn.Sequential:
    """T2L's MLP shape: ``first`` (LayerNorm or dropout), Linear to 4x, SiLU, dropout, Linear to ``out``, SiLU."""
    tail = [nn.Dropout(dropout)] if last_dropout else []
    return nn.Sequential(
        first, nn.Linear(size, 4 * size), nn.SiLU(), nn.Dropout(dropout), nn.Linear(4 * size, out), nn.SiLU(), *tail
    )


class _Residual(nn.Module):
    """T2L's ``MLPResidualBlock``: ``x + MLP(LN(x))``."""

    def __init__(self, size: int, dropout: float) -> None:
        super().__init__()
        self.mlp = _mlp(size, size, dropout, nn.LayerNorm(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class HyperLoRA(nn.Module):
    """Task embedding ``(batch, d)`` → LoRA factors for every (layer, module): ``{module: (A, B)}`` with
    ``A`` (batch, layers, rank, in) and ``B`` (batch, layers, out, rank)."""

    def __init__(
        self,
        embedding_size: int,
        num_layers: int,
        module_shapes: dict[str, tuple[int, int]],
        rank: int,
        *,
        latent: int = 128,
        head_in: int = 128,
        dropout: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_layers, self.rank = num_layers, rank
        self.modules_order = sorted(module_shapes)
        self.shapes = dict(module_shapes)  # module -> (out, in)
        quarter = latent // 4
        size = latent // 2 + 2 * quarter
        self.task_encoder = nn.Sequential(nn.Linear(embedding_size, latent // 2), nn.LayerNorm(latent // 2))
        self.depth = nn.Sequential(nn.Embedding(num_layers, quarter), nn.LayerNorm(quarter))
        self.kind = nn.Sequential(nn.Embedding(len(self.modules_order), quarter), nn.LayerNorm(quarter))
        self.mixer = _mlp(size, size, dropout, nn.Dropout(dropout))
        self.blocks = nn.Sequential(_Residual(size, dropout), _Residual(size, dropout))
        self.to_head = _mlp(size, head_in, dropout, nn.LayerNorm(size), last_dropout=False)
        gen = torch.Generator().manual_seed(seed)
        self.heads = nn.ModuleDict()
        for module in self.modules_order:
            out_f, in_f = self.shapes[module]
            head = nn.Linear(head_in, rank * (in_f + out_f))
            with torch.no_grad():  # T2L's match_lora_init: a fresh PEFT LoRA whatever the input
                head.weight.zero_()
                bound = 1.0 / math.sqrt(in_f)  # PEFT's kaiming_uniform(a=sqrt(5)) bound for A
                a = (torch.rand(rank * in_f, generator=gen) * 2 - 1) * bound
                head.bias.copy_(torch.cat([a, torch.zeros(rank * out_f)]))
            self.heads[_key(module)] = head

    def forward(self, embedding: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        batch, layers = embedding.shape[0], self.num_layers
        task = self.task_encoder(embedding.to(cast(nn.Linear, self.task_encoder[0]).weight.dtype))  # (b, latent/2)
        depth = self.depth(torch.arange(layers, device=embedding.device))  # (L, latent/4)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m, module in enumerate(self.modules_order):
            kind = self.kind(torch.tensor([m], device=embedding.device)).expand(layers, -1)
            x = torch.cat(
                [task[:, None].expand(-1, layers, -1), depth.expand(batch, -1, -1), kind.expand(batch, -1, -1)], dim=-1
            )  # (b, L, size)
            flat = self.heads[_key(module)](self.to_head(self.blocks(self.mixer(x))))
            out_f, in_f = self.shapes[module]
            a, b = flat.split([self.rank * in_f, self.rank * out_f], dim=-1)
            out[module] = (a.reshape(batch, layers, self.rank, in_f), b.reshape(batch, layers, out_f, self.rank))
        return out


def _key(module: str) -> str:
    return module.replace(".", "__")


class TextToLoRA(nn.Module):
    """Frozen cloud (mean-pooled prompt embedding) → ``HyperLoRA`` → LoRA on the frozen edge."""

    def __init__(
        self,
        cloud: Backbone,
        edge: Backbone,
        *,
        rank: int,
        lora_alpha: float,
        target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
        # HyperLoRA.__init__'s keywords, passed on (alike in shape, kept apart)
        latent: int = 128,
        head_in: int = 128,
        dropout: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cloud_backbone, self.edge_backbone = cloud, edge
        self.edge = edge.model
        self.sites = find_target_sites(edge.model, tuple(target_modules))
        self.num_layers = len(decoder_layers(edge.model)[1])
        shapes: dict[str, tuple[int, int]] = {}
        for site in self.sites:
            shapes.setdefault(site.name, (site.out_features, site.in_features))
        self.module_shapes = shapes
        self.rank, self.scale = rank, lora_alpha / rank
        self.generator = CloudGenerator(cloud.model, 0, pooling="mean", seed=seed)
        self.hyper = HyperLoRA(
            self.generator.hidden_size,
            self.num_layers,
            shapes,
            rank,
            latent=latent,
            head_in=head_in,
            dropout=dropout,
            seed=seed,
        )
        self.edge_lora = EdgeLoRA(self.edge, sites=self.sites)
        self.fingerprint = PairFingerprint.of(cloud, edge, shapes)
        self.targets = sorted({s.name.rsplit(".", 1)[-1] for s in self.sites})

    def factors(
        self,
        system_ids: torch.Tensor,
        system_mask: torch.Tensor,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each row's factors per target path: ``A`` (b, rank, in), ``B`` (b, out, rank); the hypernetwork
        runs once per distinct prompt of the batch."""
        groups = distinct_rows(system_ids, system_mask)  # rows by identical prompt, in order of first appearance
        distinct = [rows[0] for rows in groups]
        index = torch.empty(system_ids.shape[0], dtype=torch.long, device=system_ids.device)
        for slot, rows in enumerate(groups):
            index[rows] = slot
        embedding = self.generator(system_ids[distinct], system_mask[distinct])[:, 0]  # (p, d)
        per_module = self.hyper(embedding)
        return {
            site.path: (per_module[site.name][0][index, site.layer], per_module[site.name][1][index, site.layer])
            for site in self.sites
        }

    # same signature as LoRAGen.hidden_states (components/lora_gen.py), the module's training call; other body
    def hidden_states(
        self,
        system_ids: torch.Tensor,
        system_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Functional path: the edge's final hidden states with each row's generated LoRA applied."""
        with self.edge_lora.applied(self.factors(system_ids, system_mask), self.scale):
            out = self.edge.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    @torch.no_grad()
    def generate(self, system_ids: torch.Tensor, system_mask: torch.Tensor) -> list[GeneratedLoRA]:
        """Deployment: one LoRA per system prompt (hypernetwork in eval mode: no dropout)."""
        with eval_mode(self.hyper):
            factors = self.factors(system_ids, system_mask)
        empty = torch.zeros(self.num_layers, 0)
        return [
            GeneratedLoRA(
                factors={p: (a[i].detach(), b[i].detach()) for p, (a, b) in factors.items()},
                scale=self.scale,
                rank=self.rank,
                gates=empty,
                targets=list(self.targets),
            )
            for i in range(system_ids.shape[0])
        ]

    def functional(self, lora: GeneratedLoRA) -> Any:
        """A context in which the edge serves one generated LoRA by hooks, as in training."""
        return self.edge_lora.applied({p: (a[None], b[None]) for p, (a, b) in lora.factors.items()}, lora.scale)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        full = self.state_dict()
        return {n: full[n] for n in sorted(full) if n.startswith("hyper.")}


class TextToLoRAModule(PromptLoRAMethod):
    """Text-to-LoRA for one cloud/edge pair (see the module docstring for what is T2L's and what differs).

    Args:
        cloud: reads the system prompt; its mean final hidden state is the task embedding.
        edge: the model the generated LoRA adapts.
        pool: the adapter's size: rank ``top_k · rank`` and alpha ``top_k · lora_alpha`` on ``target_modules``
            (LoRA-Gen's merged LoRA; ``num_experts`` and the balance loss do not apply).
        latent: width of the hypernetwork's trunk input (T2L: 128); task, depth and module embeddings take
            half, a quarter and a quarter of it.
        head_in: width entering the per-module output heads (T2L: 512; see the module docstring).
        dropout: dropout inside the hypernetwork in training (T2L: 0.05).
        init_from: start from the trained weights of a Text-to-LoRA checkpoint of the same settings.
        optim / eval / seed: see ``EdgeMethod``.
    """

    METHOD = "text_to_lora"
    LABEL = "Text-to-LoRA"
    SETTINGS = settings_for(METHOD, LABEL)

    def __init__(
        self,
        cloud: str = "bundled:smollm2-135m-instruct",
        edge: str = "bundled:smollm2-135m-instruct",
        pool: PoolConfig = PoolConfig(),
        latent: int = 128,
        head_in: int = 128,
        dropout: float = 0.05,
        init_from: str | None = None,
        optim: OptimConfig = OptimConfig(),
        eval: EvalConfig = EvalConfig(),
        seed: int = 0,
    ) -> None:  # noqa: A002
        self.check_args({"latent": latent, "head_in": head_in, "dropout": dropout})
        super().__init__(cloud=cloud, edge=edge, optim=optim, eval=eval, seed=seed)
        from loragen.backbones import load_backbone

        self.pool_config = pool = group("pool", pool)
        cloud_bb = load_backbone(cloud)
        edge_bb = cloud_bb if cloud == edge else load_backbone(edge)
        self.model = TextToLoRA(
            cloud_bb,
            edge_bb,
            rank=pool.top_k * pool.rank,
            lora_alpha=pool.top_k * pool.lora_alpha,
            target_modules=pool.targets(DEFAULT_TARGETS),
            latent=latent,
            head_in=head_in,
            dropout=dropout,
            seed=seed,
        )
        for backbone in {id(m): m for m in (self.model.edge, self.model.generator.cloud)}.values():
            backbone.requires_grad_(False)
        if init_from:
            self._init_from(init_from)

    @staticmethod
    def check_args(args: dict[str, Any]) -> None:
        from loragen import LoRAGenError

        if args.get("latent", 128) < 4 or args.get("latent", 128) % 4:
            raise LoRAGenError(
                f"latent={args['latent']} must be a multiple of 4 (>= 4): the task, depth and "
                "module embeddings take half, a quarter and a quarter of it"
            )
        if args.get("head_in", 128) < 1:
            raise LoRAGenError(f"head_in={args['head_in']} must be >= 1")
        if not 0 <= args.get("dropout", 0.0) < 1:
            raise LoRAGenError(f"dropout={args['dropout']} must be in [0, 1)")

    def training_forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.hidden_states(
            batch["system_ids"], batch["system_mask"], batch["input_ids"], batch["attention_mask"]
        ), None

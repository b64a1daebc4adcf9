"""``LoRAGenModule``: LoRA-Gen as a ``PromptLoRAMethod`` (the base serves one generated LoRA per system
prompt, merged, with the prompt-sensitivity rows; ``EdgeMethod`` owns the step and checkpoints).

What is LoRA-Gen's own: the model (cloud + meta tokens → router → expert pool, DESIGN §1), its training
path (each sample's gates applied by hooks, DESIGN §1.5), the balance loss, the specificity signals and the
gate distances between prompts reported by every test.
"""

from __future__ import annotations

from typing import Any

import torch

from loragen import LoRAGenError
from loragen.models.components.expert_pool import DEFAULT_TARGETS
from loragen.models.config import (
    NOISE_KINDS,
    EvalConfig,
    OptimConfig,
    PoolConfig,
    RouterNoise,
    SpecificityConfig,
    check_choice,
    group,
)
from loragen.models.prompt_lora import PromptLoRAMethod, settings_for

SETTINGS = settings_for("loragen", "LoRA-Gen")


class LoRAGenModule(PromptLoRAMethod):
    """LoRA-Gen for one cloud/edge pair.

    Args:
        cloud: cloud model source (``bundled:…``, ``tiny:…``, hub id, local directory, ``.gguf``).
        edge: edge model source.
        pool: the expert pool and its balance loss (``loragen.models.config.PoolConfig``: experts, top-k,
            rank, alpha, target modules, ``aux_loss`` / ``aux_coef``).
        router_hidden: router MLP width (0 = linear router).
        layer_embedding: learned per-layer embedding in the router.
        router_noise: training noise, ``none | gaussian | gumbel``.
        router_center: subtract the running mean of the meta-token states (per layer, over the training
            prompts) before the router, so it sees what differs between prompts.
        train_meta_tokens: learn the meta-token embeddings (backprop through the frozen cloud).
        cloud_lora_rank: > 0 trains a PEFT LoRA of this rank on the cloud.
        init_from: start from the trained weights of this checkpoint (e.g. Alpaca pre-training before
            multi-task training) without its optimizer state or step count; the pair must match.
        specificity: training signals for a LoRA specific to its prompt (``SpecificityConfig``: counterfactual
            margin, null-prompt control, context distillation; all off by default).
        cloud_states: a states file of ``loragen encode`` (the frozen cloud's meta-token states per system
            prompt): the cloud is then not loaded (unless it is also the edge) and never runs for the prompts the
            file holds; its meta tokens are the file's. Needs a frozen cloud side (no ``train_meta_tokens``, no
            ``cloud_lora_rank``); a file for another cloud or other meta tokens is refused. Never stored in
            checkpoints.
        optim / eval / seed: see ``EdgeMethod`` (``eval.sensitivity``: the prompt-sensitivity rows; the
            mean gate distance between the prompts, and to a task-free one, is reported by every test).
    """

    METHOD = "loragen"
    LABEL = "LoRA-Gen"
    SETTINGS = SETTINGS

    # alike in shape to EdgeMethod.__init__ and TextToLoRAModule.__init__: each method's own arguments, read by
    # the CLI from the signature; kept apart
    def __init__(
        self,
        cloud: str = "bundled:smollm2-135m-instruct",
        edge: str = "bundled:smollm2-135m-instruct",
        pool: PoolConfig = PoolConfig(),
        router_hidden: int = 256,
        layer_embedding: bool = True,
        router_noise: RouterNoise = "gaussian",
        router_center: bool = False,
        train_meta_tokens: bool = False,
        cloud_lora_rank: int = 0,
        init_from: str | None = None,
        optim: OptimConfig = OptimConfig(),
        eval: EvalConfig = EvalConfig(),
        specificity: SpecificityConfig = SpecificityConfig(),
        seed: int = 0,
        cloud_states: str | None = None,
    ) -> None:  # noqa: A002
        self.check_args(
            {
                "router_noise": router_noise,
                "cloud_lora_rank": cloud_lora_rank,
                "init_from": init_from,
                "train_meta_tokens": train_meta_tokens,
                "cloud_states": cloud_states,
            }
        )
        super().__init__(cloud=cloud, edge=edge, optim=optim, eval=eval, seed=seed)
        from loragen.backbones import load_backbone
        from loragen.models.components.lora_gen import LoRAGen

        self.pool_config: PoolConfig = group("pool", pool)
        pool = self.pool_config
        self.specificity = group("specificity", specificity)
        share = cloud == edge and cloud_lora_rank == 0  # one frozen copy serves both roles
        states = None
        if cloud_states:
            cloud_bb, states = cloud_side_from_states(cloud, cloud_states, load=share)
        else:
            cloud_bb = load_backbone(cloud)
        edge_bb = cloud_bb if share else load_backbone(edge)
        self.model = LoRAGen(
            cloud_bb,
            edge_bb,
            num_experts=pool.num_experts,
            top_k=pool.top_k,
            rank=pool.rank,
            lora_alpha=pool.lora_alpha,
            target_modules=pool.targets(DEFAULT_TARGETS),
            router_hidden=router_hidden,
            layer_embedding=layer_embedding,
            router_noise=router_noise,
            router_center=router_center,
            train_meta_tokens=train_meta_tokens,
            cloud_lora_rank=cloud_lora_rank,
            seed=seed,
            cloud_states=states,
        )
        if init_from:
            self._init_from(init_from)
        self.last_routing: tuple[torch.Tensor, list[str]] | None = None
        self._train_routing: Any = None  # the routing of the current training step (specificity signals)
        self._null_ids: list[list[int]] | None = None

    @staticmethod
    def check_args(args: dict[str, Any]) -> None:
        """Settings of LoRA-Gen's own arguments that cannot work, before any model loads."""
        check_choice("router_noise", args.get("router_noise", "gaussian"), NOISE_KINDS)
        if args.get("cloud_lora_rank", 0) < 0:
            raise LoRAGenError(f"cloud_lora_rank={args['cloud_lora_rank']} must be >= 0 (0 = frozen cloud)")
        if args.get("init_from"):  # a file that is not a loragen checkpoint fails here, before any model loads
            from loragen.checkpoint import load_checkpoint, resolve_checkpoint

            load_checkpoint(resolve_checkpoint(args["init_from"]))
        if args.get("cloud_states"):
            if args.get("train_meta_tokens") or args.get("cloud_lora_rank", 0):
                raise LoRAGenError(
                    "model.cloud_states holds the states of a frozen cloud side, but train_meta_tokens or "
                    "cloud_lora_rank trains it (its states change every step): leave out cloud_states or train "
                    "neither"
                )
            from loragen.models.components.cloud_states import CloudStates

            CloudStates.check_file(args["cloud_states"])  # missing or not a states file: one line, no model loaded

    def prompt_distances(self, task_loras: list[Any], generic: Any) -> dict[str, Any]:
        return gate_distances([lora.gates for lora in task_loras], generic.gates)

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Edge hidden states with each sample's generated LoRA applied, and the routing."""
        return self.model.hidden_states(
            batch["system_ids"], batch["system_mask"], batch["input_ids"], batch["attention_mask"]
        )

    def training_forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from loragen.models.components.router import auxiliary_loss

        hidden, routing = self(batch)
        self._train_routing = routing  # the specificity signals reuse it
        if self.training:  # read by router-statistics callbacks
            self.last_routing = (routing.gates.detach(), list(batch["task"]))
        return hidden, auxiliary_loss(routing, self.pool_config.aux_loss)

    @property
    def train_teacher_prompt(self) -> bool:
        """Read by the DataModule: context distillation needs the training sequences with the system prompt."""
        return bool(self.specificity.distill_coef)

    @property
    def train_sibling_prompt(self) -> bool:
        """Read by the DataModule: the sibling margin needs a sibling task's system prompt with every example."""
        return bool(self.specificity.margin_coef) and self.specificity.margin_against == "sibling"

    def extra_losses(self, batch: dict[str, Any], hidden: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """The ``specificity`` signals that are switched on (``loragen.models.specificity``)."""
        spec, terms = self.specificity, {}
        if spec.margin_coef:
            terms["margin"] = (spec.margin_coef, self._margin_term(batch, hidden))
        if spec.null_coef:
            terms["null"] = (spec.null_coef, self._null_term())
        if spec.distill_coef:
            terms["distill"] = (spec.distill_coef, self._distill_term(batch, hidden))
        self._train_routing = None
        return terms

    def _margin_term(self, batch: dict[str, Any], hidden: torch.Tensor) -> torch.Tensor:
        from loragen.models.specificity import answer_logliks, margin_loss, other_task_rows

        edge, labels = self.scoring_model(), batch["labels"]
        own, valid = answer_logliks(edge, hidden, labels)
        if self.specificity.margin_against == "sibling":
            if "sibling_system_ids" not in batch:
                raise LoRAGenError(
                    "specificity.margin_against=sibling needs each training example's sibling system prompt: "
                    "train with a loragen DataModule (it adds them when the model asks)"
                )
            other_routing = self.model.route(batch["sibling_system_ids"], batch["sibling_system_mask"])
            indices, weights = other_routing.indices, other_routing.weights
            valid = valid & batch["sibling_valid"].to(valid.device)
        else:
            other_rows = other_task_rows(list(batch["task"]))
            if other_rows is None:  # one task in the batch: no counterfactual
                return own.sum() * 0.0
            other_rows = other_rows.to(labels.device)
            indices, weights = self._train_routing.indices[other_rows], self._train_routing.weights[other_rows]
        with self.model.edge_lora.routing(indices, weights):
            other_hidden = edge.get_decoder()(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).last_hidden_state
        other, _ = answer_logliks(edge, other_hidden, labels)
        return margin_loss(own, other, valid, self.specificity.margin)

    def null_prompt_ids(self) -> list[list[int]]:
        """The task-free prompts of the null-prompt control, tokenized for the cloud (never empty)."""
        if self._null_ids is None:
            tokenizer = self.model.cloud_backbone.tokenizer
            rows = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in self.specificity.null_prompts]
            self._null_ids = [r if r else [tokenizer.bos_token_id or tokenizer.eos_token_id or 0] for r in rows]
        return self._null_ids

    def method_prompt_ids(self) -> list[list[int]]:
        return super().method_prompt_ids() + (self.null_prompt_ids() if self.specificity.null_coef else [])

    def _null_term(self) -> torch.Tensor:
        from loragen.data.tokenize import pad

        null_ids = self.null_prompt_ids()
        ids = pad(null_ids, 0).to(self.device)
        mask = pad([[1] * len(r) for r in null_ids], 0).to(self.device)
        routing = self.model.route(ids, mask)
        norms = [self.model.pool.delta_sq_norm(routing.indices[i], routing.weights[i]) for i in range(ids.shape[0])]
        return torch.stack(norms).mean()

    def _distill_term(self, batch: dict[str, Any], hidden: torch.Tensor) -> torch.Tensor:
        from loragen.eval.scoring import answer_logits
        from loragen.models.specificity import aligned_answer_rows, distillation_loss

        if "teacher_input_ids" not in batch:
            raise LoRAGenError(
                "specificity.distill_coef > 0 needs the training sequences with the system prompt: "
                "train with a loragen DataModule (it adds them when the model asks)"
            )
        edge, labels, teacher_labels = self.scoring_model(), batch["labels"], batch["teacher_labels"]
        rows = aligned_answer_rows(labels, teacher_labels)
        if not rows.any():
            return hidden.sum() * 0.0
        with torch.no_grad():  # the plain edge reading the prompt: no LoRA, no gradient
            teacher_hidden = edge.get_decoder()(
                input_ids=batch["teacher_input_ids"][rows],
                attention_mask=batch["teacher_attention_mask"][rows],
                use_cache=False,
            ).last_hidden_state
            teacher = answer_logits(edge, teacher_hidden, teacher_labels[rows])
        student = answer_logits(edge, hidden[rows], labels[rows])
        return distillation_loss(student, teacher, self.specificity.distill_temperature)


def cloud_side_from_states(cloud: str, path: str, load: bool) -> tuple[Any, Any]:
    """The cloud backbone and the states of a ``loragen encode`` file. ``load``: the cloud model is loaded anyway
    (it is also the edge), checked against the file in full and kept to read prompts the file lacks; else only
    its tokenizer is loaded, and the file is checked against the source and vocabulary it names."""
    from loragen.backbones import Backbone, load_backbone, load_tokenizer
    from loragen.models.components.cloud_states import CloudStates, cloud_fingerprint

    states = CloudStates.load(path)
    if load:
        backbone = load_backbone(cloud)
        states.check_cloud(cloud_fingerprint(backbone))
    else:
        backbone = Backbone(model=None, tokenizer=load_tokenizer(cloud), source=cloud)
        states.check_cloud({"cloud": cloud, "cloud_vocab": len(backbone.tokenizer)})
    return backbone, states


def gate_distances(task_gates: list[torch.Tensor], generic: torch.Tensor) -> dict[str, Any]:
    """How differently the router treats the prompts: the total-variation distance of two (L, n) gate
    matrices, ``½ Σ_e |g_a[l, e] − g_b[l, e]|`` averaged over layers (0: the same experts and weights
    everywhere; 1: disjoint experts), averaged over all pairs of prompts and from each prompt to the
    task-free one."""

    def tv(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(0.5 * (a.float() - b.float()).abs().sum(-1).mean())

    pairs = [tv(a, b) for i, a in enumerate(task_gates) for b in task_gates[i + 1 :]]
    return {
        "between_prompts": sum(pairs) / len(pairs) if pairs else None,
        "to_generic": sum(tv(g, generic) for g in task_gates) / len(task_gates),
        "prompts": len(task_gates),
        "definition": "total-variation distance of the gates, averaged over layers and prompt pairs",
    }

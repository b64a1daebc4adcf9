"""``LoRAGenModule``: LoRA-Gen as an ``EdgeMethod`` (the base owns the step, evaluation and checkpoints).

What is LoRA-Gen's own: training runs the functional path (each sample's generated LoRA applied by
hooks, DESIGN §1.5); validation, test and predict are deployment-faithful by default: at the start of
each epoch the generator runs once per distinct system prompt of the stage, and each prompt's items
are answered with its LoRA merged into the edge weights, *without* the system prompt; the exact
original weights are restored (and checked by the base). With ``eval.reference`` the plain edge
model is also scored with the full system prompt on the same items, so every results table carries
it; ``eval.sensitivity`` adds the rotated and task-free prompts' LoRAs on the same items, and for tasks with
a held-out paraphrase (the suite's) the LoRA of the prompt read with that paraphrase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loragen import LoRAGenError
from loragen.models.components.expert_pool import DEFAULT_TARGETS
from loragen.models.components.router import NOISE_KINDS
from loragen.models.config import GENERIC_PROMPT, EvalConfig, OptimConfig, PoolConfig, SpecificityConfig, group
from loragen.models.edge_method import EdgeMethod, Served

SETTINGS = {"loragen": "LoRA-Gen (merged, no system prompt)",
            "rotated": "LoRA-Gen, another task's LoRA (rotated)",
            "generic": "LoRA-Gen, a task-free prompt's LoRA",
            "paraphrase": "LoRA-Gen, the held-out paraphrase's LoRA",
            "prompted": "edge + full system prompt", "zero_shot": "edge, no system prompt, no LoRA"}
# the task-free system prompt of the prompt-sensitivity check: a generator that ignores its prompt serves
# every task as well with this prompt's LoRA as with the task's own (``config.GENERIC_PROMPT``)


class LoRAGenModule(EdgeMethod):
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
        optim / eval / seed: see ``EdgeMethod`` (``eval.sensitivity``: the prompt-sensitivity rows; the
            mean gate distance between the prompts, and to a task-free one, is reported by every test).
    """

    METHOD = "loragen"
    SETTINGS = SETTINGS
    REFERENCE_ROWS = True

    def __init__(self, cloud: str = "bundled:smollm2-135m-instruct", edge: str = "bundled:smollm2-135m-instruct",
                 pool: PoolConfig = PoolConfig(), router_hidden: int = 256, layer_embedding: bool = True,
                 router_noise: str = "gaussian", router_center: bool = False, train_meta_tokens: bool = False,
                 cloud_lora_rank: int = 0, init_from: str | None = None, optim: OptimConfig = OptimConfig(),
                 eval: EvalConfig = EvalConfig(), specificity: SpecificityConfig = SpecificityConfig(),
                 seed: int = 0) -> None:  # noqa: A002
        self.check_args({"router_noise": router_noise, "cloud_lora_rank": cloud_lora_rank, "init_from": init_from})
        super().__init__(cloud=cloud, edge=edge, optim=optim, eval=eval, seed=seed)
        from loragen.backbones import load_backbone
        from loragen.models.components.lora_gen import LoRAGen

        self.pool_config = pool = group("pool", pool)
        self.specificity = group("specificity", specificity)
        cloud_bb = load_backbone(cloud)
        share = cloud == edge and cloud_lora_rank == 0  # one frozen copy serves both roles
        edge_bb = cloud_bb if share else load_backbone(edge)
        self.model = LoRAGen(cloud_bb, edge_bb, num_experts=pool.num_experts, top_k=pool.top_k, rank=pool.rank,
                             lora_alpha=pool.lora_alpha, target_modules=pool.targets(DEFAULT_TARGETS),
                             router_hidden=router_hidden, layer_embedding=layer_embedding,
                             router_noise=router_noise, router_center=router_center,
                             train_meta_tokens=train_meta_tokens, cloud_lora_rank=cloud_lora_rank, seed=seed)
        self.init_from = init_from
        if init_from:
            self._init_from(init_from)
        self.last_routing: tuple[torch.Tensor, list[str]] | None = None
        self._train_routing: Any = None  # the routing of the current training step (specificity signals)
        self._null_ids: list[list[int]] | None = None
        self.task_loras: dict[bytes, Any] = {}  # system-prompt key -> GeneratedLoRA, per evaluation epoch
        self.rotation: dict[bytes, bytes] = {}  # prompt key -> the key whose LoRA the "rotated" check serves
        self.gate_distance: dict[str, Any] | None = None

    @staticmethod
    def check_args(args: dict[str, Any]) -> None:
        """Settings of LoRA-Gen's own arguments that cannot work, before any model loads."""
        if args.get("router_noise", "gaussian") not in NOISE_KINDS:
            raise LoRAGenError(f"router_noise={args['router_noise']!r} is unknown: choose one of {list(NOISE_KINDS)}")
        if args.get("cloud_lora_rank", 0) < 0:
            raise LoRAGenError(f"cloud_lora_rank={args['cloud_lora_rank']} must be >= 0 (0 = frozen cloud)")
        if args.get("init_from"):  # a file that is not a loragen checkpoint fails here, before any model loads
            from loragen.files import load_checkpoint
            from loragen.release import resolve_checkpoint

            load_checkpoint(resolve_checkpoint(args["init_from"]))

    # ------------------------------------------------------------------ what the base asks of a method

    def frozen_backbones(self) -> list[torch.nn.Module]:
        return [self.model.edge, self.model.generator.cloud]

    def scoring_model(self) -> Any:
        return self.model.edge

    def edge_tokenizer(self) -> Any:
        return self.model.edge_backbone.tokenizer

    def trained_state_names(self) -> set[str]:
        return {f"model.{k}" for k in self.model.trainable_state_dict()}

    def identity(self) -> dict[str, Any]:
        return {"fingerprint": self.model.fingerprint.to_dict(),
                **({"init_from": str(self.init_from)} if self.init_from else {})}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["loragen"]["rng"] = _rng_state()  # a resumed run's router noise continues exactly

    def check_identity(self, stored: dict[str, Any]) -> None:
        from loragen.models.components.fingerprint import PairFingerprint

        if stored.get("fingerprint") is None:
            raise LoRAGenError("this checkpoint has no loragen pair fingerprint: it was not written by loragen")
        PairFingerprint.from_dict(stored["fingerprint"]).check_compatible(self.model.fingerprint)
        if self._fitting() and "rng" in stored:  # router noise continues exactly where it stopped
            _set_rng_state(stored["rng"])

    def result_info(self) -> dict[str, Any]:
        info = {**super().result_info(), "eval_path": self.evaluation.path,
                "fingerprint": self.model.fingerprint.to_dict()}
        info.pop("edge")
        if self.gate_distance is not None:
            info["gate_distance"] = self.gate_distance
        return info

    def eval_settings(self) -> list[str]:
        settings = super().eval_settings()
        if self.evaluation.sensitivity:
            settings[1:1] = (["rotated", "generic"] if len(self.eval_tasks) > 1 else ["generic"]) + ["paraphrase"]
        return settings

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Edge hidden states with each sample's generated LoRA applied, and the routing."""
        return self.model.hidden_states(batch["system_ids"], batch["system_mask"], batch["input_ids"],
                                        batch["attention_mask"])

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
        other_rows = other_task_rows(list(batch["task"]))
        if other_rows is None:  # one task in the batch: no counterfactual
            return own.sum() * 0.0
        other_rows = other_rows.to(labels.device)
        routing = self._train_routing
        with self.model.edge_lora.routing(routing.indices[other_rows], routing.weights[other_rows]):
            other_hidden = edge.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                              use_cache=False).last_hidden_state
        other, _ = answer_logliks(edge, other_hidden, labels)
        return margin_loss(own, other, valid, self.specificity.margin)

    def _null_term(self) -> torch.Tensor:
        from loragen.data.tokenize import pad

        if self._null_ids is None:
            tokenizer = self.model.cloud_backbone.tokenizer
            rows = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in self.specificity.null_prompts]
            self._null_ids = [r if r else [tokenizer.bos_token_id or tokenizer.eos_token_id or 0] for r in rows]
        ids = pad(self._null_ids, 0).to(self.device)
        mask = pad([[1] * len(r) for r in self._null_ids], 0).to(self.device)
        routing = self.model.route(ids, mask)
        norms = [self.model.pool.delta_sq_norm(routing.indices[i], routing.weights[i]) for i in range(ids.shape[0])]
        return torch.stack(norms).mean()

    def _distill_term(self, batch: dict[str, Any], hidden: torch.Tensor) -> torch.Tensor:
        from loragen.models.scoring import answer_logits
        from loragen.models.specificity import aligned_answer_rows, distillation_loss

        if "teacher_input_ids" not in batch:
            raise LoRAGenError("specificity.distill_coef > 0 needs the training sequences with the system prompt: "
                               "train with a loragen DataModule (it adds them when the model asks)")
        edge, labels, teacher_labels = self.scoring_model(), batch["labels"], batch["teacher_labels"]
        rows = aligned_answer_rows(labels, teacher_labels)
        if not rows.any():
            return hidden.sum() * 0.0
        with torch.no_grad():  # the plain edge reading the prompt: no LoRA, no gradient
            teacher_hidden = edge.get_decoder()(input_ids=batch["teacher_input_ids"][rows],
                                                attention_mask=batch["teacher_attention_mask"][rows],
                                                use_cache=False).last_hidden_state
            teacher = answer_logits(edge, teacher_hidden, teacher_labels[rows])
        student = answer_logits(edge, hidden[rows], labels[rows])
        return distillation_loss(student, teacher, self.specificity.distill_temperature)

    # ------------------------------------------------------------------ serving: one LoRA per system prompt

    def served_groups(self, batch: dict[str, Any]) -> list[Served]:
        groups, _, loras = self._loras_for(batch)
        return [(members, self._served(lora)) for members, lora in zip(groups, loras, strict=True)]

    def grade_served(self, batch: dict[str, Any], stage: str) -> None:
        """Each prompt's items with its own LoRA, and the prompt-sensitivity rows."""
        groups, keys, loras = self._loras_for(batch)
        settings = self.eval_settings()
        for members, key, lora in zip(groups, keys, loras, strict=True):
            with self._served(lora):
                self._grade_items(stage, "loragen", batch, "prompt", members)
            if "rotated" in settings and key in self.rotation:  # another task's LoRA on these items
                with self._served(self.task_loras[self.rotation[key]]):
                    self._grade_items(stage, "rotated", batch, "prompt", members)
        if "generic" in settings and self._sensitivity_now():
            with self._served(self._generic_lora()):
                self._grade_items(stage, "generic", batch, "prompt", range(batch["input_ids"].shape[0]))
        if "paraphrase" in settings and self._sensitivity_now():
            self._grade_paraphrases(batch, stage)

    def _grade_paraphrases(self, batch: dict[str, Any], stage: str) -> None:
        """Items whose task has a held-out paraphrase (a description no training record read), served with
        the LoRA generated from the prompt with that paraphrase: does the generator follow the meaning?"""
        groups: dict[bytes, list[int]] = {}
        for i, ids in enumerate(batch.get("heldout_system_ids") or []):
            if ids is not None:
                groups.setdefault(prompt_key(ids), []).append(i)
        missing = [key for key in groups if key not in self.task_loras]
        if missing:
            ids = [batch["heldout_system_ids"][groups[key][0]] for key in missing]
            self.task_loras.update(zip(missing, self._generate_for(ids), strict=True))
        for key, members in groups.items():
            with self._served(self.task_loras[key]):
                self._grade_items(stage, "paraphrase", batch, "prompt", members)

    def _served(self, lora: Any) -> Any:
        """The edge serving ``lora``: merged into its weights (deployment), or by hooks (parity checks)."""
        if self.evaluation.path == "merged":
            return self.model.edge_lora.merged_lora(lora)
        return self.model.edge_lora.routing(lora.indices[None], lora.weights[None])
    def _generate_for(self, prompts: list[list[int]]) -> list[Any]:
        """One generated LoRA per tokenized system prompt (one cloud batch, right-padded)."""
        from loragen.data.tokenize import pad

        ids, mask = pad(prompts, 0), pad([[1] * len(p) for p in prompts], 0)
        return self.model.generate(ids.to(self.device), mask.to(self.device))

    def _generic_lora(self) -> Any:
        if GENERIC_KEY not in self.task_loras:
            ids = self.model.cloud_backbone.tokenizer(GENERIC_PROMPT, add_special_tokens=True)["input_ids"]
            self.task_loras[GENERIC_KEY] = self._generate_for([ids])[0]
        return self.task_loras[GENERIC_KEY]

    def prepare_serving(self, stage: str) -> None:
        """Before an evaluation epoch: one generated LoRA per distinct system prompt of the stage (one
        cloud pass each, none per batch) when there are few of them (a prompt per task; per-item prompts
        are generated batch by batch instead), and for the sensitivity check each task's LoRA (that of
        its first prompt), the task rotation and the gate distances."""
        self.task_loras, self.rotation, self.gate_distance = {}, {}, None
        examples = getattr(self.trainer.datamodule, "examples", {}).get(stage, []) if self._trainer else []
        prompts: dict[bytes, list[int]] = {}
        first_of_task: dict[str, bytes] = {}
        keyed = [(example["task"], prompt_key(example["system_ids"])) for example in examples]
        for example, (_, key) in zip(examples, keyed, strict=True):
            if key not in prompts and (len(prompts) < PRECOMPUTED_PROMPTS or example["task"] not in first_of_task):
                prompts[key] = example["system_ids"]
            first_of_task.setdefault(example["task"], key)
        if not prompts:
            return
        keys = list(prompts)
        for start in range(0, len(keys), PRECOMPUTED_PROMPTS):  # bounded cloud batches
            chunk = keys[start:start + PRECOMPUTED_PROMPTS]
            self.task_loras.update(zip(chunk, self._generate_for([prompts[k] for k in chunk]), strict=True))
        if stage in ("val", "test") and not self._fitting():  # cheap (one LoRA per prompt): every test has them
            tasks = list(first_of_task)
            if self._sensitivity_now() and len(tasks) > 1:  # task i's prompts get task i+1's (first) LoRA
                following = {t: first_of_task[tasks[(i + 1) % len(tasks)]] for i, t in enumerate(tasks)}
                for task, key in keyed:
                    self.rotation.setdefault(key, following[task])
            self.gate_distance = gate_distances([self.task_loras[first_of_task[t]].gates for t in tasks],
                                                self._generic_lora().gates)

    def _fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == "fit"

    def _sensitivity_now(self) -> bool:
        """The prompt-sensitivity rows are a test-time check: validation during fit skips their cost."""
        return bool(self.evaluation.sensitivity) and not self._fitting()

    def release_serving(self) -> None:
        self.task_loras = {}
        if self.model.edge_lora.merged:
            self.model.edge_lora.unmerge()
            raise RuntimeError("a generated LoRA was still merged into the edge after evaluation")

    def _loras_for(self, batch: dict[str, Any]) -> tuple[list[list[int]], list[bytes], list[Any]]:
        """Rows grouped by system prompt, each group's prompt key and generated LoRA — prepared once
        per evaluation epoch (``prepare_serving``), else generated here."""
        groups = _distinct_rows(batch["system_ids"], batch["system_mask"])
        keys = [_row_key(batch["system_ids"][g[0]], batch["system_mask"][g[0]]) for g in groups]
        missing = [i for i, key in enumerate(keys) if key not in self.task_loras]
        generated = iter([])
        if missing:
            firsts = torch.tensor([groups[i][0] for i in missing], device=self.device)
            generated = iter(self.model.generate(batch["system_ids"][firsts], batch["system_mask"][firsts]))
        loras = [self.task_loras[key] if key in self.task_loras else next(generated) for key in keys]
        return groups, keys, loras

    # ------------------------------------------------------------------ checkpoints

    def _init_from(self, path: str) -> None:
        from loragen.files import load_checkpoint
        from loragen.models.components.fingerprint import PairFingerprint
        from loragen.release import resolve_checkpoint

        path = str(resolve_checkpoint(path))
        if not Path(path).is_file():
            raise LoRAGenError(f"model.init_from checkpoint {path} does not exist: check the path")
        checkpoint = load_checkpoint(path)
        stored = checkpoint.get("loragen", {}).get("fingerprint")
        if stored is None:
            raise LoRAGenError(f"{path} has no loragen pair fingerprint: it was not written by loragen")
        PairFingerprint.from_dict(stored).check_compatible(self.model.fingerprint)
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        expected = set(self.model.trainable_state_dict())
        if expected - set(weights):
            raise LoRAGenError(f"{path} lacks trained weights {sorted(expected - set(weights))[:3]}: it was "
                               "trained with other settings (experts, rank, targets)")
        self.model.load_state_dict({k: weights[k] for k in expected}, strict=False)


def _rng_state() -> dict[str, Any]:
    import random

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


GENERIC_KEY = b"loragen:generic-prompt"
PRECOMPUTED_PROMPTS = 64  # distinct system prompts generated up front per evaluation epoch (and per cloud batch)


def gate_distances(task_gates: list[torch.Tensor], generic: torch.Tensor) -> dict[str, Any]:
    """How differently the router treats the prompts: the total-variation distance of two (L, n) gate
    matrices, ``½ Σ_e |g_a[l, e] − g_b[l, e]|`` averaged over layers (0: the same experts and weights
    everywhere; 1: disjoint experts), averaged over all pairs of prompts and from each prompt to the
    task-free one."""
    def tv(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(0.5 * (a.float() - b.float()).abs().sum(-1).mean())

    pairs = [tv(a, b) for i, a in enumerate(task_gates) for b in task_gates[i + 1:]]
    return {"between_prompts": sum(pairs) / len(pairs) if pairs else None,
            "to_generic": sum(tv(g, generic) for g in task_gates) / len(task_gates), "prompts": len(task_gates),
            "definition": "total-variation distance of the gates, averaged over layers and prompt pairs"}


def prompt_key(ids: Any) -> bytes:
    """Identity of one tokenized system prompt (token ids, a list or a 1-D tensor without padding)."""
    return torch.as_tensor(ids, dtype=torch.long).cpu().numpy().tobytes()


def _row_key(ids: torch.Tensor, mask: torch.Tensor) -> bytes:
    """Identity of one padded batch row's system prompt."""
    return prompt_key(ids[mask.bool()])


def _distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Group batch rows by identical (unpadded) system prompt, in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for i, (row, m) in enumerate(zip(ids, mask, strict=True)):
        groups.setdefault(_row_key(row, m), []).append(i)
    return list(groups.values())

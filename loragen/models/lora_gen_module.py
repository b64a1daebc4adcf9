"""``LoRAGenModule``: the LightningModule that trains and evaluates LoRA-Gen.

Training runs the functional path (each sample's generated LoRA applied by hooks, DESIGN §1.5);
validation and test are deployment-faithful by default: for each distinct system prompt in a batch
the generated LoRA is merged into the edge weights, the items are scored *without* the system
prompt, and the exact original weights are restored. With ``reference=True`` the plain edge model
is also scored with the full system prompt on the same items, so every results table carries it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch

from loragen import LoRAGenError
from loragen.models.components.expert_pool import DEFAULT_TARGETS
from loragen.models.components.router import AUX_KINDS, NOISE_KINDS
from loragen.models.evaluation import EvaluationMixin, check_eval_settings
from loragen.models.optim import ScheduledTraining
from loragen.models.scoring import answer_loss

SETTINGS = {"loragen": "LoRA-Gen (merged, no system prompt)",
            "rotated": "LoRA-Gen, another task's LoRA (rotated)",
            "generic": "LoRA-Gen, a task-free prompt's LoRA",
            "prompted": "edge + full system prompt", "zero_shot": "edge, no system prompt, no LoRA"}
# the task-free system prompt of the prompt-sensitivity check: a generator that ignores its prompt serves
# every task as well with this prompt's LoRA as with the task's own
GENERIC_PROMPT = "You are a helpful assistant."


class LoRAGenModule(ScheduledTraining, EvaluationMixin, L.LightningModule):
    """LoRA-Gen for one cloud/edge pair.

    Args:
        cloud: cloud model source (``bundled:…``, ``tiny:…``, hub id, local directory, ``.gguf``).
        edge: edge model source.
        num_experts: experts per (edge layer, target module).
        top_k: experts mixed per layer.
        rank: LoRA rank of each expert.
        lora_alpha: LoRA alpha (scale = lora_alpha / rank).
        target_modules: edge linears that receive LoRA (default: all attention and MLP projections).
        router_hidden: router MLP width (0 = linear router).
        layer_embedding: learned per-layer embedding in the router.
        router_noise: training noise, ``none | gaussian | gumbel``.
        router_center: subtract the running mean of the meta-token states (per layer, over the training
            prompts) before the router, so it sees what differs between prompts.
        aux_loss: balance loss, ``cv2`` (paper) ``| switch | none``.
        aux_coef: its coefficient α.
        train_meta_tokens: learn the meta-token embeddings (backprop through the frozen cloud).
        cloud_lora_rank: > 0 trains a PEFT LoRA of this rank on the cloud.
        lr / weight_decay / warmup_steps / min_lr_ratio: AdamW with linear warmup and cosine decay.
        eval_path: ``merged`` (deployment-faithful) or ``functional`` (hooks, no merge).
        reference: also score the edge model given the full system prompt.
        zero_shot_reference: also score the plain edge model without system prompt or LoRA.
        sensitivity: the prompt-sensitivity check: also serve each task's items with another task's
            generated LoRA (the distinct system prompts rotated by one) and with the LoRA of a task-free
            prompt. A generator that reads its prompt does better with the task's own LoRA (the paired
            differences say whether it does). The mean gate distance between the prompts (and to the
            task-free one) is reported by every test, with or without these rows.
        scoring: ``loglik`` (pick the option with the highest log-likelihood) or ``generate`` (greedy
            answer, graded by the task's answer extraction; unparseable answers count as wrong and are
            counted). Records without options are always graded by generation.
        metric: the headline of option scoring, ``acc_norm`` (log-likelihood ÷ option length in
            characters) or ``acc`` (summed log-likelihood), as lm-evaluation-harness defines them;
            both are always computed and written.
        max_new_tokens: answer length for generation scoring and ``loragen predict``.
        init_from: start from the trained weights of this checkpoint (e.g. Alpaca pre-training before
            multi-task training) without its optimizer state or step count; the pair must match.
        seed: initialisation seed of meta tokens, router and pool.
    """

    SETTINGS = SETTINGS

    def __init__(self, cloud: str = "bundled:smollm2-135m-instruct", edge: str = "bundled:smollm2-135m-instruct",
                 num_experts: int = 8, top_k: int = 2, rank: int = 8, lora_alpha: float = 16.0,
                 target_modules: list[str] | None = None, router_hidden: int = 256,
                 layer_embedding: bool = True, router_noise: str = "gaussian", router_center: bool = False,
                 aux_loss: str = "cv2",
                 aux_coef: float = 0.01, train_meta_tokens: bool = False, cloud_lora_rank: int = 0,
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 10, min_lr_ratio: float = 0.1,
                 eval_path: str = "merged", reference: bool = True, zero_shot_reference: bool = True,
                 sensitivity: bool = True,
                 scoring: str = "loglik", metric: str = "acc_norm",
                 max_new_tokens: int = 32, init_from: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_config(**self.hparams)
        from loragen.backbones import load_backbone
        from loragen.models.components.lora_gen import LoRAGen

        cloud_bb = load_backbone(cloud)
        share = cloud == edge and cloud_lora_rank == 0  # one frozen copy serves both roles
        edge_bb = cloud_bb if share else load_backbone(edge)
        self.model = LoRAGen(cloud_bb, edge_bb, num_experts=num_experts, top_k=top_k, rank=rank,
                             lora_alpha=lora_alpha, target_modules=tuple(target_modules or DEFAULT_TARGETS),
                             router_hidden=router_hidden, layer_embedding=layer_embedding,
                             router_noise=router_noise, router_center=router_center,
                             train_meta_tokens=train_meta_tokens,
                             cloud_lora_rank=cloud_lora_rank, seed=seed)
        self.strict_loading = False  # checkpoints hold only trained weights, not the backbones
        if init_from:
            self._init_from(init_from)
        self._init_evaluation()
        self.trained_steps: int | None = None  # optimizer steps of the loaded checkpoint (results files)
        self.last_routing: tuple[torch.Tensor, list[str]] | None = None
        self.task_loras: dict[bytes, Any] = {}  # system-prompt key -> GeneratedLoRA, per evaluation epoch
        self.rotation: dict[bytes, bytes] = {}  # prompt key -> the key whose LoRA the "rotated" check serves
        self.gate_distance: dict[str, Any] | None = None

    def train(self, mode: bool = True) -> LoRAGenModule:
        """Backbones stay in eval mode (frozen, no dropout) whatever Lightning asks for."""
        super().train(mode)
        self.model.edge.eval()
        self.model.generator.cloud.eval()
        return self

    @staticmethod
    def check_config(**hp: Any) -> None:
        """Reject impossible settings before any model is loaded (also called by the CLI)."""
        from types import SimpleNamespace

        from loragen.backbones import validate_source

        defaults = {k: v.default for k, v in inspect.signature(LoRAGenModule.__init__).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        _validate(SimpleNamespace(**{**defaults, **hp}))
        validate_source(hp.get("cloud", defaults["cloud"]))
        validate_source(hp.get("edge", defaults["edge"]))
        if hp.get("init_from"):  # a file that is not a loragen checkpoint fails here, before any model loads
            from loragen.files import load_checkpoint
            from loragen.release import resolve_checkpoint

            load_checkpoint(resolve_checkpoint(hp["init_from"]))

    def eval_settings(self) -> list[str]:
        settings = ["loragen"]
        if self.hparams.sensitivity:
            settings += ["rotated", "generic"] if len(self.eval_tasks) > 1 else ["generic"]
        if self.hparams.reference:
            settings.append("prompted")  # plain edge, full system prompt in context
        if self.hparams.zero_shot_reference:
            settings.append("zero_shot")  # plain edge, user input only
        return settings

    def paired_settings(self) -> list[tuple[str, str]]:
        return [("loragen", other) for other in self.eval_settings()[1:]]

    def setup(self, stage: str) -> None:
        """Every run records which cloud/edge pair it is about (W&B config, CSV hparams.yaml)."""
        super().setup(stage)
        if self._trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"pair_fingerprint": self.model.fingerprint.to_dict()})

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Edge hidden states with each sample's generated LoRA applied, and the routing."""
        return self.model.hidden_states(batch["system_ids"], batch["system_mask"], batch["input_ids"],
                                        batch["attention_mask"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        from loragen.models.components.router import auxiliary_loss

        hidden, routing = self(batch)
        ce = answer_loss(self.model.edge, hidden, batch["labels"])
        aux = auxiliary_loss(routing, self.hparams.aux_loss)
        loss = ce + self.hparams.aux_coef * aux
        size = batch["input_ids"].shape[0]
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/aux": aux}, prog_bar=True, batch_size=size)
        self.last_routing = (routing.gates.detach(), list(batch["task"]))  # read by router-statistics callbacks
        return loss

    # ------------------------------------------------------------------ evaluation

    def scoring_model(self) -> Any:
        return self.model.edge

    def edge_tokenizer(self) -> Any:
        return self.model.edge_backbone.tokenizer

    def result_info(self) -> dict[str, Any]:
        from loragen.models.evaluation import count_trainable

        info = {"method": "loragen", "eval_path": self.hparams.eval_path, "mergeable": True,
                "trainable_params": count_trainable(self.model), "trained_steps": self.trained_steps,
                "fingerprint": self.model.fingerprint.to_dict()}
        if self.gate_distance is not None:
            info["gate_distance"] = self.gate_distance
        return info

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        size = batch["input_ids"].shape[0]
        if "records" not in batch:  # no eval prompts prepared: answer loss only
            hidden, _ = self(batch)
            self.log(f"{stage}/ce", answer_loss(self.model.edge, hidden, batch["labels"]), batch_size=size)
            return
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
                self._grade_items(stage, "generic", batch, "prompt", range(size))
        prompt_keys = {"prompted": "ref_prompt", "zero_shot": "prompt"}
        for setting in (s for s in settings if s in prompt_keys):
            self._grade_items(stage, setting, batch, prompt_keys[setting], range(size))

    def _served(self, lora: Any) -> Any:
        """The edge serving ``lora``: merged into its weights (deployment), or by hooks (parity checks)."""
        if self.hparams.eval_path == "merged":
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

    def _prepare_epoch(self, stage: str) -> None:
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
        if not self._fitting():  # gate distances are cheap (one LoRA per prompt): every test reports them
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
        return bool(self.hparams.sensitivity) and not self._fitting()

    def on_validation_epoch_start(self) -> None:
        self._prepare_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._prepare_epoch("test")

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.task_loras = {}

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.task_loras = {}

    def _loras_for(self, batch: dict[str, Any]) -> tuple[list[list[int]], list[bytes], list[Any]]:
        """Rows grouped by system prompt, each group's prompt key and generated LoRA — prepared once
        per evaluation epoch (``_prepare_epoch``), else generated here."""
        groups = _distinct_rows(batch["system_ids"], batch["system_mask"])
        keys = [_row_key(batch["system_ids"][g[0]], batch["system_mask"][g[0]]) for g in groups]
        missing = [i for i, key in enumerate(keys) if key not in self.task_loras]
        generated = iter([])
        if missing:
            firsts = torch.tensor([groups[i][0] for i in missing], device=self.device)
            generated = iter(self.model.generate(batch["system_ids"][firsts], batch["system_mask"][firsts]))
        loras = [self.task_loras[key] if key in self.task_loras else next(generated) for key in keys]
        return groups, keys, loras

    # ------------------------------------------------------------------ predict

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Greedy answers of the specialized edge model: merged LoRA, no system prompt."""
        groups, _, loras = self._loras_for(batch)
        outputs: list[dict[str, Any]] = [{} for _ in range(batch["input_ids"].shape[0])]
        for members, lora in zip(groups, loras, strict=True):
            with self.model.edge_lora.merged_lora(lora):
                for m in members:
                    record = batch["records"][m]
                    text = self._generate_text(batch["prompt"][m]).strip()
                    outputs[m] = {"task": record.task, "input": record.input, "prediction": text,
                                  "reference": record.output, "correct": self._judge(text, record),
                                  "edge_prompt_tokens": len(batch["prompt"][m])}
        return outputs

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in keep or k.startswith("best_val_acc")}
        checkpoint["loragen"] = {"fingerprint": self.model.fingerprint.to_dict(), "format": 1,
                                 "rng": _rng_state()}

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from loragen.models.components.fingerprint import PairFingerprint

        stored = checkpoint.get("loragen", {}).get("fingerprint")
        if stored is None:
            raise LoRAGenError("this checkpoint has no loragen pair fingerprint: it was not written by loragen")
        PairFingerprint.from_dict(stored).check_compatible(self.model.fingerprint)
        self.trained_steps = checkpoint.get("global_step")
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        if resuming and "rng" in checkpoint["loragen"]:  # router noise continues exactly where it stopped
            _set_rng_state(checkpoint["loragen"]["rng"])
        expected = {f"model.{k}" for k in self.model.trainable_state_dict()}
        missing = sorted(expected - set(checkpoint["state_dict"]))
        if not missing:  # the frozen backbones are not stored: fill them in (references, no copies) so
            # loading reports no missing keys
            for name, tensor in self.state_dict(keep_vars=True).items():
                checkpoint["state_dict"].setdefault(name, tensor.detach())
        if missing:
            raise LoRAGenError(f"checkpoint lacks trained weights {missing[:3]}: it is incomplete or was "
                               "trained with other settings (experts, rank, targets)")


def _validate(hp: Any) -> None:
    """Reject impossible settings before any model is loaded."""
    if not 1 <= hp.top_k <= hp.num_experts:
        raise LoRAGenError(f"top_k={hp.top_k} must be between 1 and num_experts={hp.num_experts}")
    if hp.rank < 1:
        raise LoRAGenError(f"rank={hp.rank} must be >= 1")
    if hp.router_noise not in NOISE_KINDS:
        raise LoRAGenError(f"router_noise={hp.router_noise!r} is unknown: choose one of {list(NOISE_KINDS)}")
    if hp.aux_loss not in AUX_KINDS:
        raise LoRAGenError(f"aux_loss={hp.aux_loss!r} is unknown: choose one of {list(AUX_KINDS)}")
    check_eval_settings(hp)
    if hp.eval_path not in ("merged", "functional"):
        raise LoRAGenError(f"eval_path={hp.eval_path!r} is unknown: choose merged or functional")
    if hp.target_modules is not None and not hp.target_modules:
        raise LoRAGenError("target_modules is empty: name at least one edge linear, e.g. q_proj")


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

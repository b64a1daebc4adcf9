"""What every baseline shares: the edge model, the training loss, evaluation, checkpoints.

A baseline is a LightningModule around the edge model alone (no cloud generator). It trains on the
same DataModules as LoRA-Gen (answer-token cross-entropy, the same AdamW + warmup/cosine schedule),
is graded by the same ``EvaluationMixin`` and writes the same ``results.json`` / ``results.md``, so
its row sits next to LoRA-Gen's in ``loragen compare``. ``system_prompt`` decides what the edge
reads, in training and at every request: the user input alone, or the task's system prompt followed
by the input (the context cost LoRA-Gen removes).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from loragen import LoRAGenError
from loragen.models.evaluation import EvaluationMixin, check_eval_settings, count_trainable
from loragen.models.optim import ScheduledTraining
from loragen.models.scoring import answer_loss


class EdgeBaselineModule(ScheduledTraining, EvaluationMixin, L.LightningModule):
    """Base class of the baselines. Subclasses set ``METHOD`` / ``LABEL`` / ``MERGEABLE``, call
    ``_load_edge`` in ``__init__`` and install their adapters on ``self.edge``.

    Common args (every subclass takes them):
        edge: edge model source (``bundled:…``, ``tiny:…``, hub id, local directory, ``.gguf``).
        cloud: only names the tokenizer the shared DataModule uses for system prompts (linked to
            ``data.init_args.cloud``); a baseline never loads or runs a cloud model.
        system_prompt: the edge reads the task's system prompt before each input, in training and at
            evaluation (its tokens are counted per request).
        lr / weight_decay / warmup_steps / min_lr_ratio: AdamW with linear warmup and cosine decay,
            the same schedule as LoRA-Gen.
        scoring / metric / max_new_tokens: as for ``LoRAGenModule``.
        seed: initialisation seed of the trained parameters.
    """

    METHOD = "edge"
    LABEL = "edge model"
    MERGEABLE = True

    # ------------------------------------------------------------------ construction

    def _load_edge(self, edge: str, seed: int) -> None:
        from loragen.backbones import load_backbone

        self.check_config(**self.hparams)
        self.backbone = load_backbone(edge)
        self.edge = self.backbone.model
        torch.manual_seed(seed)  # adapter initialisation is reproducible
        self.strict_loading = False  # checkpoints hold only trained weights
        self._init_evaluation()
        self.trained_steps: int | None = None
        label = self.LABEL + (" + system prompt" if self.hparams.system_prompt else "")
        self.SETTINGS = {self.METHOD: label}

    @classmethod
    def check_config(cls, **hp: Any) -> None:
        """Reject impossible settings before any model is loaded (also called by the CLI)."""
        from loragen.backbones import validate_source

        defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        hp = {**defaults, **hp}
        check_eval_settings(hp)
        if hp.get("lr", 1.0) <= 0:
            raise LoRAGenError(f"lr={hp['lr']} must be > 0")
        validate_source(hp["edge"])
        cls._check(hp)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> None:
        """Subclass-specific checks (hp has defaults filled in)."""

    def train(self, mode: bool = True) -> EdgeBaselineModule:
        """The frozen edge stays in eval mode (no dropout) whatever Lightning asks for."""
        super().train(mode)
        self.edge.eval()
        return self

    # ------------------------------------------------------------------ what a subclass may change

    @property
    def train_with_system_prompt(self) -> bool:
        """Read by the DataModule: training sequences carry the system prompt too."""
        return bool(self.hparams.system_prompt)

    @property
    def prompt_key(self) -> str:
        return "ref_prompt" if self.hparams.system_prompt else "prompt"

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states of the edge (with whatever adapters are installed) for each position."""
        out = self.edge.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def aux_loss(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """An auxiliary loss of the last forward pass (MoE balance), or None."""
        return None

    @contextlib.contextmanager
    def deployed(self) -> Iterator[None]:
        """The edge as it is served (e.g. LoRA merged into the weights) for the duration."""
        yield

    # Evaluation and prediction run on the deployed edge: entered once per epoch, left at its end.
    def _enter_deployed(self) -> None:
        if getattr(self, "_deployment", None) is None:
            self._deployment = self.deployed()
            self._deployment.__enter__()

    def _exit_deployed(self) -> None:
        deployment, self._deployment = getattr(self, "_deployment", None), None
        if deployment is not None:
            deployment.__exit__(None, None, None)

    def on_validation_epoch_start(self) -> None:
        self._enter_deployed()

    def on_test_epoch_start(self) -> None:
        self._enter_deployed()

    def on_predict_epoch_start(self) -> None:
        self._enter_deployed()

    def on_validation_epoch_end(self) -> None:
        self._exit_deployed()
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._exit_deployed()
        super().on_test_epoch_end()

    def on_predict_epoch_end(self) -> None:
        self._exit_deployed()

    def on_exception(self, exception: BaseException) -> None:  # an interrupted evaluation still restores
        self._exit_deployed()

    def scoring_model(self) -> Any:
        return self.edge

    def edge_tokenizer(self) -> Any:
        return self.backbone.tokenizer

    def result_info(self) -> dict[str, Any]:
        return {"method": self.METHOD, "mergeable": self.MERGEABLE, "system_prompt": self.hparams.system_prompt,
                "trainable_params": count_trainable(self), "trained_steps": self.trained_steps,
                "edge": self.hparams.edge}

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])
        ce = answer_loss(self.edge, hidden, batch["labels"])
        aux = self.aux_loss(batch)
        loss = ce if aux is None else ce + self.hparams.aux_coef * aux
        size = batch["input_ids"].shape[0]
        logs = {"train/loss": loss, "train/ce": ce} | ({} if aux is None else {"train/aux": aux})
        self.log_dict(logs, prog_bar=True, batch_size=size)
        return loss

    # ------------------------------------------------------------------ evaluation

    def _deployed_for_step(self) -> contextlib.AbstractContextManager:
        """Deployed already (inside a Trainer epoch), or for this call only (direct use)."""
        return contextlib.nullcontext() if getattr(self, "_deployment", None) is not None else self.deployed()

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        if "records" not in batch:  # no eval prompts prepared: answer loss only
            hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])
            self.log(f"{stage}/ce", answer_loss(self.edge, hidden, batch["labels"]),
                     batch_size=batch["input_ids"].shape[0])
            return
        with self._deployed_for_step():
            self._grade_items(stage, self.METHOD, batch, self.prompt_key, range(batch["input_ids"].shape[0]),
                              extra_tokens=self.prefix_tokens)

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Greedy answers of the edge as served by this method."""
        outputs = []
        with self._deployed_for_step():
            for i, record in enumerate(batch["records"]):
                prompt = batch[self.prompt_key][i]
                text = self._generate_text(prompt).strip()
                outputs.append({"task": record.task, "input": record.input, "prediction": text,
                                "reference": record.output, "correct": self._judge(text, record),
                                "edge_prompt_tokens": len(prompt) + self.prefix_tokens})
        return outputs

    # ------------------------------------------------------------------ checkpoints

    def _trained_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def _identity(self) -> dict[str, Any]:
        config = self.edge.config
        return {"method": self.METHOD, "edge": self.hparams.edge, "arch": str(config.model_type),
                "layers": int(config.num_hidden_layers), "hidden": int(config.hidden_size),
                "vocab": int(config.vocab_size)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self._trained_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in keep or k.startswith("best_val_acc")}
        checkpoint["loragen"] = {"baseline": self._identity(), "format": 1}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("loragen", {}).get("baseline")
        if stored is None:
            raise LoRAGenError(f"this checkpoint was not written by a loragen baseline: load it with the module "
                               f"that trained it, not {type(self).__name__}")
        mine = self._identity()
        diffs = [f"{k}: checkpoint {stored.get(k)!r} vs. this model {v!r}" for k, v in mine.items()
                 if stored.get(k) != v]
        if diffs:
            raise LoRAGenError("checkpoint does not fit this baseline (" + "; ".join(diffs) + "): use the "
                               "configuration it was trained with")
        self.trained_steps = checkpoint.get("global_step")
        missing = sorted(self._trained_names() - set(checkpoint["state_dict"]))
        if missing:
            raise LoRAGenError(f"checkpoint lacks trained weights {missing[:3]}: it was trained with other "
                               "settings (rank, experts, targets)")
        params = dict(self.named_parameters())
        for name in sorted(self._trained_names()):
            stored, mine = tuple(checkpoint["state_dict"][name].shape), tuple(params[name].shape)
            if stored != mine:
                raise LoRAGenError(f"checkpoint weight {name} has shape {stored}, this model's {mine}: it was "
                                   "trained with other settings (rank, experts, virtual tokens)")
        for name, tensor in self.state_dict(keep_vars=True).items():  # frozen weights: fill in references
            checkpoint["state_dict"].setdefault(name, tensor.detach())


class BaseModel(EdgeBaselineModule):
    """The edge model as it is, no training: zero-shot (user input only) or few-shot
    (``system_prompt: true``: the task's system prompt with its k examples, then the input).

    Args: see ``EdgeBaselineModule`` (the optimizer settings are unused).
    """

    METHOD = "base"
    LABEL = "base model"
    MERGEABLE = True  # nothing to merge: the served model is the dense base model

    def __init__(self, edge: str = "bundled:smollm2-135m-instruct", cloud: str = "bundled:smollm2-135m-instruct",
                 system_prompt: bool = False, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 10,
                 min_lr_ratio: float = 0.1, scoring: str = "loglik", metric: str = "acc_norm",
                 max_new_tokens: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._load_edge(edge, seed)
        self.SETTINGS = {"base": "base model, few-shot system prompt" if system_prompt else "base model, zero-shot"}

    def on_fit_start(self) -> None:
        raise LoRAGenError("BaseModel has no trainable parameters: there is nothing to fit; run `loragen test`")

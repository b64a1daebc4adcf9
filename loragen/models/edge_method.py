"""``EdgeMethod``: the one LightningModule base of every edge method (LoRA-Gen and each baseline).

It owns what every method does the same way: the training step (answer-token cross-entropy plus the
method's auxiliary loss), evaluation (grading, reference rows, results files), predict rows, frozen
backbones kept in eval mode, the checkpoint filter (trained weights only) and fill-in on load, the
identity check of a checkpoint against the model, and deployment-faithful evaluation epochs: the
method prepares how it is served once per epoch, and at the epoch's end the edge weights are checked
to be bit-identical to what they were before it (``eval.verify_restore``).

A method supplies only what differs:

- ``training_forward(batch)`` → (edge hidden states, auxiliary loss or None);
- ``served_groups(batch)`` → the batch's rows in groups, each with a context in which the edge is as
  the method serves those rows (LoRA-Gen: the LoRA generated for their system prompt, merged; LoRA:
  its merged adapter; the MoE methods and prompt tuning: as they run), and optionally
  ``prepare_serving(stage)`` / ``release_serving()`` around an evaluation epoch;
- ``scoring_model()``, ``edge_tokenizer()``, ``frozen_backbones()``, ``identity()``.

A new method is one file under ``loragen/models/baselines/`` (a subclass of ``EdgeBaselineModule``,
which adds the edge-only loading) plus a config under ``configs/baselines/``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import nn

from loragen import LoRAGenError
from loragen.eval.scoring import answer_loss
from loragen.models.config import (
    GROUPS,
    STORED_GROUPS,
    EvalConfig,
    OptimConfig,
    PoolConfig,
    as_plain,
    group,
)
from loragen.models.evaluation import EvaluationMixin, count_trainable
from loragen.models.optim import ScheduledTraining

Served = tuple[list[int], contextlib.AbstractContextManager]


class EdgeMethod(ScheduledTraining, EvaluationMixin, L.LightningModule):
    """Base of every edge method.

    Args (every method takes them):
        cloud: cloud model source (``bundled:…``, ``tiny:…``, hub id, local directory, ``.gguf``); a
            method without a generator only names the tokenizer of the DataModule's system prompts.
        edge: edge model source.
        optim: the optimizer group (``loragen.models.config.OptimConfig``).
        eval: the evaluation group (``EvalConfig``); never stored in checkpoints.
        seed: initialisation seed of the trained parameters.
    """

    METHOD = "edge"
    LABEL = "edge model"
    MERGEABLE = True
    # the prompted / zero-shot reference rows are graded outside ``served_groups`` but inside the epoch's
    # ``prepare_serving``: a method sets this only if the edge is plain there (LoRA-Gen merges per group)
    REFERENCE_ROWS = False

    def __init__(
        self,
        cloud: str = "bundled:smollm2-135m-instruct",
        edge: str = "bundled:smollm2-135m-instruct",
        optim: OptimConfig = OptimConfig(),
        eval: EvalConfig = EvalConfig(),
        seed: int = 0,
    ) -> None:  # noqa: A002
        super().__init__()
        from loragen.backbones import validate_source

        self.optim, self.evaluation = group("optim", optim), group("eval", eval)
        self.pool_config: PoolConfig | None = None
        validate_source(cloud)
        validate_source(edge)
        # every constructor argument of the method, with the groups as plain mappings; ``eval`` is left out
        # so that a checkpoint never decides how it is evaluated
        self.save_hyperparameters(ignore=["eval", "init_from", "cloud_states"])
        for name, value in list(self.hparams.items()):
            self.hparams[name] = as_plain(group(name, value)) if name in STORED_GROUPS else value
        self.strict_loading = False  # checkpoints hold only trained weights, not the backbones
        self._init_evaluation()
        self.trained_steps: int | None = None  # optimizer steps of the loaded checkpoint (results files)
        self._snapshot: dict[str, torch.Tensor] = {}
        self._serving = False

    # ------------------------------------------------------------------ what a method supplies

    def training_forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final edge hidden states of the training sequences and the auxiliary loss (or None)."""
        raise NotImplementedError

    def served_groups(self, batch: dict[str, Any]) -> list[Served]:
        """The batch's rows in groups, each with the context in which the edge serves them."""
        return [(list(range(batch["input_ids"].shape[0])), contextlib.nullcontext())]

    def prepare_serving(self, stage: str) -> None:
        """Before an evaluation or predict epoch (e.g. merge an adapter, generate each prompt's LoRA)."""

    def release_serving(self) -> None:
        """After it (and after an exception inside it): undo what ``prepare_serving`` did."""

    def frozen_backbones(self) -> list[nn.Module]:
        """Modules that stay in eval mode (frozen, no dropout) whatever Lightning asks for."""
        return []

    def trained_state_names(self) -> set[str]:
        """State-dict keys a checkpoint keeps (the rest is the frozen backbones, rebuilt from their source)."""
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the model it fits (stored under ``checkpoint['loragen']``)."""
        raise NotImplementedError

    def check_identity(self, stored: dict[str, Any]) -> None:
        """Refuse a checkpoint written for another model, in one line."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared behaviour

    @property
    def train_with_system_prompt(self) -> bool:
        """Read by the DataModule (``contracts.PromptReading``): training sequences carry the system prompt too."""
        return False

    @property
    def train_teacher_prompt(self) -> bool:
        """Read by the DataModule: training examples also carry the prompted-edge sequence (distillation)."""
        return False

    @property
    def train_sibling_prompt(self) -> bool:
        """Read by the DataModule: training examples also carry a sibling task's system prompt (the same dataset,
        another family: the counterfactual of the sibling margin)."""
        return False

    @property
    def prompt_key(self) -> str:
        """The batch field holding the edge's prompt for each item."""
        return "prompt"

    def train(self, mode: bool = True) -> EdgeMethod:
        super().train(mode)
        for module in self.frozen_backbones():
            module.eval()
        return self

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self._trainer is not None:  # every run records which model it is about (W&B config, hparams.yaml)
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"identity": self.identity(), "eval": as_plain(self.evaluation)})

    def extra_losses(self, batch: dict[str, Any], hidden: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """Further training terms of the method, ``name -> (coefficient, term)``, after ``training_forward``
        (LoRA-Gen's specificity signals); each is logged as ``train/<name>``."""
        return {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hidden, aux = self.training_forward(batch)
        ce = answer_loss(self.scoring_model(), hidden, batch["labels"])
        loss = ce if aux is None or self.pool_config is None else ce + self.pool_config.aux_coef * aux
        logs = {"train/ce": ce} | ({} if aux is None else {"train/aux": aux})
        for name, (coef, term) in self.extra_losses(batch, hidden).items():
            loss = loss + coef * term
            logs[f"train/{name}"] = term
        self.log_dict({"train/loss": loss, **logs}, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def eval_settings(self) -> list[str]:
        settings = [self.METHOD]
        if self.REFERENCE_ROWS and self.evaluation.reference:
            settings.append("prompted")  # plain edge, full system prompt in context
        if self.REFERENCE_ROWS and self.evaluation.zero_shot_reference:
            settings.append("zero_shot")  # plain edge, user input only
        return settings

    def paired_settings(self) -> list[tuple[str, str]]:
        return [(self.METHOD, other) for other in self.eval_settings()[1:]]

    def result_info(self) -> dict[str, Any]:
        return {
            "method": self.METHOD,
            "mergeable": self.MERGEABLE,
            "trainable_params": count_trainable(self),
            "trained_steps": self.trained_steps,
            "edge": self.hparams["edge"],
        }

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        size = batch["input_ids"].shape[0]
        if "records" not in batch:  # no eval prompts prepared: answer loss only
            hidden, _ = self.training_forward(batch)
            self.log(f"{stage}/ce", answer_loss(self.scoring_model(), hidden, batch["labels"]), batch_size=size)
            return
        self.grade_served(batch, stage)
        prompt_keys = {"prompted": "ref_prompt", "zero_shot": "prompt"}
        for setting in (s for s in self.eval_settings() if s in prompt_keys):
            self._grade_items(stage, setting, batch, prompt_keys[setting], range(size))

    def grade_served(self, batch: dict[str, Any], stage: str) -> None:
        """The method's own rows: each group of items answered by the edge as the method serves them."""
        for members, serving in self.served_groups(batch):
            with serving:
                self._grade_items(stage, self.METHOD, batch, self.prompt_key, members, extra_tokens=self.prefix_tokens)

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Greedy answers of the edge as this method serves it."""
        outputs: list[dict[str, Any]] = [{} for _ in range(batch["input_ids"].shape[0])]
        for members, serving in self.served_groups(batch):
            with serving:
                for m in members:
                    record, prompt = batch["records"][m], batch[self.prompt_key][m]
                    text = self._generate_text(prompt).strip()
                    outputs[m] = {
                        "task": record.task,
                        "input": record.input,
                        "prediction": text,
                        "reference": record.output,
                        "correct": self._judge(text, record),
                        "edge_prompt_tokens": len(prompt) + self.prefix_tokens,
                    }
        return outputs

    # ------------------------------------------------------------------ evaluation epochs

    def _start_serving(self, stage: str) -> None:
        if self._serving:
            return
        if self._trainer is not None:
            check_unsharded(self.trainer.strategy, stage)
        if self.evaluation.verify_restore:
            self._snapshot = {n: p.detach().clone() for n, p in self.scoring_model().named_parameters()}
        self._serving = True  # set first: a preparation that fails half-way is still released
        self.prepare_serving(stage)

    def _stop_serving(self, verify: bool = True) -> None:
        if not self._serving:
            return
        self._serving = False
        self.release_serving()
        snapshot, self._snapshot = self._snapshot, {}
        if verify and snapshot:
            for name, param in self.scoring_model().named_parameters():
                if not torch.equal(param, snapshot[name]):
                    raise RuntimeError(f"edge weight {name} changed during evaluation: the merge was not undone")

    def on_validation_epoch_start(self) -> None:
        self._start_serving("val")

    def on_test_epoch_start(self) -> None:
        self._start_serving("test")

    def on_predict_epoch_start(self) -> None:
        self._start_serving("predict")

    def on_validation_epoch_end(self) -> None:
        self._stop_serving()
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._stop_serving()
        super().on_test_epoch_end()

    def on_predict_epoch_end(self) -> None:
        self._stop_serving()

    def configure_callbacks(self) -> list[L.Callback]:
        """Lightning tells callbacks, not the module, about an exception: this one restores the edge."""
        return [_ReleaseOnException()]

    @contextlib.contextmanager
    def _epoch_or_call(self) -> Iterator[None]:
        """Inside a Trainer epoch the serving is prepared already; a direct call prepares it for itself."""
        if self._serving:
            yield
            return
        self.prepare_serving("direct")
        try:
            yield
        finally:
            self.release_serving()

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from loragen.checkpoint import strip_untrained

        strip_untrained(checkpoint, self.trained_state_names(), self.identity())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from loragen.checkpoint import fill_untrained

        self.check_identity(checkpoint.get("loragen") or {})
        self.trained_steps = checkpoint.get("global_step")
        fill_untrained(checkpoint, self.trained_state_names(), self.state_dict(keep_vars=True))


class _ReleaseOnException(L.Callback):
    """An exception inside an evaluation epoch still undoes its serving (e.g. unmerges an adapter), so a
    module reused in the same process is not left merged."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(pl_module, EdgeMethod):
            pl_module._stop_serving(verify=False)


SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def check_unsharded(strategy: Any, stage: str) -> None:
    """Serving merges into (or swaps) whole edge weights; under a sharded strategy a rank holds shards of them,
    so an evaluation epoch there is refused in one line rather than merged into a shard."""
    name = type(strategy).__name__
    if name == "DeepSpeedStrategy" and not getattr(strategy, "zero_stage_3", True):
        return  # ZeRO-1/2 shard optimizer state and gradients; every rank holds whole weights
    if name in SHARDED_STRATEGIES:
        raise LoRAGenError(
            f"{stage} under {name}: serving merges adapters into whole edge weights, which a sharded strategy "
            "splits across ranks; train with it, then evaluate the checkpoint with `loragen test` on one device "
            "or with DDP (configs/strategies/ddp.yaml), and set trainer.limit_val_batches 0 for the sharded fit"
        )


def method_arguments(cls: type) -> list[str]:
    """The constructor arguments a method takes (its own and, through ``**kwargs``, its bases')."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, EdgeMethod):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def load_class(class_path: str) -> type:
    """The class a config's ``class_path`` names, or a one-line error."""
    import importlib

    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise LoRAGenError(
            f"class {class_path!r} does not exist: e.g. loragen.models.lora_gen_module."
            "LoRAGenModule or loragen.models.baselines.LoRABaseline"
        ) from None


def check_method_args(class_path: str, init_args: Any) -> type:
    """Validate a method's arguments from a config before any model loads: the class exists, every
    argument is one it takes, the groups build (each validates itself) and the model sources are
    well-formed. Returns the class."""
    from loragen.backbones import validate_source

    if hasattr(init_args, "as_dict"):  # a parsed config section (jsonargparse Namespace)
        init_args = init_args.as_dict()
    cls = load_class(class_path)
    if not (isinstance(cls, type) and issubclass(cls, EdgeMethod)):
        return cls
    known = method_arguments(cls)
    for name, value in init_args.items():
        if name not in known:
            raise LoRAGenError(f"{cls.__name__} has no argument {name!r} (its arguments: {', '.join(known)})")
        if name in GROUPS:
            group(name, value)
    for name in ("cloud", "edge"):
        if init_args.get(name):
            validate_source(init_args[name])
    if hasattr(cls, "check_args"):
        cls.check_args(init_args)
    return cls

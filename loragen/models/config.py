"""Typed configuration groups every edge method shares: ``optim``, ``eval`` and ``pool`` (and LoRA-Gen's
``specificity``).

Each group is a frozen dataclass with a docstring under every field (``--help`` shows them),
validated on construction (an impossible value fails in one line before any model loads).
LightningCLI parses them as nested groups (``--model.init_args.pool.num_experts 4``, or
``pool: {num_experts: 4}`` in YAML), and ``loragen compare`` copies whole groups from the LoRA-Gen
config to every method that takes them, so a field added here reaches every method of a comparison.

What a checkpoint keeps: the weight-shaping and training groups (``pool``, ``optim``) and the
method's other arguments are stored with its weights, so ``--ckpt_path`` rebuilds the model it
trained. ``eval`` is never stored: how a model is evaluated always comes from the config and the
command line of the run that evaluates it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_args

from loragen import LoRAGenError

# The fields with a fixed set of values, typed so that the command line refuses anything else at parse time (one
# line listing the values); the tuples are what code checks against (one fact, one place).
Scoring = Literal["loglik", "generate"]
Metric = Literal["acc_norm", "acc", "harness"]  # described in loragen.eval.results.METRICS
ServePath = Literal["merged", "functional"]
AuxLoss = Literal["cv2", "switch", "none"]
RouterNoise = Literal["none", "gaussian", "gumbel"]
MarginAgainst = Literal["batch", "sibling"]
SCORINGS: tuple[str, ...] = get_args(Scoring)
METRICS: tuple[str, ...] = get_args(Metric)
AUX_KINDS: tuple[str, ...] = get_args(AuxLoss)
NOISE_KINDS: tuple[str, ...] = get_args(RouterNoise)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """The one-line refusal of a value outside its fixed set (for values that bypass the command line)."""
    if value not in allowed:
        raise LoRAGenError(f"{name}={value!r} is unknown: choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then cosine decay to ``min_lr_ratio · lr`` at the last step."""

    lr: float = 1e-3
    """Peak learning rate, reached after the warmup."""
    weight_decay: float = 0.01
    """Decoupled weight decay of matrices (biases, norms, meta tokens, soft prompts are not decayed)."""
    warmup_steps: int = 10
    """Optimizer steps of linear warmup from ``lr / (warmup_steps + 1)``."""
    min_lr_ratio: float = 0.1
    """Learning rate at the end of the cosine decay, as a fraction of ``lr``."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise LoRAGenError(f"optim.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise LoRAGenError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if self.warmup_steps < 0:
            raise LoRAGenError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise LoRAGenError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


@dataclass(frozen=True)
class EvalConfig:
    """How validation, test and predict run; never read from a checkpoint."""

    scoring: Scoring = "loglik"
    """``loglik``: pick the option with the highest log-likelihood, as lm-evaluation-harness asks the
    question; ``generate``: a greedy answer graded by the task's answer extraction (unparseable
    answers count as wrong and are counted). Records without options are always graded by generation."""
    metric: Metric = "acc_norm"
    """The headline of option scoring: ``acc_norm`` (log-likelihood ÷ option length in characters) or
    ``acc`` (summed log-likelihood), as lm-evaluation-harness defines them; both are always written."""
    max_new_tokens: int = 32
    """Answer length for generation scoring and ``loragen predict``."""
    reference: bool = True
    """Also score the plain edge model reading the task's full system prompt, on the same items (the
    row the method must beat). Computed by methods that serve the plain edge beside their own (LoRA-Gen);
    for the baselines the ``few_shot`` method of ``loragen compare`` is this row."""
    zero_shot_reference: bool = True
    """Also score the plain edge model without system prompt or adapter (LoRA-Gen; for the baselines the
    ``base`` method of ``loragen compare``)."""
    sensitivity: bool = True
    """LoRA-Gen's prompt-sensitivity rows at test time: each task's items also served with another
    task's generated LoRA (rotated), with a task-free prompt's LoRA and, for tasks with a held-out
    paraphrase, with the LoRA of their prompt read with that paraphrase; each paired with the task's own."""
    path: ServePath = "merged"
    """``merged``: the adapter merged into the edge weights, as deployed; ``functional``: applied as in
    training (hooks), for parity checks."""
    verify_restore: bool = True
    """At the end of every evaluation epoch, check that each edge weight equals its value before it (a
    merge that was not undone stops the run instead of training on corrupted weights)."""

    def __post_init__(self) -> None:
        check_choice("eval.scoring", self.scoring, SCORINGS)
        check_choice("eval.metric", self.metric, METRICS)
        if self.max_new_tokens < 1:
            raise LoRAGenError(f"eval.max_new_tokens={self.max_new_tokens} must be >= 1")
        check_choice("eval.path", self.path, get_args(ServePath))


@dataclass(frozen=True)
class PoolConfig:
    """LoRA experts on the edge's linears, and the balance loss over them.

    LoRA-Gen: one pool per (edge layer, target module), mixed per system prompt by the router. The
    baselines take what applies to them: LoRA one adapter of the merged LoRA's rank ``top_k · rank``
    and scale on ``target_modules``; MixLoRA and LoRAMoE their per-token expert mixtures of the same
    size."""

    num_experts: int = 8
    """Experts per (edge layer, target module)."""
    top_k: int = 2
    """Experts mixed per layer (LoRA-Gen, per system prompt; MixLoRA, per token)."""
    rank: int = 8
    """LoRA rank of each expert."""
    lora_alpha: float = 16.0
    """LoRA alpha: the update is scaled by ``lora_alpha / rank``."""
    target_modules: list[str] | None = None
    """Edge linears that receive LoRA; null = the method's default (LoRA-Gen and LoRA: every attention
    and MLP projection; LoRAMoE: the MLP linears)."""
    aux_loss: AuxLoss = "cv2"
    """Balance loss over the experts: ``cv2`` (the paper: squared coefficient of variation of expert
    importance) ``| switch | none``."""
    aux_coef: float = 0.01
    """Its coefficient α in ``loss = CE + α · aux``."""

    def __post_init__(self) -> None:
        if self.num_experts < 1 or self.rank < 1:
            raise LoRAGenError(f"pool.num_experts={self.num_experts} and pool.rank={self.rank} must be >= 1")
        if not 1 <= self.top_k <= self.num_experts:
            raise LoRAGenError(f"pool.top_k={self.top_k} must be between 1 and pool.num_experts={self.num_experts}")
        if self.target_modules is not None and not self.target_modules:
            raise LoRAGenError(
                "pool.target_modules is empty: name at least one edge linear, e.g. q_proj, or "
                "leave it null for the method's default"
            )
        check_choice("pool.aux_loss", self.aux_loss, AUX_KINDS)
        if self.aux_coef < 0:
            raise LoRAGenError(f"pool.aux_coef={self.aux_coef} must be >= 0")

    def targets(self, default: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.target_modules) if self.target_modules else default


# the evaluation's task-free probe (the "task-free prompt's LoRA" row): never a training null prompt, so that
# row stays a held-out test of whether a generator reads its prompt
GENERIC_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class SpecificityConfig:
    """LoRA-Gen's training signals for a LoRA specific to its prompt (``loragen.models.specificity``); every
    coefficient 0 (the default) trains on the answer loss alone, as before."""

    margin_coef: float = 0.0
    """Counterfactual margin: weight of ``relu(margin − (ll_own − ll_other))``, the mean answer-token
    log-likelihood of a row under its own prompt's LoRA against another task's prompt's LoRA from the batch."""
    margin: float = 0.5
    """That margin, in nats per answer token."""
    margin_against: MarginAgainst = "batch"
    """Whose LoRA the own one must beat: ``batch``, another task's of the batch (usually another dataset: told
    apart by its family); ``sibling``, a sibling task's — the same dataset in another family (``boolq`` and
    ``boolq.swapped``: the same items, other answers) — so that only reading what the description asks, not
    recognising the dataset, wins the margin. Rows of a dataset trained in one form only have no sibling."""
    null_coef: float = 0.0
    """Null-prompt control: weight of the mean squared Frobenius norm of the LoRA generated for each task-free
    prompt of ``null_prompts`` (pulled toward the untouched edge)."""
    null_prompts: list[str] = field(
        default_factory=lambda: ["", "Answer the following.", "You are an assistant.", "Respond to the user's input."]
    )
    """The task-free prompts of the null-prompt control (never the evaluation's task-free probe)."""
    distill_coef: float = 0.0
    """Context distillation: weight of ``T²·KL(edge reading the system prompt ‖ LoRA edge without it)`` over
    the vocabulary at the answer positions."""
    distill_temperature: float = 1.0
    """Its temperature T."""

    def __post_init__(self) -> None:
        for name in ("margin_coef", "null_coef", "distill_coef"):
            if getattr(self, name) < 0:
                raise LoRAGenError(f"specificity.{name}={getattr(self, name)} must be >= 0 (0 = off)")
        if self.margin < 0:
            raise LoRAGenError(f"specificity.margin={self.margin} must be >= 0 (nats per answer token)")
        check_choice("specificity.margin_against", self.margin_against, get_args(MarginAgainst))
        if not self.distill_temperature > 0:
            raise LoRAGenError(f"specificity.distill_temperature={self.distill_temperature} must be > 0")
        if self.null_coef and not self.null_prompts:
            raise LoRAGenError("specificity.null_coef > 0 needs at least one specificity.null_prompts entry")
        if GENERIC_PROMPT in self.null_prompts:
            raise LoRAGenError(
                f"specificity.null_prompts holds {GENERIC_PROMPT!r}, the evaluation's task-free probe: "
                "training it toward the untouched edge would make that check meaningless; use "
                "other task-free prompts"
            )

    @property
    def active(self) -> bool:
        return bool(self.margin_coef or self.null_coef or self.distill_coef)


GROUPS: dict[str, type] = {
    "optim": OptimConfig,
    "eval": EvalConfig,
    "pool": PoolConfig,
    "specificity": SpecificityConfig,
}
STORED_GROUPS = ("optim", "pool", "specificity")  # what a checkpoint keeps; ``eval`` never


def group(kind: str, value: Any) -> Any:
    """``value`` as the ``kind`` group: a group object as it is, a mapping (YAML, a checkpoint) built and
    validated, None the defaults."""
    cls = GROUPS[kind]
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if hasattr(value, "as_dict"):  # a parsed config section (jsonargparse Namespace)
        value = value.as_dict()
    if not isinstance(value, dict):
        raise LoRAGenError(f"{kind} must be a mapping of its fields, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise LoRAGenError(f"{kind} has no field {unknown[0]!r}: its fields are {', '.join(sorted(known))}")
    return cls(**value)


def as_plain(value: Any) -> Any:
    """A group as the plain mapping checkpoints and logs store (anything else as it is)."""
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value

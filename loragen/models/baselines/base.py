"""What every baseline shares on top of ``EdgeMethod``: the edge model alone, and the system-prompt switch.

A baseline is an edge method without a cloud generator. It trains on the same DataModules as LoRA-Gen
(the same step, loss, optimizer group and schedule), is evaluated by the same code and writes the same
``results.json`` / ``results.md``, so its row sits next to LoRA-Gen's in ``loragen compare``.
``system_prompt`` decides what the edge reads, in training and at every request: the user input
alone, or the task's system prompt followed by the input (the context cost LoRA-Gen removes).

A new baseline is one file here: a subclass that sets ``METHOD`` / ``LABEL`` / ``MERGEABLE``, takes its
own arguments (and ``**kwargs`` for the shared ones), installs its adapters on ``self.edge`` and says
how it is served (``deployed`` for a mergeable adapter; nothing for a method that runs as it trains).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from loragen import LoRAGenError
from loragen.models.edge_method import EdgeMethod, Served

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict


class EdgeBaselineModule(EdgeMethod):
    """Base class of the baselines: loads the edge model only.

    Args:
        system_prompt: the edge reads the task's system prompt before each input, in training and at
            evaluation (its tokens are counted per request).
        Others (``cloud``, ``edge``, ``optim``, ``eval``, ``seed``): see ``EdgeMethod``; ``cloud`` only
            names the tokenizer the shared DataModule uses for system prompts (a baseline never loads it).
    """

    METHOD = "edge"
    LABEL = "edge model"
    MERGEABLE = True

    # Lightning types ``hparams`` as a MutableMapping; what ``save_hyperparameters`` stores is an AttributeDict
    if TYPE_CHECKING:

        @property
        def hparams(self) -> AttributeDict: ...

    def __init__(self, system_prompt: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from loragen.backbones import load_backbone

        self.system_prompt = system_prompt
        self.backbone = load_backbone(self.hparams.edge)
        self.edge = self.backbone.model
        torch.manual_seed(self.hparams.seed)  # adapter initialisation is reproducible
        self.SETTINGS = {self.METHOD: self.LABEL + (" + system prompt" if system_prompt else "")}
        self._deployment: contextlib.AbstractContextManager | None = None

    @property
    def train_with_system_prompt(self) -> bool:
        return bool(self.system_prompt)

    @property
    def prompt_key(self) -> str:
        return "ref_prompt" if self.system_prompt else "prompt"

    def frozen_backbones(self) -> list[torch.nn.Module]:
        return [self.edge]

    def scoring_model(self) -> Any:
        return self.edge

    def edge_tokenizer(self) -> Any:
        return self.backbone.tokenizer

    def training_forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.hidden_states(batch["input_ids"], batch["attention_mask"]), self.aux_loss(batch)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states of the edge (with whatever adapters are installed) for each position."""
        out = self.edge.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def aux_loss(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """An auxiliary loss of the last forward pass (MoE balance), or None."""
        return None

    # ------------------------------------------------------------------ serving

    @contextlib.contextmanager
    def deployed(self) -> Iterator[None]:
        """The edge as it is served (e.g. LoRA merged into the weights) for the duration."""
        yield

    def prepare_serving(self, stage: str) -> None:
        self._deployment = self.deployed()
        self._deployment.__enter__()

    def release_serving(self) -> None:
        deployment, self._deployment = self._deployment, None
        if deployment is not None:
            deployment.__exit__(None, None, None)

    def served_groups(self, batch: dict[str, Any]) -> list[Served]:
        """Every row, served as deployed: for the epoch (prepared once), or for this call only."""
        return [(list(range(batch["input_ids"].shape[0])), self._epoch_or_call())]

    # ------------------------------------------------------------------ identity

    def result_info(self) -> dict[str, Any]:
        return {**super().result_info(), "system_prompt": self.system_prompt}

    def identity(self) -> dict[str, Any]:
        config = self.edge.config
        return {
            "baseline": {
                "method": self.METHOD,
                "edge": self.hparams.edge,
                "arch": str(config.model_type),
                "layers": int(config.num_hidden_layers),
                "hidden": int(config.hidden_size),
                "vocab": int(config.vocab_size),
            }
        }

    def check_identity(self, stored: dict[str, Any]) -> None:
        if stored.get("baseline") is None:
            raise LoRAGenError(
                f"this checkpoint was not written by a loragen baseline: load it with the module "
                f"that trained it, not {type(self).__name__}"
            )
        mine = self.identity()["baseline"]
        diffs = [
            f"{k}: checkpoint {stored['baseline'].get(k)!r} vs. this model {v!r}"
            for k, v in mine.items()
            if stored["baseline"].get(k) != v
        ]
        if diffs:
            raise LoRAGenError(
                "checkpoint does not fit this baseline (" + "; ".join(diffs) + "): use the "
                "configuration it was trained with"
            )


class BaseModel(EdgeBaselineModule):
    """The edge model as it is, no training: zero-shot (user input only) or few-shot
    (``system_prompt: true``: the task's system prompt with its k examples, then the input).

    Args: see ``EdgeBaselineModule`` (the optimizer group is unused).
    """

    METHOD = "base"
    LABEL = "base model"
    MERGEABLE = True  # nothing to merge: the served model is the dense base model

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        label = "base model, few-shot system prompt" if self.system_prompt else "base model, zero-shot"
        self.SETTINGS = {"base": label}

    def on_fit_start(self) -> None:
        raise LoRAGenError("BaseModel has no trainable parameters: there is nothing to fit; run `loragen test`")

"""``loragen encode``: the frozen cloud's meta-token states for every system prompt of a run, in one file.

With a frozen cloud and frozen meta tokens, the states the cloud gives the router for a prompt never change.
``loragen encode`` computes them once, as a Lightning predict loop (so on any devices and nodes, with the
Trainer's strategy and precision), for every distinct system prompt of the DataModule's configured stages, the
method's own prompts (the task-free probe, the null-prompt control's) and those of a prompts file; it writes a
states file (``loragen.models.components.cloud_states``). Training, testing, generating and serving with
``--model.init_args.cloud_states FILE`` then never load the cloud for the prompts it holds::

    loragen encode --config configs/quickstart.yaml --out runs/quickstart/cloud_states.safetensors
    loragen fit    --config configs/quickstart.yaml \
        --model.init_args.cloud_states runs/quickstart/cloud_states.safetensors
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from loragen import LoRAGenError


class CloudEncoder(L.LightningModule):
    """The generator's cloud side as a LightningModule whose predict step is ``CloudGenerator.run_cloud``."""

    def __init__(self, generator: Any) -> None:
        super().__init__()
        self.generator = generator

    def predict_step(self, batch: tuple[list[str], list[torch.Tensor]], batch_idx: int) -> list[tuple[str, Any]]:
        shas, rows = batch
        with torch.no_grad():
            states = self.generator.run_cloud([r.to(self.device) for r in rows])
        return list(zip(shas, states.detach().cpu(), strict=True))


def _collate(items: list[tuple[str, torch.Tensor]]) -> tuple[list[str], list[torch.Tensor]]:
    return [sha for sha, _ in items], [ids for _, ids in items]


def read_prompts_file(path: str | Path) -> list[str]:
    """System prompts from a file: ``.jsonl`` (each line a JSON string or an object with ``system``) or text
    (one prompt per line, blank lines skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoRAGenError(f"prompts file {path} does not exist: give a .jsonl or .txt file of system prompts")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise LoRAGenError(f"{path}:{number} is not JSON ({err.msg}): one JSON string or object per line") from None
        value = value.get("system") if isinstance(value, dict) else value
        if not isinstance(value, str):
            raise LoRAGenError(f'{path}:{number} holds no prompt: write a JSON string or {{"system": "..."}}')
        prompts.append(value)
    return prompts


def collect_prompts(model: Any, datamodule: Any, prompts_file: str | None) -> dict[str, list[int]]:
    """Every distinct tokenized system prompt the run reads, keyed by its states-file sha256."""
    from loragen.contracts import EvaluationData
    from loragen.models.components.cloud_states import prompt_sha

    data = datamodule if isinstance(datamodule, EvaluationData) else None
    rows: list[list[int]] = []
    if data is not None:
        rows += data.system_prompt_ids()
    rows += model.method_prompt_ids()
    if prompts_file:
        texts = read_prompts_file(prompts_file)
        if data is not None:  # the data's truncation, as in training
            tokenize = data.tokenize_system_prompt
        else:
            tokenizer = model.model.cloud_backbone.tokenizer
            tokenize = lambda text: tokenizer(text, add_special_tokens=True)["input_ids"]  # noqa: E731
        rows += [tokenize(text) for text in texts]
    return {prompt_sha(ids): ids for ids in rows if ids}


class LoRAGenTrainer(L.Trainer):
    """Lightning's Trainer with loragen's ``encode`` subcommand."""

    def encode(
        self,
        model: Any,
        datamodule: L.LightningDataModule | None = None,
        out: str = "cloud_states.safetensors",
        prompts: str | None = None,
        batch_size: int = 16,
        ckpt_path: str | None = None,
    ) -> Path:
        """Write the frozen cloud's meta-token states for every system prompt of the run to a states file.

        Args:
            out: the states file to write (safetensors; written atomically).
            prompts: more system prompts, a ``.jsonl`` (JSON strings or objects with ``system``) or text file
                (one per line), e.g. the prompts a service will be asked for.
            batch_size: prompts per cloud batch (sorted by length, so little padding).
            ckpt_path: the checkpoint (or release) whose meta tokens the states are for; default: those of
                ``seed`` (or ``model.init_from``), as a fresh fit starts from.
        """
        from loragen.models.components.cloud_states import CloudStates, cloud_fingerprint

        generator = getattr(getattr(model, "model", None), "generator", None)
        if generator is None or getattr(generator, "pooling", None) != "meta":
            raise LoRAGenError(f"loragen encode needs LoRA-Gen (a meta-token generator); got {type(model).__name__}")
        if generator.cloud is None:
            raise LoRAGenError("loragen encode runs the cloud: leave out model.init_args.cloud_states")
        if generator.trains_cloud_side:
            raise LoRAGenError(
                "loragen encode writes the states of a frozen cloud side, but train_meta_tokens or cloud_lora_rank "
                "trains it: its states change every step"
            )
        if ckpt_path:
            _load_meta_tokens(model, ckpt_path)
        start = time.perf_counter()
        found = collect_prompts(model, datamodule, prompts)
        if not found:
            raise LoRAGenError("loragen encode found no system prompt: give data files or --prompts FILE")
        order = sorted(found, key=lambda sha: len(found[sha]))
        items = [(sha, torch.tensor(found[sha], dtype=torch.long)) for sha in order]
        loader: Any = torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=_collate)  # type: ignore[arg-type]  # a list is a map-style dataset
        from lightning.pytorch.callbacks import BasePredictionWriter

        # the config's prediction writers are for the edge's answers, not for states
        callbacks = self.callbacks  # type: ignore[has-type]  # set in Trainer.__init__, not declared
        self.callbacks = [c for c in callbacks if not isinstance(c, BasePredictionWriter)]
        predictions = self.predict(CloudEncoder(generator), dataloaders=loader, return_predictions=True) or []
        pairs = [pair for batch in predictions for pair in batch]
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(parts, pairs)
            pairs = [pair for part in parts for pair in part]
        path = Path(out).expanduser()
        if self.is_global_zero:
            tokenizer = model.model.cloud_backbone.tokenizer
            states = CloudStates(
                states=dict(pairs),
                meta_tokens=generator.meta_tokens.detach().cpu(),
                cloud=cloud_fingerprint(model.model.cloud_backbone),
                pooling=generator.pooling,
                prompts={sha: tokenizer.decode(found[sha]) for sha in order},
            )
            if set(states.states) != set(found):
                raise RuntimeError(f"encode computed {len(states.states)} of {len(found)} prompts' states")
            path.parent.mkdir(parents=True, exist_ok=True)
            states.save(path)
            print(
                f"loragen encode: {len(found)} system prompts -> {path} ({path.stat().st_size / 2**20:.1f} MiB, "
                f"{states.dtype}, {time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        self.strategy.barrier()
        return path


def _load_meta_tokens(model: Any, ckpt_path: str) -> None:
    """Put a checkpoint's meta tokens (and its other trained weights) into ``model``, after its identity check."""
    from loragen.checkpoint import load_checkpoint, resolve_checkpoint

    checkpoint = load_checkpoint(resolve_checkpoint(ckpt_path))
    model.check_identity(checkpoint["loragen"])
    model.load_state_dict(checkpoint["state_dict"], strict=False)

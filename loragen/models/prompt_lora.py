"""``PromptLoRAMethod``: the base of methods that turn a system prompt into a LoRA for the edge (LoRA-Gen,
Text-to-LoRA); the subclass supplies the model that generates, the base serves what it generates.

Training is the subclass's (its functional path: each sample's generated LoRA applied by hooks).
Validation, test and predict are deployment-faithful by default: at the start of each epoch the model
generates once per distinct system prompt of the stage, and each prompt's items are answered with its LoRA
merged into the edge weights, *without* the system prompt; the exact original weights are restored (and
checked by ``EdgeMethod``). With ``eval.reference`` the plain edge is also scored with the full system prompt
on the same items, so every results table carries it; ``eval.sensitivity`` adds the rotated and task-free
prompts' LoRAs on the same items, and for tasks with a held-out paraphrase (the suite's) the LoRA of the
prompt read with that paraphrase.

The model (``self.model``, an ``nn.Module``) offers: ``generator`` (the ``CloudGenerator`` reading prompts),
``cloud_backbone`` / ``edge_backbone`` / ``edge``, ``edge_lora`` (``EdgeLoRA``: merge / unmerge),
``fingerprint``, ``generate(ids, mask) -> list[GeneratedLoRA]``, ``functional(lora)`` (a context serving one
generated LoRA by hooks) and ``trainable_state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from loragen import LoRAGenError
from loragen.contracts import evaluation_data
from loragen.models.config import GENERIC_PROMPT
from loragen.models.edge_method import EdgeMethod, Served

GENERIC_KEY = b"loragen:generic-prompt"
PRECOMPUTED_PROMPTS = 64  # distinct system prompts generated up front per evaluation epoch (and per cloud batch)


def settings_for(key: str, label: str) -> dict[str, str]:
    """The rows of a prompt-to-LoRA method: its own, the sensitivity rows and the references."""
    return {
        key: f"{label} (merged, no system prompt)",
        "rotated": f"{label}, another task's LoRA (rotated)",
        "generic": f"{label}, a task-free prompt's LoRA",
        "paraphrase": f"{label}, the held-out paraphrase's LoRA",
        "prompted": "edge + full system prompt",
        "zero_shot": "edge, no system prompt, no LoRA",
    }


class PromptLoRAMethod(EdgeMethod):
    """One generated LoRA per system prompt, served merged (see the module docstring)."""

    REFERENCE_ROWS = True
    model: Any

    def __init__(self, cloud: str, edge: str, optim: Any, eval: Any, seed: int) -> None:  # noqa: A002
        super().__init__(cloud=cloud, edge=edge, optim=optim, eval=eval, seed=seed)
        self.init_from: str | None = None
        self.task_loras: dict[bytes, Any] = {}  # system-prompt key -> GeneratedLoRA, per evaluation epoch
        self.rotation: dict[bytes, bytes] = {}  # prompt key -> the key whose LoRA the "rotated" check serves
        self.gate_distance: dict[str, Any] | None = None

    def prompt_distances(self, task_loras: list[Any], generic: Any) -> dict[str, Any] | None:
        """How differently the model treats the stage's prompts (LoRA-Gen: its gates); None: not measured."""
        return None

    # ------------------------------------------------------------------ what the base asks of a method

    def frozen_backbones(self) -> list[torch.nn.Module]:
        return [m for m in (self.model.edge, self.model.generator.cloud) if m is not None]

    def scoring_model(self) -> Any:
        return self.model.edge

    def edge_tokenizer(self) -> Any:
        return self.model.edge_backbone.tokenizer

    def trained_state_names(self) -> set[str]:
        return {f"model.{k}" for k in self.model.trainable_state_dict()}

    def identity(self) -> dict[str, Any]:
        return {
            "method": self.METHOD,
            "fingerprint": self.model.fingerprint.to_dict(),
            **({"init_from": str(self.init_from)} if self.init_from else {}),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["loragen"]["rng"] = _rng_state()  # a resumed run's random draws continue exactly

    def check_identity(self, stored: dict[str, Any]) -> None:
        from loragen.models.components.fingerprint import PairFingerprint

        if stored.get("fingerprint") is None:
            raise LoRAGenError("this checkpoint has no loragen pair fingerprint: it was not written by loragen")
        method = stored.get("method", "loragen")  # checkpoints before Text-to-LoRA are LoRA-Gen's
        if method != self.METHOD:
            raise LoRAGenError(
                f"method: checkpoint {method!r} was written by another method than {self.METHOD!r}: "
                "load it with its own class_path"
            )
        PairFingerprint.from_dict(stored["fingerprint"]).check_compatible(self.model.fingerprint)
        if self._fitting() and "rng" in stored:  # random draws continue exactly where they stopped
            _set_rng_state(stored["rng"])

    def result_info(self) -> dict[str, Any]:
        info = {
            **super().result_info(),
            "eval_path": self.evaluation.path,
            "fingerprint": self.model.fingerprint.to_dict(),
        }
        info.pop("edge")
        if self.gate_distance is not None:
            info["gate_distance"] = self.gate_distance
        return info

    def eval_settings(self) -> list[str]:
        settings = super().eval_settings()
        if self.evaluation.sensitivity:
            settings[1:1] = (["rotated", "generic"] if len(self.eval_tasks) > 1 else ["generic"]) + ["paraphrase"]
        return settings

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
                self._grade_items(stage, self.METHOD, batch, "prompt", members)
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
        return self.model.functional(lora)

    def _generate_for(self, prompts: list[list[int]]) -> list[Any]:
        """One generated LoRA per tokenized system prompt (one cloud batch, right-padded)."""
        from loragen.data.tokenize import pad

        ids, mask = pad(prompts, 0), pad([[1] * len(p) for p in prompts], 0)
        return self.model.generate(ids.to(self.device), mask.to(self.device))

    def _generic_lora(self) -> Any:
        if GENERIC_KEY not in self.task_loras:
            self.task_loras[GENERIC_KEY] = self._generate_for([self.generic_prompt_ids()])[0]
        return self.task_loras[GENERIC_KEY]

    def generic_prompt_ids(self) -> list[int]:
        """The task-free probe of the sensitivity rows, tokenized for the cloud."""
        return self.model.cloud_backbone.tokenizer(GENERIC_PROMPT, add_special_tokens=True)["input_ids"]

    def method_prompt_ids(self) -> list[list[int]]:
        """System prompts the method reads besides its data's (``loragen encode`` covers them too)."""
        return [self.generic_prompt_ids()]

    def prepare_serving(self, stage: str) -> None:
        """Before an evaluation epoch: one generated LoRA per distinct system prompt of the stage (one
        cloud pass each, none per batch) when there are few of them (a prompt per task; per-item prompts
        are generated batch by batch instead), and for the sensitivity check each task's LoRA (that of
        its first prompt), the task rotation and the prompt distances."""
        self.task_loras, self.rotation, self.gate_distance = {}, {}, None
        data = evaluation_data(self._trainer)
        examples = data.examples.get(stage, []) if data is not None else []
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
            chunk = keys[start : start + PRECOMPUTED_PROMPTS]
            self.task_loras.update(zip(chunk, self._generate_for([prompts[k] for k in chunk]), strict=True))
        if stage in ("val", "test") and not self._fitting():  # cheap (one LoRA per prompt): every test has them
            tasks = list(first_of_task)
            if self._sensitivity_now() and len(tasks) > 1:  # task i's prompts get task i+1's (first) LoRA
                following = {t: first_of_task[tasks[(i + 1) % len(tasks)]] for i, t in enumerate(tasks)}
                for task, key in keyed:
                    self.rotation.setdefault(key, following[task])
            self.gate_distance = self.prompt_distances(
                [self.task_loras[first_of_task[t]] for t in tasks], self._generic_lora()
            )

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
        groups = distinct_rows(batch["system_ids"], batch["system_mask"])
        keys = [_row_key(batch["system_ids"][g[0]], batch["system_mask"][g[0]]) for g in groups]
        missing = [i for i, key in enumerate(keys) if key not in self.task_loras]
        generated: Iterator[Any] = iter([])
        if missing:
            firsts = torch.tensor([groups[i][0] for i in missing], device=self.device)
            generated = iter(self.model.generate(batch["system_ids"][firsts], batch["system_mask"][firsts]))
        loras = [self.task_loras[key] if key in self.task_loras else next(generated) for key in keys]
        return groups, keys, loras

    # ------------------------------------------------------------------ checkpoints

    def _init_from(self, path: str) -> None:
        """Start from the trained weights of a checkpoint of the same method and pair."""
        from loragen.checkpoint import load_checkpoint, resolve_checkpoint
        from loragen.models.components.fingerprint import PairFingerprint

        self.init_from = path
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
            raise LoRAGenError(
                f"{path} lacks trained weights {sorted(expected - set(weights))[:3]}: it was "
                "trained with other settings (method, experts, rank, targets)"
            )
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


def prompt_key(ids: Any) -> bytes:
    """Identity of one tokenized system prompt (token ids, a list or a 1-D tensor without padding)."""
    return torch.as_tensor(ids, dtype=torch.long).cpu().numpy().tobytes()


def _row_key(ids: torch.Tensor, mask: torch.Tensor) -> bytes:
    """Identity of one padded batch row's system prompt."""
    return prompt_key(ids[mask.bool()])


def distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Group batch rows by identical (unpadded) system prompt, in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for i, (row, m) in enumerate(zip(ids, mask, strict=True)):
        groups.setdefault(_row_key(row, m), []).append(i)
    return list(groups.values())

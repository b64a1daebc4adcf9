"""``Deployment``: a checkpoint ready to turn system prompts into LoRAs for its edge model.

Loading is lazy: the cloud model is loaded only for a system prompt whose gates are not cached;
cache hits and gates files need only the edge side. Whatever the path, the LoRA is assembled from
the (float32) gates by the checkpoint's expert pool, so a cached, applied or freshly generated
LoRA for the same prompt and checkpoint is bit-identical.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loragen import LoRAGenError
from loragen.checkpoint import read_checkpoint
from loragen.deploy.artifacts import sha256_text
from loragen.deploy.cache import GatesCache
from loragen.deploy.checkpoint import EdgeSide, edge_side_of, load_edge_side, load_module
from loragen.deploy.gates import GatesRecord

if TYPE_CHECKING:
    from loragen.models.components.expert_pool import GeneratedLoRA


def check_system_prompt(text: str | None) -> str:
    """Refuse an empty system prompt before any model is loaded."""
    if text is None or not text.strip():
        raise LoRAGenError(
            "the system prompt is empty: give the task's instruction with --system_prompt or --system_prompt_file"
        )
    return text


class Deployment:
    """One checkpoint (and its cloud/edge pair) serving system prompts.

    Args:
        ckpt_path: a checkpoint written by ``loragen fit``.
        cloud / edge: model sources overriding the checkpoint's; checked against its pair fingerprint.
        cloud_states: a ``loragen encode`` states file: prompts it holds are read without loading the cloud.
        cache: look up and store generated gates in ``cache_dir`` (default ``cache_root()/generated``).
    """

    def __init__(
        self,
        ckpt_path: str | os.PathLike[str],
        *,
        cloud: str | None = None,
        edge: str | None = None,
        cloud_states: str | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.info = read_checkpoint(Path(ckpt_path))
        self.cloud, self.edge, self.cloud_states = cloud, edge, cloud_states
        self.cache = GatesCache(cache_dir) if cache else None
        self._module: Any = None  # LoRAGenModule, loaded on first use
        self._edge_side: EdgeSide | None = None
        stored = self.info.fingerprint
        if (cloud and cloud != stored["cloud"]) or (edge and edge != stored["edge"]):
            _ = self.module  # another pair: loading names every differing fingerprint field (or accepts it)

    @property
    def module(self) -> Any:
        """The full ``LoRAGenModule`` (cloud + edge), loaded on first use."""
        if self._module is None:
            self._module = load_module(self.info, self.cloud, self.edge, self.cloud_states)
        return self._module

    @property
    def edge_side(self) -> EdgeSide:
        """Edge model + expert pool: the loaded module's, or loaded alone (no cloud) if none is."""
        if self._edge_side is None:
            if self._module is not None:
                self._edge_side = edge_side_of(self._module)
            else:
                self._edge_side = load_edge_side(self.info, self.edge)
        return self._edge_side

    def system_ids(self, text: str) -> list[int]:
        """Cloud token ids of a system prompt (as in training), refusing one longer than the cloud's context."""
        model = self.module.model
        ids = model.cloud_backbone.tokenizer(text, add_special_tokens=True)["input_ids"]
        meta = model.generator.num_meta
        config = getattr(model.cloud_backbone.model, "config", None)  # no cloud model: served from a states file
        context = getattr(config, "max_position_embeddings", None)
        if context is not None and len(ids) > int(context) - meta:
            raise LoRAGenError(
                f"the system prompt is {len(ids)} cloud tokens, over the limit of {int(context) - meta} "
                f"(the cloud's context of {context} minus {meta} meta tokens): shorten it"
            )
        trained = self.info.data_hparams.get("max_system_tokens")
        if trained and len(ids) > int(trained):
            warnings.warn(
                f"the system prompt is {len(ids)} cloud tokens; the generator was trained on prompts "
                f"truncated to {trained}, so its gates for this prompt are an extrapolation",
                stacklevel=2,
            )
        return ids

    def gates(self, system_prompt: str) -> tuple[GatesRecord, bool]:
        """The gates for a system prompt and whether they came from the cache (no cloud pass)."""
        (outcome,) = self.gates_many([system_prompt])
        if isinstance(outcome, LoRAGenError):
            raise outcome
        return outcome

    def gates_many(self, prompts: list[str]) -> list[tuple[GatesRecord, bool] | LoRAGenError]:
        """Gates for several system prompts at once (the service's batches): cache hits first, then
        every distinct missing prompt in one right-padded cloud pass. Each position gets
        ``(record, from_cache)``, or the ``LoRAGenError`` that stops that prompt alone (empty, too
        long); the others are still served. A single prompt runs exactly as ``gates`` always has."""
        from loragen.data.tokenize import pad

        results: list[tuple[GatesRecord, bool] | LoRAGenError | None] = [None] * len(prompts)
        misses: dict[str, list[int]] = {}  # prompt -> its positions
        ids_of: dict[str, list[int]] = {}
        key_of: dict[str, str] = {}
        for i, prompt in enumerate(prompts):
            try:
                check_system_prompt(prompt)
                key_of[prompt] = key_of.get(prompt) or sha256_text(prompt)
                cached = self._cached(key_of[prompt])
                if cached is not None:
                    results[i] = (cached, True)
                    continue
                if prompt not in ids_of:
                    ids_of[prompt] = self.system_ids(prompt)
                misses.setdefault(prompt, []).append(i)
            except LoRAGenError as err:
                results[i] = err
        if misses:
            rows = [ids_of[prompt] for prompt in misses]
            ids, mask = pad(rows, 0), pad([[1] * len(r) for r in rows], 0)
            start = time.perf_counter()
            loras = self.module.model.generate(ids, mask)
            seconds = time.perf_counter() - start
            for (prompt, positions), lora, row in zip(misses.items(), loras, rows, strict=True):
                record = GatesRecord(
                    gates=lora.gates.detach().float().cpu(),
                    fingerprint=self.info.fingerprint,
                    checkpoint_sha256=self.info.sha256,
                    system_prompt_sha256=key_of[prompt],
                    cloud_seconds=seconds,
                    system_tokens=len(row),
                )
                self._store(record)
                for n, position in enumerate(positions):  # a repeat inside the batch shares the pass
                    results[position] = (record, n > 0)
        return results  # type: ignore[return-value]  # every None slot was filled above

    def _cached(self, key: str) -> GatesRecord | None:
        if self.cache is None:
            return None
        record = self.cache.get(self.info.sha256, key)
        return record if record is not None and record.fingerprint == self.info.fingerprint else None

    def _store(self, record: GatesRecord) -> None:
        if self.cache is not None:
            try:
                self.cache.put(record)
            except OSError as err:  # a read-only cache must not stop deployment
                warnings.warn(f"could not write the gates cache in {self.cache.directory}: {err}", stacklevel=2)

    def lora(self, record: GatesRecord, where: str = "gates") -> GeneratedLoRA:
        """Assemble the ``GeneratedLoRA`` of a gates record with this checkpoint's expert pool."""
        record.check_matches(self.info.fingerprint, self.info.sha256, where)
        pool = self.edge_side.pool
        if tuple(record.gates.shape) != (pool.num_layers, pool.num_experts):
            raise LoRAGenError(
                f"{where} has gates of shape {tuple(record.gates.shape)} but the expert pool needs "
                f"({pool.num_layers}, {pool.num_experts}): regenerate them for this checkpoint"
            )
        return pool.assemble(record.gates).detach()

    @property
    def checkpoint(self) -> Path:
        return self.info.path

"""Write a generated LoRA in one of its formats into a (temporary) output directory: one writer per format
(``WRITERS``), behind one function (``write_payload``) that generate, apply and serve all call.

- ``peft``: a standard PEFT LoRA adapter of rank k·r (``save_peft_adapter``).
- ``merged``: a Hugging Face model directory with the LoRA merged into the weights (config,
  safetensors, tokenizer, generation config); the in-memory edge model is unmerged afterwards.
- ``gates``: only the gates record (in ``loragen_meta.json``); ``loragen apply`` rebuilds the others.
- ``gguf`` / ``gguf-lora``: for llama.cpp, the specialized edge model as one GGUF file or the LoRA as a
  llama.cpp adapter (``loragen.deploy.gguf_export``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loragen.deploy.artifacts import FORMATS, dir_bytes
from loragen.deploy.checkpoint import EdgeSide
from loragen.deploy.gates import GatesRecord


def base_model_name(side: EdgeSide) -> str:
    """What PEFT should load as the base: the edge's local directory or hub id, else its loragen source."""
    return str(getattr(side.backbone.model.config, "name_or_path", "") or side.backbone.source)


def timed_merge(side: EdgeSide, lora: Any) -> float:
    """Seconds to merge ``lora`` into the edge weights (unmerged again right after)."""
    start = time.perf_counter()
    side.edge_lora.merge(lora)
    seconds = time.perf_counter() - start
    side.edge_lora.unmerge()
    return seconds


def save_merged(side: EdgeSide, lora: Any, directory: Path) -> float:
    """Merge, save the edge model + tokenizer + generation config, unmerge; returns the merge seconds."""
    from transformers.utils import logging as hf_logging

    model = side.backbone.model
    start = time.perf_counter()
    side.edge_lora.merge(lora)
    seconds = time.perf_counter() - start
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise in a CLI report
    try:
        model.save_pretrained(str(directory))
        side.backbone.tokenizer.save_pretrained(str(directory))
        if not (directory / "generation_config.json").is_file() and model.generation_config is not None:
            model.generation_config.save_pretrained(str(directory))
    finally:
        side.edge_lora.unmerge()
        if bars:
            hf_logging.enable_progress_bar()
    return seconds


def gates_bytes(record: GatesRecord) -> int:
    return len(json.dumps(record.to_dict()).encode("utf-8"))


def gguf_keys(side: EdgeSide, record: GatesRecord) -> dict[str, Any]:
    """What a GGUF output records of its origin (``loragen.*`` keys): checkpoint, prompt, pair, edge."""
    return {
        "checkpoint_sha256": record.checkpoint_sha256,
        "system_prompt_sha256": record.system_prompt_sha256,
        "fingerprint": record.fingerprint,
        "edge": side.backbone.source,
    }


# ----------------------------------------------------------------------------- one writer per format
# A writer puts its format into ``directory`` and returns the seconds a merge of the LoRA takes (timed, then
# undone, when the format itself does not merge). Adding a format is one writer here, its name in
# ``artifacts.FORMATS`` (the CLI's choices) and, where needed, its pre-flight check in ``generate``.

Writer = Callable[[EdgeSide, Any, GatesRecord, Path, str], float]


def _write_peft(side: EdgeSide, lora: Any, record: GatesRecord, directory: Path, gguf_type: str) -> float:
    from loragen.models.components.edge_lora import save_peft_adapter

    save_peft_adapter(lora, directory, base_model_name_or_path=base_model_name(side))
    return timed_merge(side, lora)


def _write_merged(side: EdgeSide, lora: Any, record: GatesRecord, directory: Path, gguf_type: str) -> float:
    return save_merged(side, lora, directory)


def _write_gates(side: EdgeSide, lora: Any, record: GatesRecord, directory: Path, gguf_type: str) -> float:
    return timed_merge(side, lora)  # the record itself goes into loragen_meta.json, as for every format


def _write_gguf(side: EdgeSide, lora: Any, record: GatesRecord, directory: Path, gguf_type: str) -> float:
    from loragen.deploy import gguf_export

    path = directory / gguf_export.file_name("gguf", gguf_type)
    return gguf_export.write_model(side, lora, path, gguf_type, gguf_keys(side, record))  # merges once, timed


def _write_gguf_lora(side: EdgeSide, lora: Any, record: GatesRecord, directory: Path, gguf_type: str) -> float:
    from loragen.deploy import gguf_export

    path = directory / gguf_export.file_name("gguf-lora", gguf_type)
    gguf_export.write_lora(side, lora, path, gguf_type, gguf_keys(side, record))
    return timed_merge(side, lora)


WRITERS: dict[str, Writer] = {
    "peft": _write_peft,
    "merged": _write_merged,
    "gates": _write_gates,
    "gguf": _write_gguf,
    "gguf-lora": _write_gguf_lora,
}
assert tuple(WRITERS) == FORMATS, "artifacts.FORMATS and the writers disagree"


def write_payload(
    side: EdgeSide, lora: Any, record: GatesRecord, fmt: str, directory: Path, gguf_type: str = "f16"
) -> dict[str, Any]:
    """Write ``fmt`` into ``directory`` (its writer); returns merge seconds and the payload's bytes."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(WRITERS)}")
    merge_seconds = WRITERS[fmt](side, lora, record, directory, gguf_type)
    payload = gates_bytes(record) if fmt == "gates" else dir_bytes(directory)
    return {"merge_seconds": merge_seconds, "payload_bytes": payload}


def payload_estimates(side: EdgeSide, lora: Any, record: GatesRecord) -> dict[str, int]:
    """Bytes of each format: PEFT = 4·Σ (k·r)(in+out) (float32), gates = its JSON, merged = edge weights."""
    peft = 4 * sum(lora.rank * (site.in_features + site.out_features) for site in side.pool.sites)
    merged = sum(p.numel() * p.element_size() for p in side.backbone.model.parameters())
    return {"gates": gates_bytes(record), "peft": peft, "merged": merged}

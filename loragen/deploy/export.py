"""Write a generated LoRA in one of three formats into a (temporary) output directory.

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
from pathlib import Path
from typing import Any

from loragen.deploy.artifacts import GGUF_FORMATS, dir_bytes
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


def write_payload(
    side: EdgeSide, lora: Any, record: GatesRecord, fmt: str, directory: Path, gguf_type: str = "f16"
) -> dict[str, Any]:
    """Write ``fmt`` into ``directory``; returns merge seconds and the payload's bytes."""
    from loragen.models.components.edge_lora import save_peft_adapter

    if fmt in GGUF_FORMATS:
        from loragen.deploy import gguf_export

        path = directory / gguf_export.file_name(fmt, gguf_type)
        if fmt == "gguf":  # merges once, and times it
            merge_seconds = gguf_export.write_model(side, lora, path, gguf_type, gguf_keys(side, record))
        else:
            gguf_export.write_lora(side, lora, path, gguf_type, gguf_keys(side, record))
            merge_seconds = timed_merge(side, lora)
    elif fmt == "peft":
        save_peft_adapter(lora, directory, base_model_name_or_path=base_model_name(side))
        merge_seconds = timed_merge(side, lora)
    elif fmt == "merged":
        merge_seconds = save_merged(side, lora, directory)
    elif fmt == "gates":
        merge_seconds = timed_merge(side, lora)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    payload = gates_bytes(record) if fmt == "gates" else dir_bytes(directory)
    return {"merge_seconds": merge_seconds, "payload_bytes": payload}


def payload_estimates(side: EdgeSide, lora: Any, record: GatesRecord) -> dict[str, int]:
    """Bytes of each format: PEFT = 4·Σ (k·r)(in+out) (float32), gates = its JSON, merged = edge weights."""
    peft = 4 * sum(lora.rank * (site.in_features + site.out_features) for site in side.pool.sites)
    merged = sum(p.numel() * p.element_size() for p in side.backbone.model.parameters())
    return {"gates": gates_bytes(record), "peft": peft, "merged": merged}

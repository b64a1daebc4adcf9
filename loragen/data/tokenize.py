"""Turning records into token ids for the cloud and the edge, and padding them into batches.

Edge text: ``prompt = input`` for LoRA-Gen (the system prompt never reaches the edge) or
``system + "\\n\\n" + input`` for the system-prompted reference; the answer is ``" " + output``.
A (context, answer) pair is encoded as lm-evaluation-harness encodes it (``encode_pair``), so the
answer tokens are those of running text and option scores agree with the harness's.

Truncation policy (stated, counted, never a crash): a system prompt keeps its first
``max_system_tokens`` (the task description comes first); a user input keeps its last
``max_input_tokens`` (the question's end and the answer cue); an answer keeps its first
``max_output_tokens``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from loragen.data.records import Record

IGNORE = -100


@dataclass
class Limits:
    max_system_tokens: int = 1024
    max_input_tokens: int = 256
    max_output_tokens: int = 64
    truncated: Counter = field(default_factory=Counter)

    def head(self, ids: list[int], limit: int, what: str) -> list[int]:
        if len(ids) > limit:
            self.truncated[what] += 1
            return ids[:limit]
        return ids

    def tail(self, ids: list[int], limit: int, what: str) -> list[int]:
        if len(ids) > limit:
            self.truncated[what] += 1
            return ids[-limit:]
        return ids


def edge_prompt(record: Record, with_system: bool, context: str | None = None) -> str:
    """What the edge reads: the input (or ``context``), after the system prompt when ``with_system``."""
    text = record.input if context is None else context
    if with_system and record.system:
        return f"{record.system}\n\n{text}"
    return text


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's encoding of a (context, continuation) pair: trailing spaces of the
    context move to the continuation, the whole text is encoded (with the tokenizer's default special
    tokens) and the continuation is what follows the context's own tokens. An empty context is the
    BOS (else EOS) token, as in the harness."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids) :]


class RecordTokenizer:
    """Tokenizes records for training (gold answer) and evaluation (every option)."""

    def __init__(self, cloud_tokenizer: Any, edge_tokenizer: Any, limits: Limits) -> None:
        self.cloud, self.edge, self.limits = cloud_tokenizer, edge_tokenizer, limits
        self._system_cache: dict[str, list[int]] = {}

    def system_ids(self, text: str) -> list[int]:
        if text not in self._system_cache:
            ids = self.cloud(text, add_special_tokens=True)["input_ids"]
            self._system_cache[text] = self.limits.head(ids, self.limits.max_system_tokens, "system prompt")
        return self._system_cache[text]

    def _input_limit(self, with_system: bool) -> int:
        return self.limits.max_input_tokens + (self.limits.max_system_tokens if with_system else 0)

    def prompt_ids(self, record: Record, with_system: bool) -> list[int]:
        """The edge prompt of generation (and of the per-request token count)."""
        ids = self.edge(edge_prompt(record, with_system), add_special_tokens=True)["input_ids"]
        return self.limits.tail(ids, self._input_limit(with_system), "user input")

    def pair_ids(
        self, record: Record, context: str, answer: str, with_system: bool, scoring: bool = False
    ) -> tuple[list[int], list[int]]:
        """(context, " " + answer) encoded as the harness does; the context keeps its tail. A training
        answer keeps its head (``max_output_tokens``); a scored option is never cut (its whole text is
        the option), and its context's truncation is counted once, by ``prompt_ids``."""
        prompt, answer_ids = encode_pair(self.edge, edge_prompt(record, with_system, context), " " + answer)
        if scoring:
            return prompt[-self._input_limit(with_system) :], answer_ids
        prompt = self.limits.tail(prompt, self._input_limit(with_system), "user input")
        return prompt, self.limits.head(answer_ids, self.limits.max_output_tokens, "answer")

    def requests(self, record: Record, with_system: bool) -> list[tuple[list[int], list[int]]]:
        """One (context ids, continuation ids) pair per option: the option text after the input, or
        after its own context (partial scoring)."""
        contexts = record.contexts or (record.input,) * len(record.options or ())
        return [
            self.pair_ids(record, c, o, with_system, scoring=True)
            for c, o in zip(contexts, record.options or (), strict=True)
        ]

    def _sequence(self, record: Record, with_system: bool) -> tuple[list[int], list[int]]:
        prompt, answer = self.pair_ids(record, record.train_context, record.output, with_system)
        if self.edge.eos_token_id is not None:
            answer = answer + [self.edge.eos_token_id]
        return prompt + answer, [IGNORE] * len(prompt) + answer

    def train_example(self, record: Record, with_system: bool = False, teacher: bool = False) -> dict[str, Any]:
        """Edge sequence = prompt + answer (loss on the answer only); ``with_system`` puts the system
        prompt in the edge context too (baselines that read it at every request); ``teacher`` adds the
        sequence with the system prompt as ``teacher_input_ids`` / ``teacher_labels`` (context distillation:
        the edge reading the prompt is the target of the edge without it)."""
        ids, labels = self._sequence(record, with_system)
        example = {
            "system_ids": self.system_ids(record.system),
            "input_ids": ids,
            "labels": labels,
            "task": record.task,
        }
        if teacher:
            example["teacher_input_ids"], example["teacher_labels"] = self._sequence(record, with_system=True)
        return example

    def eval_example(self, record: Record, reference: bool) -> dict[str, Any]:
        """Gold sequence plus the edge prompt per setting and, for multiple choice, each option's
        (context, continuation) ids and its length in characters (for ``acc_norm``)."""
        example = self.train_example(record)
        example["label"] = record.label if record.label is not None else -1
        example["option_chars"] = [len(o) for o in record.options or ()]
        example["prompt"] = self.prompt_ids(record, with_system=False)
        example["requests"] = self.requests(record, with_system=False)
        if reference:
            example["ref_prompt"] = self.prompt_ids(record, with_system=True)
            example["ref_requests"] = self.requests(record, with_system=True)
        if record.meta.get("heldout_system"):  # the task's held-out paraphrase (LoRA-Gen's paraphrase row)
            example["heldout_system_ids"] = self.system_ids(record.meta["heldout_system"])
        example["record"] = record
        return example


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), width)


class Collator:
    """Pads examples into a batch; right padding everywhere (see ``CloudGenerator`` for why)."""

    def __init__(self, cloud_pad_id: int, edge_pad_id: int) -> None:
        self.cloud_pad, self.edge_pad = cloud_pad_id, edge_pad_id

    def _edge(self, rows: list[list[int]], labels: list[list[int]], prefix: str) -> dict[str, torch.Tensor]:
        ids = pad(rows, self.edge_pad)
        mask = pad([[1] * len(r) for r in rows], 0)
        return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": mask, f"{prefix}labels": pad(labels, IGNORE)}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        systems = [e["system_ids"] for e in examples]
        batch: dict[str, Any] = {
            "system_ids": pad(systems, self.cloud_pad),
            "system_mask": pad([[1] * len(s) for s in systems], 0),
            "task": [e["task"] for e in examples],
        }
        batch.update(self._edge([e["input_ids"] for e in examples], [e["labels"] for e in examples], ""))
        if "teacher_input_ids" in examples[0]:
            batch.update(
                self._edge(
                    [e["teacher_input_ids"] for e in examples], [e["teacher_labels"] for e in examples], "teacher_"
                )
            )
        if "sibling_system_ids" in examples[0]:  # a row without a sibling task reads its own prompt, marked invalid
            siblings = [e["sibling_system_ids"] or e["system_ids"] for e in examples]
            batch["sibling_system_ids"] = pad(siblings, self.cloud_pad)
            batch["sibling_system_mask"] = pad([[1] * len(s) for s in siblings], 0)
            batch["sibling_valid"] = torch.tensor([e["sibling_system_ids"] is not None for e in examples])
        if "requests" in examples[0]:  # evaluation: ragged lists (see ``loragen.eval.scoring``)
            batch["label"] = torch.tensor([e["label"] for e in examples])
            for key in ("requests", "ref_requests", "option_chars", "prompt", "ref_prompt", "uid", "task_pos"):
                if key in examples[0]:
                    batch[key] = [e[key] for e in examples]
            batch["heldout_system_ids"] = [e.get("heldout_system_ids") for e in examples]
            batch["records"] = [e["record"] for e in examples]
        return batch

"""GPT4Tools tool-use success rates (SR_t, SR_act, SR_args, SR) as a torchmetrics ``Metric``.

The definitions follow the benchmark's own evaluation script (AILab-CVC/GPT4Tools,
``eval/evaluate_result.py``), item by item:

* A reference that contains ``Action:`` and ``Action Input:`` **needs a tool**. Its thought, action and
  argument lists are compared position by position with the prediction's, over the longer of the
  two lists (a missing or an extra step counts as wrong):

  - thought: the answers to "Thought: Do I need to use a tool?" must match (a trailing ``No`` after the
    last action is allowed);
  - action: the tool names must match exactly;
  - arguments (``args_match="gpt4tools"``, the benchmark's rule): each ``Action Input`` is split at
    commas; a different number of arguments scores 0; an image path (``.png``) in the reference needs
    an image path in the prediction, other arguments score their BLEU-1 similarity; an item's score
    is the mean. ``args_match="exact"`` instead requires the whole ``Action Input`` to be equal after
    whitespace normalisation.
  - success (SR): thought and action fully right and argument score >= 0.5 (``exact``: == 1).

* A reference without a tool call (``Thought: Do I need to use a tool? No`` + ``AI: ...``) is right
  when the prediction's first thought is ``No`` and it has an ``AI:`` reply; then its action and
  argument scores are 1, otherwise all are 0 (as in the benchmark).

SR_t, SR_act, SR_args and SR are means over **all** items, as the benchmark reports them.
``sr_act_tool`` / ``sr_args_tool`` give the same two scores over the items that need a tool only.
A prediction with no "Do I need to use a tool?" line is unparseable: it scores 0 and is counted in
``unparseable``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torchmetrics import Metric

_THOUGHT_RE = re.compile(r"Thought: Do I need to use a tool\? (.*)")
_ACTION_RE = re.compile(r"Action: (.*)")
_ARGS_RE = re.compile(r"Action Input: (.*)")
_AI_RE = re.compile(r"AI: (.*)")
ARGS_MATCH = ("gpt4tools", "exact")


@dataclass
class ReAct:
    """The ReAct fields of one output: thought answers, tool names, tool inputs, AI replies."""

    thoughts: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    @property
    def parseable(self) -> bool:
        return bool(self.thoughts)

    @property
    def needs_tool(self) -> bool:
        return bool(self.actions) and bool(self.args)


def parse_react(text: str) -> ReAct:
    """Parse "Thought / Action / Action Input / AI" lines (the benchmark's regular expressions)."""
    text = text or ""
    return ReAct(
        [t.strip() for t in _THOUGHT_RE.findall(text)],
        [a.strip() for a in _ACTION_RE.findall(text)],
        [a.strip() for a in _ARGS_RE.findall(text)],
        [a.strip() for a in _AI_RE.findall(text)],
    )


def bleu1(reference: str, candidate: str) -> float:
    """Sentence BLEU-1 with brevity penalty, as pycocoevalcap computes it for one reference."""
    ref, hyp = reference.split(), candidate.split()
    ref_counts = Counter(ref)
    correct = sum(min(n, ref_counts[w]) for w, n in Counter(hyp).items())
    score = (correct + 1e-15) / (len(hyp) + 1e-9)
    ratio = (len(hyp) + 1e-15) / (len(ref) + 1e-9)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio) if ratio > 1e-12 else 0.0
    return score


def _positional(gt: list[str], pred: list[str]) -> float:
    longest = max(len(gt), len(pred))
    if longest == 0:
        return 1.0
    return sum(g == p for g, p in zip(gt, pred)) / longest


def _args_score(gt: str, pred: str, args_match: str) -> float:
    if args_match == "exact":
        return float(" ".join(gt.split()) == " ".join(pred.split()))
    gt_items, pred_items = gt.split(","), pred.split(",")
    if len(gt_items) != len(pred_items):
        return 0.0
    scores = []
    for g, p in zip(gt_items, pred_items):
        if ".png" in g:
            if ".png" not in p:
                return 0.0
            scores.append(1.0)
        else:
            scores.append(bleu1(g, p))
    return sum(scores) / len(scores)


def _args_list_score(gt: list[str], pred: list[str], args_match: str) -> float:
    longest = max(len(gt), len(pred))
    if longest == 0:
        return 1.0
    return sum(_args_score(g, p, args_match) for g, p in zip(gt, pred)) / longest


@dataclass
class ToolScore:
    needs_tool: bool
    parseable: bool
    thought: float
    action: float
    args: float
    success: bool


def score_tool_use(reference: str, prediction: str, args_match: str = "gpt4tools") -> ToolScore:
    """Score one prediction against its reference output (see the module docstring)."""
    if args_match not in ARGS_MATCH:
        raise ValueError(f"args_match={args_match!r} is unknown: choose one of {list(ARGS_MATCH)}")
    gt, pred = parse_react(reference), parse_react(prediction)
    if "Action:" in reference and "Action Input:" in reference:
        gt_thoughts = gt.thoughts[: len(gt.actions)]
        thoughts = list(pred.thoughts)
        if len(thoughts) == len(pred.actions) + 1 and thoughts and thoughts[-1] == "No":
            thoughts.pop()  # "... Observation: ... Thought: Do I need to use a tool? No" after the action
        thought = _positional(gt_thoughts, thoughts) if pred.thoughts else 0.0
        action = _positional(gt.actions, pred.actions)
        args = _args_list_score(gt.args, pred.args, args_match)
        threshold = 0.5 if args_match == "gpt4tools" else 1.0
        success = thought == 1.0 and action == 1.0 and args >= threshold
        return ToolScore(True, pred.parseable, thought, action, args, success)
    thought = _positional(gt.thoughts, pred.thoughts)
    if not pred.thoughts or pred.thoughts[0] != "No" or not pred.replies:
        thought = 0.0
    right = thought == 1.0
    return ToolScore(False, pred.parseable, thought, float(right), float(right), right)


class ToolUseSuccess(Metric):
    """GPT4Tools success rates over a stream of (prediction, reference) output pairs.

    ``update(predictions, references)`` takes generated texts and reference outputs;
    ``compute()`` returns ``sr_t``, ``sr_act``, ``sr_args``, ``sr`` (means over all items, in [0, 1]),
    ``sr_act_tool`` / ``sr_args_tool`` (over items that need a tool), and the counts ``items``,
    ``tool_items`` and ``unparseable``.
    """

    full_state_update = False
    higher_is_better = True
    # states (``add_state`` in ``__init__``): float64 scalars
    thought: torch.Tensor
    action: torch.Tensor
    args: torch.Tensor
    success: torch.Tensor
    action_tool: torch.Tensor
    args_tool: torch.Tensor
    items: torch.Tensor
    tool_items: torch.Tensor
    unparseable: torch.Tensor

    def __init__(self, args_match: str = "gpt4tools", **kwargs) -> None:
        super().__init__(**kwargs)
        if args_match not in ARGS_MATCH:
            raise ValueError(f"args_match={args_match!r} is unknown: choose one of {list(ARGS_MATCH)}")
        self.args_match = args_match
        for name in (
            "thought",
            "action",
            "args",
            "success",
            "action_tool",
            "args_tool",
            "items",
            "tool_items",
            "unparseable",
        ):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str] | str, references: Sequence[str] | str) -> None:
        if isinstance(predictions, str):
            predictions = [predictions]
        if isinstance(references, str):
            references = [references]
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        for prediction, reference in zip(predictions, references):
            s = score_tool_use(reference, prediction, self.args_match)
            self.thought += s.thought
            self.action += s.action
            self.args += s.args
            self.success += float(s.success)
            self.items += 1
            self.unparseable += float(not s.parseable)
            if s.needs_tool:
                self.tool_items += 1
                self.action_tool += s.action
                self.args_tool += s.args

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.items.clamp(min=1)
        n_tool = self.tool_items.clamp(min=1)
        return {
            "sr_t": self.thought / n,
            "sr_act": self.action / n,
            "sr_args": self.args / n,
            "sr": self.success / n,
            "sr_act_tool": self.action_tool / n_tool,
            "sr_args_tool": self.args_tool / n_tool,
            "items": self.items.clone(),
            "tool_items": self.tool_items.clone(),
            "unparseable": self.unparseable.clone(),
        }

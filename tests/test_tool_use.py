"""GPT4Tools success rates (SR_t, SR_act, SR_args, SR): ReAct parsing and the metric, on fixtures
with known per-item scores (including unparseable generations)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from loragen.eval.tool_use import ToolUseSuccess, bleu1, parse_react, score_tool_use

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gpt4tools" / "predictions.jsonl"
CASES = [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def test_parse_react_fields():
    text = (
        "Thought: Do I need to use a tool? Yes\nAction: Answer Question About The Image\n"
        "Action Input: image/a.png, what is on the table\nObservation: a cup\n"
        "Thought: Do I need to use a tool? No\nAI: There is a cup on the table."
    )
    parsed = parse_react(text)
    assert parsed.thoughts == ["Yes", "No"] and parsed.actions == ["Answer Question About The Image"]
    assert parsed.args == ["image/a.png, what is on the table"] and parsed.replies == ["There is a cup on the table."]
    assert parsed.parseable and parsed.needs_tool
    garbage = parse_react("I would segment the image. Action Input without the format")
    assert not garbage.parseable and garbage.actions == [] and garbage.args == []
    assert not parse_react("").parseable


def test_bleu1_matches_the_pycocoevalcap_formula():
    assert bleu1("a lighthouse at night", "a lighthouse at night") == pytest.approx(1.0)
    assert bleu1("a lighthouse at night", "a lighthouse at dusk") == pytest.approx(0.75)
    assert bleu1("a red car", "red car") == pytest.approx(math.exp(1 - 3 / 2))  # brevity penalty
    assert bleu1("a red car", "") == 0.0
    assert bleu1("cat", "dog") == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_per_item_scores_on_the_fixture(case):
    score = score_tool_use(case["reference"], case["prediction"])
    expected = case["expected"]
    assert score.needs_tool == expected["needs_tool"] and score.parseable == expected["parseable"]
    assert (score.thought, score.action) == (expected["thought"], expected["action"])
    assert score.args == pytest.approx(expected["args"], abs=1e-6)
    assert score.success == expected["success"]


def test_metric_aggregates_the_fixture_and_counts_unparseable():
    metric = ToolUseSuccess()
    half = len(CASES) // 2  # two updates: the sums carry over
    metric.update([c["prediction"] for c in CASES[:half]], [c["reference"] for c in CASES[:half]])
    metric.update([c["prediction"] for c in CASES[half:]], [c["reference"] for c in CASES[half:]])
    result = metric.compute()
    n = len(CASES)
    tool = [c for c in CASES if c["expected"]["needs_tool"]]
    mean = lambda key, rows: sum(float(c["expected"][key]) for c in rows) / len(rows)  # noqa: E731
    assert result["items"] == n and result["tool_items"] == len(tool)
    assert result["unparseable"] == sum(not c["expected"]["parseable"] for c in CASES) == 2
    assert result["sr_t"].item() == pytest.approx(mean("thought", CASES))
    assert result["sr_act"].item() == pytest.approx(mean("action", CASES))
    assert result["sr_args"].item() == pytest.approx(mean("args", CASES))
    assert result["sr"].item() == pytest.approx(mean("success", CASES))
    assert result["sr_act_tool"].item() == pytest.approx(mean("action", tool))
    assert result["sr_args_tool"].item() == pytest.approx(mean("args", tool))
    # by hand: 4 of 12 items fully right (tool x3, no tool x1)
    assert result["sr"].item() == pytest.approx(4 / 12)
    metric.reset()
    assert metric.items == 0 and metric.success == 0


def test_exact_argument_matching_option():
    ref = "Thought: Do I need to use a tool? Yes\nAction: Generate Image From User Input Text\nAction Input: a cat"
    spaced = ref.replace("a cat", "a   cat ")
    assert score_tool_use(ref, spaced, args_match="exact").success
    assert not score_tool_use(ref, ref.replace("a cat", "a dog"), args_match="exact").success
    metric = ToolUseSuccess(args_match="exact")
    metric.update(spaced, ref)
    assert metric.compute()["sr"] == torch.tensor(1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="args_match"):
        ToolUseSuccess(args_match="fuzzy")
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metric.update(["a", "b"], ["a"])


def test_scores_reference_outputs_of_the_gpt4tools_fixture():
    """The reference outputs of the published-format fixture score perfectly against themselves."""
    from loragen.data.tasks import TaskLoader

    records = TaskLoader(FIXTURE.parent.parent).records("gpt4tools", "test")
    metric = ToolUseSuccess()
    metric.update([r.output for r in records], [r.meta["answer"] for r in records])
    result = metric.compute()
    assert result["sr"] == 1.0 and result["unparseable"] == 0 and result["tool_items"] == 2

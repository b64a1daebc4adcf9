"""The paired study report of a points sweep (issue: a generator that reads its prompt): every LoRA-Gen point
against its own sensitivity rows, the reference rows scored once, and a baseline point layered as a config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from loragen import LoRAGenError
from loragen.eval.study import main as study_main
from loragen.eval.study import task_groups
from loragen.sweep import read_points, sweep

ROOT = Path(__file__).resolve().parents[1]


def _items(point: Path) -> dict[str, dict[tuple[str, str], float]]:
    out: dict[str, dict[tuple[str, str], float]] = {}
    for line in next(point.rglob("items.jsonl")).read_text().splitlines():
        item = json.loads(line)
        out.setdefault(item["setting"], {})[(item["task"], item["source"] or item["uid"])] = item["acc_norm"]
    return out


@pytest.mark.heavy
def test_study_pairs_points_with_their_own_rows_the_shared_references_and_a_layered_baseline(tmp_path):
    points = {
        "base": {},
        "margin": {
            "model.init_args.specificity.margin_coef": 1.0,
            "model.init_args.eval.reference": False,
            "model.init_args.eval.zero_shot_reference": False,
        },
        "lora": {"config": str(ROOT / "configs" / "baselines" / "lora.yaml")},
    }
    extra = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--data.init_args.limit_per_task", "3"]
    sweep(str(ROOT / "configs" / "tiny.yaml"), None, str(tmp_path), extra=extra, points=points)

    lora = json.loads(next((tmp_path / "lora").rglob("results.json")).read_text())
    assert lora["rows"][0]["key"] == "lora" and "system prompt" not in lora["rows"][0]["setting"]
    with open(tmp_path / "study.csv") as fh:
        rows = {(r["point"], r["comparison"]): r for r in csv.DictReader(fh)}
    assert {r[0] for r in rows} == {"base", "margin"}  # a baseline point is a column, not a row
    for point in ("base", "margin"):  # margin scored no references: they come from base, paired by item
        assert {
            (point, c) for c in ("own − task-free", "own − rotated", "own − prompted", "own − zero-shot", "own − lora")
        } <= set(rows)
    margin = _items(tmp_path / "margin")
    assert "prompted" not in margin
    base, lora_items = _items(tmp_path / "base"), _items(tmp_path / "lora")

    def mean_diff(a, b):  # unweighted mean over tasks of the per-task mean difference
        tasks = sorted({t for t, _ in a})
        return np.mean([np.mean([a[k] - b[k] for k in a if k[0] == t]) for t in tasks])

    cases = [
        (("base", "own − task-free"), base["loragen"], base["generic"]),
        (("margin", "own − prompted"), margin["loragen"], base["prompted"]),
        (("margin", "own − lora"), margin["loragen"], lora_items["lora"]),
    ]
    for key, a, b in cases:
        assert float(rows[key]["diff"]) == pytest.approx(mean_diff(a, b), abs=1e-9), key
        assert float(rows[key]["low"]) <= float(rows[key]["diff"]) <= float(rows[key]["high"])
        assert int(rows[key]["n"]) == len(a)
    with open(tmp_path / "study_tasks.csv") as fh:
        per_task = {(r["point"], r["task"]): r for r in csv.DictReader(fh)}
    for task in {t for t, _ in base["loragen"]}:  # each task's accuracies on the same items, references from base
        for point, items, setting, source in [
            ("base", base["loragen"], "own", base["loragen"]),
            ("base", base["loragen"], "generic", base["generic"]),
            ("margin", margin["loragen"], "prompted", base["prompted"]),
        ]:
            keys = [k for k in items if k[0] == task]
            cell = per_task[(point, task)]
            assert int(cell["n"]) == len(keys)
            assert float(cell[setting]) == pytest.approx(np.mean([source[k] for k in keys]), abs=1e-9)
    md = (tmp_path / "study.md").read_text()
    assert "### Seen tasks: own − task-free, per task" in md
    assert md.startswith("### Seen tasks") and "| margin |" in md and "own − lora" in md
    assert (tmp_path / "study.png").stat().st_size > 1000
    (tmp_path / "study.md").unlink()  # re-rendered from the finished points alone (an interrupted sweep)
    study_main([str(tmp_path)])
    assert (tmp_path / "study.md").read_text() == md


def test_layered_point_config_must_exist_before_anything_runs(tmp_path):
    with pytest.raises(LoRAGenError, match="point lora is invalid: point config nowhere.yaml does not exist"):
        sweep(str(ROOT / "configs" / "tiny.yaml"), None, str(tmp_path), points={"lora": {"config": "nowhere.yaml"}})
    assert not any(tmp_path.iterdir())


def test_unseen_split_follows_the_registry_dataset_of_each_task():
    groups = task_groups(
        ["piqa", "piqa.letter", "commonsenseqa.judge", "boolq", "boolq.swapped", "my_file"], ["piqa", "commonsenseqa"]
    )
    assert groups == {
        "piqa": "unseen",
        "piqa.letter": "unseen",
        "commonsenseqa.judge": "unseen",
        "boolq": "seen",
        "boolq.swapped": "seen",
        "my_file": "seen",
    }


def test_specificity_study_runs_every_signal_and_the_multitask_lora_at_one_budget():
    points = read_points(str(ROOT / "configs" / "studies" / "specificity.yaml"))
    assert (ROOT / points["lora"]["config"]).is_file()
    signals = {name for name, p in points.items() if any(k.startswith("model.init_args.specificity.") for k in p)}
    assert signals == {"margin", "sibling_margin", "sibling_light", "null_prompt", "distill", "all"}
    assert not any("max_steps" in k or "seed" in k for p in points.values() for k in p)  # one budget and seed


def _run(directory: Path, method: str, settings: dict[str, list[int]], tasks: list[str], sources: bool = True) -> Path:
    """A finished run as the study reads it: results.json (row keys, tasks) and items.jsonl (one line per setting
    and item: each task's items get the setting's outcomes in turn). ``sources=False``: records without a source
    id, as a RecordDataModule's (the quickstart's) test items are written."""
    directory.mkdir(parents=True)
    lines = []
    for setting, outcomes in settings.items():
        for i, outcome in enumerate(outcomes):
            task = tasks[i % len(tasks)]
            record = {
                "setting": setting,
                "task": task,
                "uid": i,
                "source": f"f:{i}" if sources else None,
                "acc_norm": outcome,
                "pred_norm": 1 - outcome,
            }
            lines.append(json.dumps(record))
    (directory / "items.jsonl").write_text("\n".join(lines) + "\n")
    rows = [{"key": key} for key in settings]
    (directory / "results.json").write_text(json.dumps({"metric": "acc_norm", "rows": rows, "tasks": tasks}))
    assert rows[0]["key"] == method
    return directory


def test_loragen_points_are_paired_with_another_prompt_to_lora_method_but_not_the_other_way(tmp_path):
    from loragen.eval.study import study_rows

    tasks = ["arc_challenge", "piqa"]
    own, t2l, lora = [1, 1, 1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 1, 0, 0]
    runs = {
        "release": _run(tmp_path / "release", "loragen", {"loragen": own, "rotated": t2l, "generic": lora}, tasks),
        "text_to_lora": _run(tmp_path / "t2l", "text_to_lora", {"text_to_lora": t2l, "generic": t2l}, tasks),
        "lora": _run(tmp_path / "lora", "lora", {"lora": lora}, tasks),
    }
    rows = {(r["point"], r["group"], r["comparison"]): r for r in study_rows(runs, ["piqa"])}
    assert {p for p, _, _ in rows} == {"release", "text_to_lora"}  # both read prompts: both are rows
    for group, task in (("seen", "arc_challenge"), ("unseen", "piqa")):
        picked = [i for i in range(len(own)) if tasks[i % 2] == task]
        expected = np.mean([own[i] - t2l[i] for i in picked])
        assert float(rows[("release", group, "own − text_to_lora")]["diff"]) == pytest.approx(expected)
        assert ("release", group, "own − lora") in rows and ("text_to_lora", group, "own − lora") in rows
        assert ("text_to_lora", group, "own − release") not in rows  # every method against LoRA-Gen, once


def test_per_task_rows_give_the_share_of_items_each_lora_answers_alike(tmp_path):
    from loragen.eval.study import majority_share, task_markdown, task_rows

    assert majority_share({("t", "a"): 0, ("t", "b"): 0, ("t", "c"): 1}, [("t", "a"), ("t", "b"), ("t", "c")]) == 2 / 3
    assert majority_share({}, [("t", "a")]) is None
    tasks = ["boolq", "piqa"]
    own, generic = [1, 1, 0, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0]  # boolq gets items 0, 2, 4, 6
    for sources in (True, False):  # items told apart by source id, or (records without one) by position
        settings = {"loragen": own, "rotated": own, "generic": generic}
        runs = {"p": _run(tmp_path / f"p{sources}", "loragen", settings, tasks, sources=sources)}
        rows = {r["task"]: r for r in task_rows(runs, ["piqa"])}
        assert rows["boolq"]["own_majority"] == 0.5 and rows["boolq"]["generic_majority"] == 1.0
        assert rows["boolq"]["own"] == 0.5  # the mean over all four items, not the last one read
        assert rows["piqa"]["own_majority"] == 1.0 and rows["piqa"]["own"] == 1.0  # answers alike, all right
        assert "at 4 items" in task_markdown(list(rows.values())) and "±69 points" in task_markdown(list(rows.values()))


def test_a_joined_report_reads_every_point_on_the_items_all_of_them_scored(tmp_path):
    from loragen.eval.study import shared_items, study_rows

    tasks = ["boolq", "piqa"]
    long_own, long_free = [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]  # items 4-7: only the longer run has them
    runs = {
        "long": _run(tmp_path / "long", "loragen", {"loragen": long_own, "generic": long_free}, tasks),
        "short": _run(tmp_path / "short", "loragen", {"loragen": [1, 0, 1, 0], "generic": [1, 0, 1, 0]}, tasks),
    }
    before = {(r["point"], r["comparison"]): r for r in study_rows(runs, ["piqa"]) if r["group"] == "seen"}
    assert before[("long", "own − task-free")]["n"] == 4 and before[("long", "own − task-free")]["diff"] == 0.0
    joined = shared_items(runs, tmp_path / "joined")
    assert set(joined) == {"long", "short"} and all(p.parent == tmp_path / "joined" for p in joined.values())
    after = {(r["point"], r["comparison"]): r for r in study_rows(joined, ["piqa"]) if r["group"] == "seen"}
    assert after[("long", "own − task-free")]["n"] == 2  # boolq's items 0 and 2, which both runs scored
    assert after[("long", "own − task-free")]["diff"] == 1.0 and after[("long", "accuracy")]["diff"] == 1.0
    assert (tmp_path / "long" / "items.jsonl").read_text().count("\n") == 16  # the source run is left as it was


def test_a_joined_report_refuses_a_directory_that_is_not_a_point_or_no_destination(tmp_path):
    from loragen.eval.study import report

    point = _run(tmp_path / "sweep" / "p", "loragen", {"loragen": [1, 0], "generic": [0, 0]}, ["boolq"])
    (point / "point.json").write_text("{}")
    (point / "config.yaml").write_text("data: {init_args: {unseen: [piqa]}}\n")
    with pytest.raises(SystemExit, match="--also needs --to DIR"):
        report(str(tmp_path / "sweep"), also=[str(point)])
    with pytest.raises(SystemExit, match="is not a finished point"):
        report(str(tmp_path / "sweep"), also=[str(tmp_path)], to=str(tmp_path / "joined"))
    with pytest.raises(SystemExit, match="two points are named p"):
        report(str(tmp_path / "sweep"), also=[str(point)], to=str(tmp_path / "joined"))

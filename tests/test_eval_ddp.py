"""Evaluation under DDP and the reference switch, end to end through ``loragen test``.

- Two CPU processes (gloo) write the same results as one: per-item outcomes are gathered from both
  ranks and deduplicated (the distributed sampler pads an odd number of items by repeating one), and
  ``trainer.log_dir`` -- a collective -- is asked on every rank, not on rank 0 alone (which stalls
  or crashes the run).
- ``--model.init_args.eval.zero_shot_reference false`` removes the zero-shot row of the quickstart
  config's test run (the model's own switch decides which rows are evaluated).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loragen.cli import run
from loragen.data.datamodule import PACKAGED
from tests.conftest import ddp_cpu_flags, finish_loragen, start_loragen

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

# 3 tasks x 3 items = 9 test items: odd per task and in total, so a 2-process DistributedSampler
# pads rank 1 with a repeat of item 0 (arc_easy) -- visible as a 10th item or n=4 unless deduplicated.
DDP_TASKS = ("arc_easy", "boolq", "openbookqa")
PER_TASK = 3


def _ddp_test_command(out: Path, devices: int) -> list[str]:
    test_files = ",".join(str(PACKAGED / "quickstart" / f"{t}.test.jsonl") for t in DDP_TASKS)
    return [
        "test",
        "--config",
        TINY,
        *ddp_cpu_flags(devices),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.test_files",
        f"[{test_files}]",
        "--data.init_args.limit_per_task",
        str(PER_TASK),
        "--data.init_args.eval_batch_size",
        "2",
    ]


def _outputs(out: Path) -> tuple[dict, list[dict]]:
    (results,) = out.rglob("results.json")  # written once, by rank 0, into the run directory
    assert (results.parent / "results.md").is_file()
    items = [json.loads(line) for line in (results.parent / "items.jsonl").read_text().splitlines()]
    return json.loads(results.read_text()), items


@pytest.mark.heavy
def test_two_process_ddp_test_writes_the_same_results_as_one_process(tmp_path):
    # both at once (3 processes on the CPUs): each is mostly start-up, so this halves the wall time
    procs = {}
    for devices in (2, 1):
        (tmp_path / f"devices{devices}").mkdir()
        procs[devices] = start_loragen(
            _ddp_test_command(tmp_path / f"devices{devices}", devices), tmp_path / f"devices{devices}"
        )
    logs = {
        devices: finish_loragen(proc, f"loragen test --trainer.devices {devices}") for devices, proc in procs.items()
    }
    assert "Starting with 2 processes" in logs[2]  # really two ranks, not a silent fallback to one

    (ddp, ddp_items), (single, single_items) = _outputs(tmp_path / "devices2"), _outputs(tmp_path / "devices1")
    n_items = len(DDP_TASKS) * PER_TASK
    assert single["items"] == ddp["items"] == n_items
    assert single["tasks"] == ddp["tasks"] == list(DDP_TASKS)
    assert [r["key"] for r in ddp["rows"]] == [r["key"] for r in single["rows"]]
    assert len(ddp["rows"]) == 5  # loragen, rotated, generic, prompted, zero_shot (tiny.yaml's defaults)
    for row, ref in zip(ddp["rows"], single["rows"], strict=True):
        assert row["n"] == ref["n"] == n_items, row["key"]
        for task in DDP_TASKS:
            assert row["tasks"][task]["n"] == ref["tasks"][task]["n"] == PER_TASK, (row["key"], task)
            for metric in ("acc", "acc_norm"):
                assert row["tasks"][task][metric] == pytest.approx(ref["tasks"][task][metric], abs=1e-9)
            assert row["accuracy"][task] == pytest.approx(ref["accuracy"][task], abs=1e-9)
        for key in ("mean", "hmean", "acc_mean", "acc_norm_mean"):
            assert row[key] == pytest.approx(ref[key], abs=1e-9), (row["key"], key)

    for items in (ddp_items, single_items):
        keys = [(i["setting"], i["uid"]) for i in items]
        assert len(keys) == len(set(keys)) == len(ddp["rows"]) * n_items  # no item twice (the padded repeat dropped)
    assert {(i["setting"], i["uid"]) for i in ddp_items} == {(i["setting"], i["uid"]) for i in single_items}

    # every item got the same verdict on whichever rank graded it
    def verdicts(items: list[dict]) -> dict:
        return {
            (i["setting"], i["uid"]): (i["task"], i["label"], i["pred"], i["pred_norm"], i["acc"], i["acc_norm"])
            for i in items
        }

    assert verdicts(ddp_items) == verdicts(single_items)


def _quickstart_test(tmp_path: Path, *extra: str) -> tuple[object, dict]:
    args = [
        "test",
        "--config",
        QUICKSTART,
        "--model.init_args.cloud",
        "tiny:llama",
        "--model.init_args.edge",
        "tiny:llama",
        "--data.init_args.limit_per_task",
        "2",
        "--data.init_args.val_limit_per_task",
        "2",
        "--data.init_args.eval_batch_size",
        "8",
        "--trainer.default_root_dir",
        str(tmp_path),
        # a local logger instead of W&B (the callbacks list is the quickstart's own, untouched)
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    cli = run(args)
    return cli, json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())


def test_quickstart_callbacks_obey_the_zero_shot_reference_switch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quickstart config names relative run directories: keep them in tmp
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["loragen"])  # pytest's own arguments are not the CLI's
    runs = {}
    for name, extra in (("default", ()), ("off", ("--model.init_args.eval.zero_shot_reference", "false"))):
        cli, results = _quickstart_test(tmp_path / name, *extra)
        callbacks = [type(c).__name__ for c in cli.trainer.callbacks]
        assert "LearningRateMonitor" in callbacks
        assert len(cli.model.task_loras) == 0 and results["gate_distance"]["prompts"] == 4  # one LoRA per task
        assert results["items"] == 8
        runs[name] = results

    assert [r["key"] for r in runs["default"]["rows"]] == ["loragen", "rotated", "generic", "prompted", "zero_shot"]
    assert [r["key"] for r in runs["off"]["rows"]] == ["loragen", "rotated", "generic", "prompted"]
    pairs = {name: [(d["setting"], d["versus"]) for d in results["differences"]] for name, results in runs.items()}
    assert ("loragen", "prompted") in pairs["default"] and ("loragen", "prompted") in pairs["off"]
    assert not any("zero_shot" in pair for pair in pairs["off"])  # no difference against a row not computed

"""95% intervals on accuracies and paired-bootstrap differences (loragen.eval.intervals / results)."""

from __future__ import annotations

import csv
import json
import math
import re
import time

import numpy as np
import pytest

from loragen.compare import reading_lines, summarize_method, summary_lines, write_comparison
from loragen.eval.intervals import half_width, mean_half_width, paired_bootstrap, stderr
from loragen.eval.results import build_results, results_markdown, write_results
from loragen.sweep import summarize_point, write_tables

TASKS = ["boolq", "piqa"]
LABELS = {"loragen": "LoRA-Gen (merged, no system prompt)", "prompted": "edge + full system prompt"}


def outcome(acc, task=None, uid=None, tokens=10, ms=None):
    acc = np.asarray(acc, dtype=int)
    n = acc.size
    return {
        "uid": np.arange(n) if uid is None else np.asarray(uid),
        "task": np.arange(n) % 2 if task is None else np.asarray(task),
        "acc": acc,
        "acc_norm": acc,
        "unparseable": np.zeros(n, dtype=int),
        "tokens": np.full(n, tokens),
        "ms": np.full(n, np.nan) if ms is None else np.asarray(ms, dtype=float),
    }


def results(a, b, **kwargs):
    return build_results(
        {"loragen": a, "prompted": b}, LABELS, TASKS, "acc", paired=[("loragen", "prompted")], **kwargs
    )


def test_stderr_matches_a_hand_computation_and_lm_eval():
    # mean 0.75, sample sd sqrt((3 * 0.25² + 0.75²) / 3) = 0.5, se = 0.5 / √4
    assert stderr([1, 0, 1, 1]) == pytest.approx(0.25, abs=1e-15)
    assert half_width([1, 0, 1, 1]) == pytest.approx(1.96 * 0.25, abs=1e-15)
    assert mean_half_width([0.3, 0.4]) == pytest.approx(1.96 * 0.5 / 2, abs=1e-15)
    assert math.isnan(stderr([1])) and math.isnan(stderr([]))
    metrics = pytest.importorskip("lm_eval.api.metrics")
    rng = np.random.default_rng(0)
    for n in (2, 7, 50, 333):
        values = (rng.random(n) < rng.random()).astype(int)
        assert stderr(values) == pytest.approx(metrics.mean_stderr(values.tolist()), abs=1e-12)


def test_rows_carry_intervals_and_stay_strict_json(tmp_path):
    a = outcome([1, 0, 1, 1, 0, 1, 1, 1], ms=[5.0, np.nan, 7.0, np.nan, np.nan, np.nan, np.nan, np.nan])
    res = build_results({"loragen": a, "prompted": outcome([1] * 8, tokens=30)}, LABELS, TASKS, "acc")
    row = res["rows"][0]
    boolq = np.array([1, 1, 0, 1])  # items 0, 2, 4, 6
    assert row["tasks"]["boolq"] == {
        "n": 4,
        "acc": 0.75,
        "acc_ci": pytest.approx(half_width(boolq)),
        "acc_norm": 0.75,
        "acc_norm_ci": pytest.approx(half_width(boolq)),
    }
    assert row["accuracy"] == {"boolq": 0.75, "piqa": 0.75} and row["ci"]["boolq"] == row["tasks"]["boolq"]["acc_ci"]
    assert row["mean_ci"] == pytest.approx(1.96 * math.sqrt(2 * stderr(boolq) ** 2) / 2)
    assert (row["ms_per_request"], row["timed_items"], row["n"], res["items"]) == (6.0, 2, 8, 8)
    assert res["rows"][1]["ms_per_request"] is None and res["rows"][1]["ci"] == {"boolq": 0.0, "piqa": 0.0}
    assert res["compression_ratio"] == 3.0 and res["differences"] == []
    write_results(res, tmp_path)
    assert (
        json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)["rows"][1]["ms_per_request"]
        is None
    )
    zero = build_results({"loragen": outcome([0, 1, 0, 1])}, LABELS, TASKS, "acc")["rows"][0]
    assert zero["hmean"] == 0.0 and zero["mean"] == 0.5


def test_identical_settings_differ_by_exactly_zero():
    a = outcome(np.random.default_rng(1).random(200) < 0.6)
    diff = results(a, a)["differences"][0]
    assert diff["mean"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    assert all(cell == {"diff": 0.0, "low": 0.0, "high": 0.0} for cell in diff["tasks"].values())


def test_a_dominating_setting_is_ahead_and_the_table_says_so():
    rng = np.random.default_rng(2)
    b = (rng.random(200) < 0.5).astype(int)
    wrong = np.flatnonzero(b == 0)
    a = b.copy()
    a[wrong[: max(60, len(wrong) * 2 // 3)]] = 1  # a right wherever b is, and on ≥ 30% of the items b is not
    res = results(outcome(a), outcome(b))
    diff = res["differences"][0]
    assert diff["n"] == 200 and diff["mean"]["low"] > 0 and all(c["low"] > 0 for c in diff["tasks"].values())
    text = results_markdown(res)
    assert "LoRA-Gen is ahead of edge + full system prompt: the 95% interval of the mean difference excludes 0" in text
    assert "| LoRA-Gen − edge + full system prompt | +" in text
    assert re.search(r"\| LoRA-Gen \(merged, no system prompt\) \| \d+\.\d ±\d+\.\d \|", text)
    assert "paired bootstrap" in text and "1.96 × standard error" in text
    assert "is behind LoRA-Gen" in results_markdown(
        build_results(
            {"prompted": outcome(b), "loragen": outcome(a)},
            {"prompted": "edge", "loragen": "LoRA-Gen"},
            TASKS,
            "acc",
            paired=[("prompted", "loragen")],
        )
    )


def test_independent_fair_coins_are_within_noise_most_of_the_time():
    inside = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        res = results(outcome(rng.random(200) < 0.5), outcome(rng.random(200) < 0.5), seed=seed)
        mean = res["differences"][0]["mean"]
        inside += mean["low"] <= 0 <= mean["high"]
        if mean["low"] <= 0 <= mean["high"]:
            assert "within noise of edge + full system prompt: the 95% interval" in results_markdown(res)
    assert inside >= 15


def test_pairing_detects_a_difference_the_unpaired_intervals_cannot():
    b = np.zeros(200, dtype=int)
    b[:100] = 1
    a = b.copy()
    a[100:112] = 1  # b's correct items plus 12 more: 56% against 50%, on the same items
    res = results(outcome(a, task=np.zeros(200)), outcome(b, task=np.zeros(200)))
    row_a, row_b = res["rows"]
    low_a, high_b = row_a["accuracy"]["boolq"] - row_a["ci"]["boolq"], row_b["accuracy"]["boolq"] + row_b["ci"]["boolq"]
    assert low_a < high_b  # the unpaired intervals overlap
    assert res["differences"][0]["tasks"]["boolq"]["low"] > 0  # the paired one excludes 0
    assert "piqa" not in res["differences"][0]["tasks"]  # no items of that task: no difference


def test_results_are_deterministic_in_the_seed():
    rng = np.random.default_rng(3)
    a, b = outcome(rng.random(300) < 0.6), outcome(rng.random(300) < 0.5)
    assert results(a, b, seed=7) == results(a, b, seed=7)
    assert results(a, b, seed=7)["differences"] != results(a, b, seed=8)["differences"]


def test_unequal_item_sets_are_matched_by_uid():
    rng = np.random.default_rng(4)
    acc_a = (rng.random(100) < 0.6).astype(int)
    acc_b = (rng.random(100) < 0.4).astype(int)
    keep = rng.permutation(100)[:70]  # b saw 70 of a's items, in another order
    a = outcome(acc_a)
    b = outcome(acc_b[keep], task=keep % 2, uid=keep)
    diff = results(a, b)["differences"][0]
    assert diff["n"] == 70
    for t, name in enumerate(TASKS):
        items = keep[keep % 2 == t]
        assert diff["tasks"][name]["diff"] == pytest.approx(acc_a[items].mean() - acc_b[items].mean(), abs=1e-12)


def test_the_bootstrap_is_fast():
    rng = np.random.default_rng(5)
    a, b, strata = (rng.random(5000) < 0.5), (rng.random(5000) < 0.5), rng.integers(0, 5, 5000)
    start = time.perf_counter()
    paired_bootstrap(a, b, strata, bootstrap=2000, seed=0)
    assert time.perf_counter() - start < 2.0  # well under a second when the machine is not loaded


def _legacy(results_json):
    """A results.json as written before intervals existed."""
    rows = [
        {
            k: v
            for k, v in row.items()
            if k
            in ("setting", "key", "accuracy", "mean", "hmean", "tokens_per_request", "ms_per_request", "unparseable")
        }
        for row in results_json["rows"]
    ]
    return {"tasks": results_json["tasks"], "rows": rows, "items": results_json["items"], "scoring": "loglik"}


def test_compare_and_sweep_tables_show_intervals_and_still_read_older_results(tmp_path):
    rng = np.random.default_rng(6)
    new = results(outcome(rng.random(200) < 0.7, ms=np.full(200, 3.0)), outcome(rng.random(200) < 0.5), seed=1)
    old = _legacy(new)
    rows = [summarize_method("loragen", new, 1.0), summarize_method("base", old, 1.0)]
    write_comparison(rows, tmp_path, "budget", {"items": 200, "scoring": "loglik", "metric": "acc"})
    text = (tmp_path / "comparison.md").read_text()
    boolq, boolq_ci = 100 * new["rows"][0]["accuracy"]["boolq"], 100 * new["rows"][0]["ci"]["boolq"]
    assert f"| LoRA-Gen (merged, no system prompt) | {boolq:.1f} ±{boolq_ci:.1f} |" in text
    assert f"| LoRA-Gen (merged, no system prompt) | {100 * old['rows'][0]['accuracy']['boolq']:.1f} |" in text
    assert "1.96 × standard error" in text
    with open(tmp_path / "comparison.csv") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[0]["acc/boolq_ci"]) == round(boolq_ci, 2) and table[1]["mean_ci"] == ""
    grid = {"model.init_args.pool.num_experts": [2, 4]}
    points = [
        summarize_point({"model.init_args.pool.num_experts": 2}, {"results": new, "seconds": 1.0}),
        summarize_point({"model.init_args.pool.num_experts": 4}, {"results": old, "seconds": 1.0}),
    ]
    write_tables(points, tmp_path, grid, "acc_mean")
    sweep_md = (tmp_path / "sweep.md").read_text()
    mean, mean_ci = new["rows"][0]["mean"], new["rows"][0]["mean_ci"]
    assert sweep_md.startswith("| num_experts | acc_mean |") and "acc_mean_ci" not in sweep_md.splitlines()[0]
    assert f"| 2 | {round(mean, 4):.3f} ±{round(mean_ci, 4):.3f} |" in sweep_md and "| 4 | " in sweep_md
    write_tables(points[1:], tmp_path, grid, "acc_mean")  # only older results: the table as before
    assert "±" not in (tmp_path / "sweep.md").read_text()
    assert "±" not in results_markdown(old) and "LoRA-Gen (merged, no system prompt)" in results_markdown(old)


def test_the_comparison_reads_each_paired_difference_as_ahead_level_or_behind():
    # differences are method − LoRA-Gen (fractions); the reading states LoRA-Gen − method, its interval flipped
    def d(method, group, diff, low, high, n=200):
        return {"method": method, "group": group, "diff": diff, "low": low, "high": high, "n": n, "tasks": 2}

    differences = [
        d("lora", "unseen", 0.031, 0.012, 0.050),  # LoRA ahead of LoRA-Gen: LoRA-Gen behind
        d("base", "unseen", -0.042, -0.070, -0.011),  # LoRA-Gen ahead
        d("mixlora", "unseen", 0.004, -0.010, 0.020),  # interval straddles 0: level
        d("prompt_tuning", "unseen", -0.010, -0.030, 0.005),
        d("lora", "seen", -0.001, -0.020, 0.015, n=100),
    ]
    lines = reading_lines(differences, {"base": "base model, zero-shot", "lora": "LoRA"})
    unseen = next(line for line in lines if line.startswith("- unseen tasks"))
    assert unseen == (
        "- unseen tasks (2 tasks, 200 items): LoRA-Gen is ahead of base model, zero-shot (+4.2 [+1.1, +7.0]). "
        "It is level with prompt_tuning (+1.0 [−0.5, +3.0]); mixlora (−0.4 [−2.0, +1.0]). "
        "It is behind LoRA (−3.1 [−5.0, −1.2])."
    )
    seen = next(line for line in lines if line.startswith("- seen tasks"))
    assert seen == "- seen tasks (2 tasks, 100 items): LoRA-Gen is level with LoRA (+0.1 [−1.5, +2.0])."
    assert not any(line.startswith("- all tasks") for line in lines)  # a group nobody scored is not read
    assert reading_lines([], {}) == []


def test_the_summary_gives_group_means_and_lora_gen_minus_each_method():
    def row(method, setting, accs, cis):
        return {
            "method": method,
            "setting": setting,
            **{f"acc/{t}": a for t, a in accs.items()},
            **{f"acc/{t}_ci": c for t, c in cis.items()},
            "tokens_per_request": 41.2,
            "ms_per_request": 120.5,
            "trainable_params": 1000,
            "mergeable": True,
            "trained_steps": 5,
            "fit_seconds": 3725.0,
            "peak_rss_mb": 2048.0,
        }

    rows = [
        row(
            "loragen", "LoRA-Gen", {"piqa": 60.0, "mrpc": 40.0, "boolq": 70.0}, {"piqa": 3.0, "mrpc": 4.0, "boolq": 5.0}
        ),
        row("lora", "LoRA", {"piqa": 50.0, "mrpc": 44.0, "boolq": 72.0}, {"piqa": 3.0, "mrpc": 4.0, "boolq": None}),
    ]
    groups = {"piqa": "unseen", "mrpc": "unseen", "boolq": "seen"}
    diffs = [
        {"method": "lora", "group": "unseen", "diff": 0.031, "low": 0.012, "high": 0.050, "n": 300, "tasks": 2},
        {"method": "lora", "group": "seen", "diff": -0.02, "low": -0.05, "high": 0.01, "n": 200, "tasks": 1},
    ]
    lines = summary_lines(rows, {"differences": diffs, "groups": groups})
    text = "\n".join(lines)
    assert "| method | unseen (2 tasks) | seen (1 task) | LoRA-Gen − method, unseen | LoRA-Gen − method, seen |" in text
    gen = next(line for line in lines if line.startswith("| LoRA-Gen |"))
    assert gen.startswith("| LoRA-Gen | 50.0 ±2.5 | 70.0 ±5.0 |  |  | 41.2 | 120.5 | 1,000 | yes | 1:02:05 | 2.0 |")
    lora = next(line for line in lines if line.startswith("| LoRA |"))
    assert lora.startswith("| LoRA | 47.0 ±2.5 | 72.0 | −3.1 [−5.0, −1.2] | +2.0 [−1.0, +5.0] |")  # no task ci: no ±
    # a method that skipped a task: no group mean, and its difference says over how many tasks it was taken
    rows.append(row("few_shot", "few-shot", {"piqa": 55.0, "boolq": 60.0}, {"piqa": 3.0, "boolq": 5.0}))
    diffs.append({**diffs[0], "method": "few_shot", "tasks": 1, "n": 200})
    rows.append(row("mixlora", "MixLoRA", {"piqa": 55.0, "mrpc": 40.0, "boolq": 60.0}, {}))  # no difference: "-"
    lines = summary_lines(rows, {"differences": diffs, "groups": groups})
    assert next(line for line in lines if line.startswith("| few-shot |")).startswith(
        "| few-shot | - | 60.0 ±5.0 | −3.1 [−5.0, −1.2] (1 task) | - |"
    )
    assert next(line for line in lines if line.startswith("| MixLoRA |")).startswith(
        "| MixLoRA | 47.5 | 60.0 | - | - |"
    )
    # without a LoRA-Gen run the group means and costs stay, the difference columns go
    alone = summary_lines(rows, {"differences": [], "groups": groups})
    assert "LoRA-Gen − method" not in "\n".join(alone) and any(
        x.startswith("| LoRA | 47.0 ±2.5 | 72.0 | 41.2 | 120.5 |") for x in alone
    )
    assert summary_lines(rows, {"differences": diffs, "groups": {}}) == []

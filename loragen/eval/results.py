"""Per-task accuracy summaries with 95% intervals and the results files (``results.json`` / ``results.md``).

Intervals follow the convention of :mod:`loragen.eval.intervals` (stated under every table).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loragen.eval.intervals import NOTE, PAIRED_NOTE, half_width, mean_half_width, paired_bootstrap, stderr
from loragen.files import atomic_write_text
from loragen.report import markdown_table

METRICS = {
    "acc_norm": "acc_norm: option log-likelihood ÷ option length in characters, as lm-evaluation-harness",
    "acc": "acc: summed option log-likelihood (generation: the graded answer)",
    "harness": "per task lm-evaluation-harness's headline: acc_norm where it reports acc_norm (ARC, "
    "OpenBookQA, PIQA, HellaSwag; option texts), else acc (classification, letters, yes/no, "
    "WinoGrande, BoolQ, SIQA)",
}


def harmonic_mean(values: list[float]) -> float:
    if not values or any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def summarize(per_task: dict[str, float]) -> dict[str, float]:
    values = list(per_task.values())
    return {"mean": sum(values) / len(values) if values else 0.0, "hmean": harmonic_mean(values)}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _row(key: str, label: str, out: dict[str, np.ndarray], tasks: list[str], metric: str) -> dict[str, Any]:
    task_index = np.asarray(out["task"])
    measured = ("acc", "acc_norm", *(("harness",) if "harness" in out else ()))
    per: dict[str, dict[str, Any]] = {}
    ses: dict[str, list[float]] = {m: [] for m in measured}
    for t, name in enumerate(tasks):
        mask = task_index == t
        cell: dict[str, Any] = {"n": int(mask.sum())}
        for m in measured:
            values = np.asarray(out[m], dtype=float)[mask]
            cell[m] = float(values.mean()) if values.size else 0.0
            cell[f"{m}_ci"] = _finite(half_width(values))
            ses[m].append(stderr(values))
        per[name] = cell
    ms = np.asarray(out["ms"], dtype=float)
    timed = ms[~np.isnan(ms)]
    accuracy = {t: per[t][metric] for t in tasks}
    return {
        "setting": label,
        "key": key,
        "tasks": per,
        "accuracy": accuracy,
        "ci": {t: per[t][f"{metric}_ci"] for t in tasks},
        **summarize(accuracy),
        "mean_ci": _finite(mean_half_width(ses[metric])),
        **{f"{m}_mean": summarize({t: per[t][m] for t in tasks})["mean"] for m in ("acc", "acc_norm")},
        "tokens_per_request": float(np.mean(out["tokens"])) if len(out["tokens"]) else 0.0,
        "ms_per_request": float(timed.mean()) if timed.size else None,
        "timed_items": int(timed.size),
        "unparseable": int(np.sum(out["unparseable"])),
        "n": int(len(out["uid"])),
    }


def _span_dict(interval: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(("diff", "low", "high"), interval))


def _difference(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    keys: tuple[str, str],
    tasks: list[str],
    metric: str,
    bootstrap: int,
    seed: int,
) -> dict[str, Any] | None:
    """a − b on the items both evaluated (matched by uid)."""
    _, ia, ib = np.intersect1d(np.asarray(a["uid"]), np.asarray(b["uid"]), assume_unique=True, return_indices=True)
    if not ia.size:
        return None
    per, mean = paired_bootstrap(
        np.asarray(a[metric])[ia], np.asarray(b[metric])[ib], np.asarray(a["task"])[ia], bootstrap=bootstrap, seed=seed
    )
    return {
        "setting": keys[0],
        "versus": keys[1],
        "metric": metric,
        "n": int(ia.size),
        "tasks": {tasks[t]: _span_dict(v) for t, v in per.items()},
        "mean": _span_dict(mean),
        "bootstrap": bootstrap,
        "seed": seed,
    }


def with_headline(
    outcomes: dict[str, dict[str, np.ndarray]], tasks: list[str], task_metrics: dict[str, str]
) -> dict[str, dict[str, np.ndarray]]:
    """Each outcome with a ``harness`` column: per item, the metric its task reports as headline."""
    use_acc = np.array([task_metrics.get(t, "acc_norm") == "acc" for t in tasks], dtype=bool)

    def headline(out: dict[str, np.ndarray]) -> np.ndarray:
        acc, acc_norm = np.asarray(out["acc"], dtype=float), np.asarray(out["acc_norm"], dtype=float)
        return np.where(use_acc[np.asarray(out["task"], dtype=int)], acc, acc_norm)

    return {key: {**out, "harness": headline(out)} for key, out in outcomes.items()}


def build_results(
    outcomes: dict[str, dict[str, np.ndarray]],
    labels: dict[str, str],
    tasks: list[str],
    metric: str,
    *,
    paired: Sequence[tuple[str, str]] = (),
    bootstrap: int = 2000,
    seed: int = 0,
    task_metrics: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The results dict from per-item outcomes; ``labels`` gives the row order (first: the method's row).
    ``metric="harness"`` takes each task's headline from ``task_metrics`` (task -> acc | acc_norm)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
    if metric == "harness":
        outcomes = with_headline(outcomes, tasks, task_metrics or {})
    rows = [_row(key, label, outcomes[key], tasks, metric) for key, label in labels.items() if key in outcomes]
    differences = [
        _difference(outcomes[a], outcomes[b], (a, b), tasks, metric, bootstrap, seed)
        for a, b in paired
        if a in outcomes and b in outcomes
    ]
    results = {
        "tasks": list(tasks),
        "metric": metric,
        "items": rows[0]["n"] if rows else 0,
        "rows": rows,
        "differences": [d for d in differences if d is not None],
    }
    if metric == "harness":
        results["task_metrics"] = {t: (task_metrics or {}).get(t, "acc_norm") for t in tasks}
    by_key = {r["key"]: r for r in rows}
    if rows and "prompted" in by_key and rows[0]["key"] != "prompted" and rows[0]["tokens_per_request"]:
        results["compression_ratio"] = by_key["prompted"]["tokens_per_request"] / rows[0]["tokens_per_request"]
    return results


def with_ci(value: float | None, ci: float | None = None, digits: int = 1) -> str:
    """``52.0 ±4.4``; the value alone without an interval (e.g. older results), ``-`` without a value."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ±{ci:.{digits}f}" if ci is not None else "")


def pct(value: float | None, ci: float | None = None) -> str:
    """A fraction and its half-width as percent: ``52.0 ±4.4``."""
    return with_ci(None if value is None else 100 * value, None if ci is None else 100 * ci)


def signed(value: float) -> str:
    return f"{round(100 * value, 1) + 0.0:+.1f}".replace("-", "−")


def span(cell: dict[str, float] | None) -> str:
    """``+3.0 [−1.2, +7.1]`` (percentage points)."""
    return f"{signed(cell['diff'])} [{signed(cell['low'])}, {signed(cell['high'])}]" if cell else "-"


def short(label: str) -> str:
    """``LoRA-Gen (merged, no system prompt)`` → ``LoRA-Gen``."""
    return label.split(" (")[0]


def direction(cell: dict[str, float]) -> str:
    """``ahead`` / ``behind`` where a difference's 95% interval excludes 0, else ``level``."""
    return "ahead" if cell["low"] > 0 else "behind" if cell["high"] < 0 else "level"


def verdict(diff: dict[str, Any], setting: str, versus: str) -> str:
    which = direction(diff["mean"])
    if which == "level":
        return f"{setting} is within noise of {versus}: the 95% interval of the mean difference includes 0."
    relation = "ahead of" if which == "ahead" else "behind"
    return f"{setting} is {relation} {versus}: the 95% interval of the mean difference excludes 0."


def results_markdown(results: dict[str, Any]) -> str:
    """One row per evaluated edge setting (``value ±95% half-width``), then the paired differences."""
    tasks, rows, metric = results["tasks"], results["rows"], results.get("metric")
    other = {"acc": "acc_norm", "acc_norm": "acc"}.get(metric or "")  # no metric (older files): no other
    if other and all(abs(r.get("acc_mean", 0) - r.get("acc_norm_mean", 0)) < 1e-12 for r in rows):
        other = None  # e.g. generation scoring: both metrics are the graded answer
    header = [
        "setting",
        *tasks,
        "mean",
        "hmean",
        *([f"mean ({other})"] if other else []),
        "edge tokens/request",
        "ms/request",
    ]
    # alike in shape to compare.py's comparison table: other rows and columns; kept apart
    lines = markdown_table(
        header,
        (
            [
                row["setting"],
                *[pct(row["accuracy"].get(t), row.get("ci", {}).get(t)) for t in tasks],
                pct(row["mean"], row.get("mean_ci")),
                pct(row["hmean"]),
                *([pct(row[f"{other}_mean"])] if other else []),
                f"{row['tokens_per_request']:.1f}",
                "-" if row.get("ms_per_request") is None else f"{row['ms_per_request']:.1f}",
            ]
            for row in rows
        ),
    )
    label = {r.get("key"): short(r["setting"]) for r in rows}
    if len(set(label.values())) < len(label):  # shortened labels would be ambiguous
        label = {r.get("key"): r["setting"] for r in rows}
    differences = results.get("differences") or []
    if differences:
        pairs = [(label.get(d["setting"], d["setting"]), label.get(d["versus"], d["versus"])) for d in differences]
        lines += [
            "",
            *markdown_table(
                ["difference (points)", *tasks, "mean"],
                (
                    [f"{x} − {y}", *[span(d["tasks"].get(t)) for t in tasks], span(d["mean"])]
                    for (x, y), d in zip(pairs, differences)
                ),
            ),
        ]
        lines += ["", *(verdict(d, x, y) for (x, y), d in zip(pairs, differences))]
    lines.append("")
    if "compression_ratio" in results:
        ratio = results["compression_ratio"]
        lines.append(f"Context compression ratio (prompted ÷ LoRA-Gen edge tokens): {ratio:.2f}x")
    distance = results.get("gate_distance")
    if distance:  # the router side of the prompt-sensitivity check
        between = distance.get("between_prompts")
        lines.append(
            f"Router gate distance (0 = same experts and weights, 1 = disjoint): between the "
            f"{distance['prompts']} task prompts {'-' if between is None else f'{between:.3f}'}, "
            f"task prompts to the task-free prompt {distance['to_generic']:.3f}"
        )
    scoring = results.get("scoring")
    if metric:  # the scoring is left out where it only restates the metric
        shown = scoring and not re.search(rf"\b{re.escape(metric)}\b", scoring)
        lines.append(
            f"Items: {results['items']} · metric {METRICS.get(metric, metric)}"
            + (f" · scoring: {scoring}" if shown else "")
        )
    else:  # older results
        lines.append(f"Items: {results['items']} · accuracy by {scoring}")
    if results.get("latency"):
        lines.append(results["latency"])
    if any("ci" in row for row in rows):  # older results carry no intervals
        lines.append(NOTE + ("; " + PAIRED_NOTE.format(**differences[0]) if differences else "") + ".")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays as Python values, NaN / inf as None (results.json stays strict JSON)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(results: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    json_path, md_path = directory / "results.json", directory / "results.md"
    atomic_write_text(json_path, json.dumps(jsonable(results), indent=2, allow_nan=False))
    atomic_write_text(md_path, results_markdown(results) + "\n")
    return json_path, md_path

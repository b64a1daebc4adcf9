"""Per-task accuracy summaries and the results files (``results.json`` / ``results.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loragen.files import atomic_write_text
from loragen.report import markdown_table


def harmonic_mean(values: list[float]) -> float:
    if not values or any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def summarize(per_task: dict[str, float]) -> dict[str, float]:
    values = list(per_task.values())
    return {"mean": sum(values) / len(values) if values else 0.0, "hmean": harmonic_mean(values)}


def results_markdown(results: dict[str, Any]) -> str:
    """A table with one row per evaluated edge setting (LoRA-Gen merged, system-prompted reference)."""
    tasks = results["tasks"]
    header = ["setting", *tasks, "mean", "hmean", "edge tokens/request", "ms/request"]
    lines = markdown_table(header, ([
        row["setting"], *[f"{100 * row['accuracy'].get(t, float('nan')):.1f}" for t in tasks],
        f"{100 * row['mean']:.1f}", f"{100 * row['hmean']:.1f}", f"{row['tokens_per_request']:.1f}",
        f"{row['ms_per_request']:.1f}"] for row in results["rows"]))
    if "compression_ratio" in results:
        lines.append("")
        ratio = results["compression_ratio"]
        lines.append(f"Context compression ratio (prompted ÷ LoRA-Gen edge tokens): {ratio:.2f}x")
    lines.append(f"Items: {results['items']} · accuracy by {results['scoring']}")
    return "\n".join(lines)


def write_results(results: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    json_path, md_path = directory / "results.json", directory / "results.md"
    atomic_write_text(json_path, json.dumps(results, indent=2))
    atomic_write_text(md_path, results_markdown(results) + "\n")
    return json_path, md_path

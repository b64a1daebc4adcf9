"""What a generated LoRA costs and saves: the report printed after ``loragen generate``.

- cloud seconds of the pass that produced the gates (also when they were reused from the cache or a gates
  file: the break-even counts what producing the LoRA cost) and merge seconds;
- payload of each format: bytes on disk for the one written, estimates for the others;
- edge tokens saved per request: tokens(system + "\\n\\n" + input) − tokens(input), edge tokenizer;
- edge seconds saved per request: one edge forward over (system prompt + a sample input) minus one
  over the sample input alone, median of 3 each;
- break-even requests = (cloud seconds + merge seconds) / edge seconds saved per request.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

DEFAULT_SAMPLE_INPUT = "Question: Which number is larger, 7 or 9?\nAnswer:"


def _forward_seconds(model: Any, ids: Any, repeats: int) -> float:
    import torch

    with torch.no_grad():
        model(input_ids=ids, use_cache=False)  # warm-up, not counted
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_edge_savings(
    backbone: Any, system_prompt: str, sample_input: str = DEFAULT_SAMPLE_INPUT, repeats: int = 3
) -> dict[str, Any]:
    """Edge tokens and forward seconds saved per request by not sending the system prompt."""
    from loragen.data.records import Record
    from loragen.data.tokenize import edge_prompt

    tok = backbone.tokenizer
    with_system = tok(edge_prompt(Record(system_prompt, sample_input, ""), with_system=True), return_tensors="pt")
    without = tok(sample_input, return_tensors="pt")
    t_with = _forward_seconds(backbone.model, with_system["input_ids"], repeats)
    t_without = _forward_seconds(backbone.model, without["input_ids"], repeats)
    return {
        "sample_input": sample_input,
        "edge_tokens_with_system": int(with_system["input_ids"].shape[1]),
        "edge_tokens_without_system": int(without["input_ids"].shape[1]),
        "edge_tokens_saved_per_request": int(with_system["input_ids"].shape[1] - without["input_ids"].shape[1]),
        "edge_seconds_with_system": t_with,
        "edge_seconds_without_system": t_without,
        "edge_seconds_saved_per_request": t_with - t_without,
    }


def build_report(
    *,
    cloud_seconds: float,
    skipped: bool,
    merge_seconds: float,
    payload_bytes: dict[str, int],
    written: str,
    savings: dict[str, Any] | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cloud_seconds": cloud_seconds,
        "cloud_pass_skipped": skipped,
        "merge_seconds": merge_seconds,
        "payload_bytes": payload_bytes,
        "payload_written": written,
    }
    if savings is not None:
        report.update(savings)
        saved = savings["edge_seconds_saved_per_request"]
        report["break_even_requests"] = (cloud_seconds + merge_seconds) / saved if saved > 0 else None
    return report


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_report(report: dict[str, Any], title: str = "loragen generate") -> str:
    """A short two-column table."""
    cloud = f"{report['cloud_seconds']:.3f} s" + (
        " (gates reused: no cloud pass this run)" if report["cloud_pass_skipped"] else ""
    )
    rows = [("cloud generation", cloud), ("merge into edge", f"{report['merge_seconds'] * 1000:.1f} ms")]
    for fmt, n in report["payload_bytes"].items():
        rows.append(
            (f"payload {fmt}", f"{_size(n)}" + (" (written)" if fmt == report["payload_written"] else " (estimate)"))
        )
    if "edge_tokens_saved_per_request" in report:
        rows.append(
            (
                "edge tokens saved",
                f"{report['edge_tokens_saved_per_request']} per request "
                f"({report['edge_tokens_with_system']} -> {report['edge_tokens_without_system']})",
            )
        )
        rows.append(
            (
                "edge time saved",
                f"{report['edge_seconds_saved_per_request'] * 1000:.2f} ms per request "
                f"(forward {report['edge_seconds_with_system'] * 1000:.2f} -> "
                f"{report['edge_seconds_without_system'] * 1000:.2f} ms, median of 3)",
            )
        )
        even = report["break_even_requests"]
        rows.append(
            ("break-even", "never (no edge time saved)" if even is None else f"{math.ceil(even)} requests ({even:.1f})")
        )
    width = max(len(name) for name, _ in rows)
    lines = [f"{title} report", f"  {'':-<{width}}  {'':-<40}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)

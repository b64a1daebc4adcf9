"""The paper's speedup, measured in llama.cpp: the specialized edge answering the user input alone vs.
the base edge given the full system prompt + input, on the same items, in one run.

For each shipped task prompt (the packaged quickstart tasks' 3-shot system prompts) the generator's
LoRA is merged into an f16 GGUF (``loragen generate --format gguf``); the base edge is the same
model without LoRA, also f16, so both arms cost the same per token and differ only in what they read.
Per request, each arm starts from an empty context (no prompt cache): prefill (the prompt's forward
pass), time to first token and total time for the answer (greedy, up to --max-new-tokens, stopping
at end of text). The arms alternate item by item, so machine noise hits both alike; the ratios
(prompted ÷ specialized) are the result.

    python scripts/benchmark_gguf.py [--ckpt_path bundled:smollm2-135m-lora-gen] [--items 20] [--out DIR]

Needs the ``edge`` extra (llama-cpp-python). Writes DIR/benchmark_gguf.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _request(llm, tokens: list[int], max_new_tokens: int) -> dict[str, float]:
    """One request from an empty context: prefill, time to first token, total."""
    from loragen.deploy.llamacpp import stream

    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - start
    start, first, new = time.perf_counter(), None, 0
    for _ in stream(llm, tokens, max_new_tokens):
        first = first or time.perf_counter()
        new += 1
    total = time.perf_counter() - start
    return {
        "prompt_tokens": len(tokens),
        "prefill_ms": 1000 * prefill,
        "ttft_ms": 1000 * ((first or time.perf_counter()) - start),
        "total_ms": 1000 * total,
        "new_tokens": new,
    }


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt_path", default="bundled:smollm2-135m-lora-gen", help="a trained generator")
    parser.add_argument("--items", type=int, default=20, help="test items per task (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default 16)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--out", default="runs/benchmark-gguf", help="where the JSON and Markdown go")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from loragen.data.datamodule import PACKAGED
    from loragen.data.records import load_records
    from loragen.data.tokenize import edge_prompt
    from loragen.deploy import gguf_export, llamacpp
    from loragen.deploy.deployment import Deployment
    from loragen.deploy.export import gguf_keys
    from loragen.report import markdown_table

    dep = Deployment(args.ckpt_path)
    side = dep.edge_side
    work = Path(tempfile.mkdtemp(prefix="loragen-bench-gguf-"))
    tasks = {}
    for path in sorted((PACKAGED / "quickstart").glob("*.test.jsonl")):
        records = load_records(path)[: args.items]
        tasks[records[0].task] = records
    base_path = work / "base-f16.gguf"
    gguf_export.check_exportable(side, "gguf", "f16")
    gguf_export.write_model(side, None, base_path, "f16", {})
    base = llamacpp.load(base_path, n_ctx=2048, n_threads=args.threads)
    sizes, rows, per_task = {}, [], {}
    for n, (task, records) in enumerate(tasks.items()):
        record, _ = dep.gates(records[0].system)
        lora = dep.lora(record)
        path = work / f"{task}-f16.gguf"
        gguf_export.write_model(side, lora, path, "f16", gguf_keys(side, record))
        if n == 0:  # the file sizes of each form, for one task
            gguf_export.write_model(side, lora, work / "q8_0.gguf", "q8_0", {})
            gguf_export.write_lora(side, lora, work / "lora.gguf", "f16", {})
            sizes = {
                "specialized f16": path.stat().st_size,
                "specialized q8_0": (work / "q8_0.gguf").stat().st_size,
                "gguf-lora (f16)": (work / "lora.gguf").stat().st_size,
                "base f16": base_path.stat().st_size,
            }
        specialized = llamacpp.load(path, n_ctx=2048, n_threads=args.threads)
        task_rows = []
        for i, item in enumerate(records):
            plain = llamacpp.tokenize(specialized, edge_prompt(item, with_system=False))
            full = llamacpp.tokenize(base, edge_prompt(item, with_system=True))
            if i == 0:  # warm-up: the first request of a model pays one-off allocations
                _request(specialized, plain, 2), _request(base, full, 2)
            task_rows.append(
                {
                    "task": task,
                    "specialized": _request(specialized, plain, args.max_new_tokens),
                    "prompted": _request(base, full, args.max_new_tokens),
                }
            )
            print(f"[benchmark_gguf] {task} {i + 1}/{len(records)}", flush=True)
        per_task[task] = task_rows
        rows += task_rows
        del specialized

    def summary(selected: list[dict]) -> dict[str, dict[str, float]]:
        out = {}
        for arm in ("prompted", "specialized"):
            out[arm] = {
                k: _mean([r[arm] for r in selected], k)
                for k in ("prompt_tokens", "prefill_ms", "ttft_ms", "total_ms", "new_tokens")
            }
        out["ratio"] = {
            k: out["prompted"][k] / out["specialized"][k]
            for k in ("prompt_tokens", "prefill_ms", "ttft_ms", "total_ms")
        }
        return out

    result = {
        "checkpoint": args.ckpt_path,
        "items_per_task": args.items,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "tasks": {t: summary(r) for t, r in per_task.items()},
        "all": summary(rows),
        "file_bytes": sizes,
    }
    table = []
    for name, s in [*result["tasks"].items(), ("all", result["all"])]:
        p, q, r = s["prompted"], s["specialized"], s["ratio"]
        table.append(
            [
                name,
                f"{p['prompt_tokens']:.1f} / {q['prompt_tokens']:.1f} ({r['prompt_tokens']:.2f}x)",
                f"{p['prefill_ms']:.1f} / {q['prefill_ms']:.1f} ({r['prefill_ms']:.2f}x)",
                f"{p['ttft_ms']:.1f} / {q['ttft_ms']:.1f} ({r['ttft_ms']:.2f}x)",
                f"{p['total_ms']:.1f} / {q['total_ms']:.1f} ({r['total_ms']:.2f}x)",
                f"{p['new_tokens']:.1f} / {q['new_tokens']:.1f}",
            ]
        )
    lines = markdown_table(
        ["task", "prompt tokens", "prefill ms", "time to first token ms", "total ms/request", "answer tokens"], table
    )
    lines += [
        "",
        "Each cell: base edge + full system prompt / specialized edge, input only (prompted ÷ specialized); "
        f"f16 GGUF both, llama.cpp via llama-cpp-python, {args.items} test items per task, greedy, at most "
        f"{args.max_new_tokens} new tokens, empty context per request.",
        "",
        "File sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark_gguf.json").write_text(json.dumps(result, indent=1))
    (out / "benchmark_gguf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()

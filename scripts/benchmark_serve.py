"""Bounded load test of `loragen serve` on loopback (docs/service.md).

Starts the service twice on 127.0.0.1 from one checkpoint — without batching (``--max_batch_size 1``)
and with it (``--max_batch_size B``) — and, for 1, 4 and 16 concurrent clients, sends a fixed number
of distinct system prompts (cache misses: one cloud pass each, or one per batch) and then the same
prompts again (cache hits: no cloud pass). It prints and writes requests/s, p50/p99 latency and
failed requests per setting, the batched/unbatched throughput ratio, and whether both servers
returned the same experts and gates (within 1e-5) for every prompt.

    python scripts/benchmark_serve.py --ckpt_path runs/quickstart/checkpoints/last.ckpt

Every request has a time limit, the whole run a budget (``--time_limit``): what did not run is
reported as skipped, never waited for.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loragen import LoRAGenError  # noqa: E402
from loragen.deploy.client import GENERATE_PATH, LocalService  # noqa: E402


def task_prompts(count: int) -> list[str]:
    """Real task system prompts (the shipped quickstart tasks', 3-shot), each made distinct."""
    from loragen.data.datamodule import resolve_files
    from loragen.data.records import load_records

    systems = list(dict.fromkeys(r.system for path in resolve_files("quickstart:test") for r in load_records(path)))
    return [f"{systems[i % len(systems)]}\n\n(Deployment request {i}.)" for i in range(count)]


class Service(LocalService):
    def __init__(self, ckpt: str, batch: int, key: str, workdir: Path, batch_timeout: float) -> None:
        super().__init__(
            ckpt,
            workdir,
            "--max_batch_size",
            str(batch),
            "--batch_timeout",
            str(batch_timeout),
            "--cache_dir",
            str(workdir / f"gates-b{batch}"),
            key=key,
            name=f"serve-b{batch}",
        )

    def generate(self, prompt: str, timeout: float) -> tuple[float, dict | None]:
        """Seconds for one gates request, and its JSON (None when it failed)."""
        self.client.timeout = timeout
        start = time.perf_counter()
        try:
            body, _ = self.client.request(GENERATE_PATH, {"system_prompt": prompt, "format": "gates"})
            data = json.loads(body)
        except (LoRAGenError, ValueError):
            data = None
        return time.perf_counter() - start, data


def phase(service: Service, prompts: list[str], clients: int, deadline: float, timeout: float) -> dict:
    results: list[tuple[float, dict | None]] = []
    skipped = 0

    def one(prompt: str) -> tuple[float, dict | None] | None:
        if time.monotonic() > deadline:
            return None
        return service.generate(prompt, timeout)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for outcome in pool.map(one, prompts):
            if outcome is None:
                skipped += 1
            else:
                results.append(outcome)
    wall = time.perf_counter() - start
    ok = [(s, d) for s, d in results if d is not None]
    latencies = sorted(s for s, _ in ok)
    pct = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else None
    return {
        "requests": len(results),
        "failed": len(results) - len(ok),
        "skipped": skipped,
        "rps": len(ok) / wall if wall > 0 else 0.0,
        "p50_ms": pct(0.5) if pct else None,
        "p99_ms": pct(0.99) if pct else None,
        "mean_batch": statistics.mean(d["batch_size"] for _, d in ok) if ok else None,
        "cached": sum(bool(d.get("cached")) for _, d in ok),
        "gates": {d["system_prompt_sha256"]: d["gates"] for _, d in ok},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by loragen fit")
    parser.add_argument("--requests", type=int, default=32, help="distinct prompts per (server, clients) setting")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the batching server")
    parser.add_argument("--batch_timeout", type=float, default=0.05, help="batch_timeout of the batching server")
    parser.add_argument("--time_limit", type=float, default=900, help="seconds for the whole run")
    parser.add_argument("--request_timeout", type=float, default=120, help="seconds per request")
    parser.add_argument("--out", default="runs/benchmark_serve", help="directory for serve.json / serve.md")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    deadline = time.monotonic() + args.time_limit
    key = secrets.token_urlsafe(24)
    rows, gates = [], {}
    with tempfile.TemporaryDirectory(prefix="loragen-bench-serve-") as tmp:
        for batch in (1, args.batch):
            service = Service(args.ckpt_path, batch, key, Path(tmp), args.batch_timeout if batch > 1 else 0.0)
            try:
                for c in clients:
                    prompts = task_prompts(args.requests * (clients.index(c) + 1))[-args.requests :]  # distinct per c
                    for kind in ("miss", "hit"):
                        result = phase(service, prompts, c, deadline, args.request_timeout)
                        gates.setdefault(batch, {}).update(result.pop("gates"))
                        row = {
                            "server": "batched" if batch > 1 else "one at a time",
                            "max_batch_size": batch,
                            "clients": c,
                            "cache": kind,
                            **result,
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                service.stop()
    import torch

    common = sorted(set(gates.get(1, {})) & set(gates.get(args.batch, {})))
    same_experts, max_diff = True, 0.0
    for sha in common:
        a = torch.tensor(gates[1][sha]["values"])
        b = torch.tensor(gates[args.batch][sha]["values"])
        same_experts &= bool(torch.equal(a > 0, b > 0))
        max_diff = max(max_diff, float((a - b).abs().max()))
    ratios = {}
    for c in clients:
        pair = {r["max_batch_size"]: r["rps"] for r in rows if r["clients"] == c and r["cache"] == "miss"}
        if pair.get(1):
            ratios[c] = pair.get(args.batch, 0.0) / pair[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "checkpoint": args.ckpt_path,
        "rows": rows,
        "batched_over_unbatched_rps_misses": ratios,
        "prompts_compared": len(common),
        "same_experts": same_experts,
        "max_gate_difference": max_diff,
        "cpu_threads": torch.get_num_threads(),
    }
    (out / "serve.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        "| server | clients | cache | requests | failed | req/s | p50 ms | p99 ms | mean batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.0f}"

    for r in rows:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['cache']} | {r['requests']} | {r['failed']} | "
            f"{r['rps']:.2f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
            f"{'–' if r['mean_batch'] is None else format(r['mean_batch'], '.1f')} |"
        )
    lines += [
        "",
        "Batched ÷ one-at-a-time throughput on cache misses: "
        + ", ".join(f"{c} clients {v:.2f}x" for c, v in ratios.items()),
        f"Same experts for all {len(common)} prompts: {same_experts}; largest gate difference {max_diff:.2e}",
    ]
    (out / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'serve.json'}, {out / 'serve.md'}")


if __name__ == "__main__":
    main()

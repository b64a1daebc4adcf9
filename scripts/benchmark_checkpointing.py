"""Memory and time of a training step with and without activation checkpointing, in one run.

    python scripts/benchmark_checkpointing.py [--batch 2] [--tokens 1344] [--out runs/bench_checkpointing]

The method is the LoRA baseline trained with the system prompt in context (``lora_prompted``), the one whose
inputs are long: the suite's limits give up to 1024 system + 256 input + 64 answer tokens. Each setting runs
one forward and backward pass of ``--batch`` sequences of ``--tokens`` tokens on the bundled SmolLM2-135M, in a
fresh process, twice (the second step is timed), and the script prints and writes (``OUT/results.json``):

- peak resident memory of each process (``ru_maxrss``) and the ratio checkpointed ÷ stored;
- seconds of the timed step and that ratio;
- the largest difference between the two runs' LoRA gradients (checkpointing must not change them).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(batch: int, tokens: int, checkpointing: bool, grads: Path) -> None:
    import torch

    from loragen.models.baselines import LoRABaseline

    module = LoRABaseline(
        edge="bundled:smollm2-135m-instruct", system_prompt=True, activation_checkpointing=checkpointing
    )
    module.train()
    ids = torch.randint(3, 40000, (batch, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    seconds = 0.0
    for _ in range(2):
        module.zero_grad()
        start = time.perf_counter()
        module.hidden_states(ids, mask).float().pow(2).mean().backward()
        seconds = time.perf_counter() - start
    torch.save({n: p.grad for n, p in module.named_parameters() if p.grad is not None}, grads)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="sequences per step (default 2; training uses 8)")
    parser.add_argument("--tokens", type=int, default=1344, help="tokens per sequence (default 1344, the suite's max)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_checkpointing")
    parser.add_argument("--child", choices=["stored", "checkpointed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.batch, args.tokens, args.child == "checkpointed", args.out / f"grads_{args.child}.pt")
        return
    import torch

    from loragen.runner import exit_reason

    results: dict[str, dict[str, float]] = {}
    for setting in ("stored", "checkpointed"):
        print(f"[bench] {setting}: one step of {args.batch} x {args.tokens} tokens ...", flush=True)
        cmd = [sys.executable, __file__, "--child", setting, "--batch", str(args.batch), "--tokens", str(args.tokens)]
        done = subprocess.run([*cmd, "--out", str(args.out)], capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"{setting} run failed ({exit_reason(done.returncode)}): {done.stderr.strip()[-500:]}")
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = (torch.load(args.out / f"grads_{s}.pt") for s in ("stored", "checkpointed"))
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    summary = {
        "batch": args.batch,
        "tokens": args.tokens,
        **results,
        "peak_rss_ratio": results["checkpointed"]["peak_rss_mb"] / results["stored"]["peak_rss_mb"],
        "seconds_ratio": results["checkpointed"]["seconds"] / results["stored"]["seconds"],
        "max_grad_difference": diff,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for setting in ("stored", "checkpointed"):
        r = results[setting]
        print(f"{setting:>12}: peak RSS {r['peak_rss_mb'] / 1024:.2f} GB, step {r['seconds']:.1f} s")
    print(
        f"checkpointed / stored: peak RSS {summary['peak_rss_ratio']:.2f}x, step time {summary['seconds_ratio']:.2f}x; "
        f"largest gradient difference {diff:.2e}"
    )
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()

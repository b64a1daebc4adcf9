"""Memory of training with a cloud states file (``loragen encode``) against training with the cloud, in one run.

    python scripts/benchmark_cloud_states.py [--out runs/bench_cloud_states] [--steps 8]

The pair is the bundled SmolLM2-135M as cloud and a small edge (``tiny:llama``, default), so the cloud is most
of what a training process holds, as with an 8B cloud and a 1B edge. It encodes the quickstart prompts once,
then runs the same ``loragen fit`` twice in fresh processes, with the cloud and with the states file, and prints
and writes (``OUT/results.json`` and ``results.md``):

- peak resident memory of each training process (``ru_maxrss``) and its ratio;
- bytes of the model the process holds (parameters and buffers), and that ratio;
- peak device memory where there is a GPU;
- training throughput after the first step;
- whether the two runs trained the same weights (max abs difference).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from device_check import run_probe  # noqa: E402 - the fit probe (time, steps, peak memory) in a fresh process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_cloud_states")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (default 8)")
    parser.add_argument("--cloud", default="bundled:smollm2-135m-instruct", help="cloud model source")
    parser.add_argument("--edge", default="tiny:llama", help="edge model source")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pair = ["--model.init_args.cloud", args.cloud, "--model.init_args.edge", args.edge]
    common = ["--config", "configs/quickstart.yaml", *pair, "--trainer.logger", "false"]
    states = out / "cloud_states.safetensors"
    print(f"[bench] encoding the quickstart prompts with {args.cloud} ...", flush=True)
    run_probe(
        ["encode", *common, "--trainer.default_root_dir", str(out / "encode"), "--out", str(states)], out / "encode.log"
    )
    fit = [
        "fit",
        *common,
        "--trainer.max_steps",
        str(args.steps),
        "--trainer.limit_val_batches",
        "0",
    ]
    runs = {}
    for name, extra in (("cloud", []), ("states_file", ["--model.init_args.cloud_states", str(states)])):
        print(f"[bench] fit with the {name.replace('_', ' ')} ...", flush=True)
        runs[name] = run_probe([*fit, "--trainer.default_root_dir", str(out / name), *extra], out / f"{name}.log")
    import torch

    weights = [
        torch.load(out / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for name in runs
    ]
    gap = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    mib = 2**20
    result = {
        "pair": {"cloud": args.cloud, "edge": args.edge},
        "steps": args.steps,
        "peak_rss_mib": {k: round(v["peak_rss_bytes"] / mib) for k, v in runs.items()},
        "model_mib": {k: round(v["model_bytes"] / mib, 1) for k, v in runs.items()},
        "peak_device_mib": {
            k: None if v["peak_bytes"] is None else round(v["peak_bytes"] / mib) for k, v in runs.items()
        },
        "steps_per_s": {
            k: round(v["timed"]["steps"] / v["timed"]["seconds"], 2) if v["timed"] else None for k, v in runs.items()
        },
        "max_abs_weight_difference": gap,
    }
    result["peak_rss_ratio_cloud_over_file"] = round(
        result["peak_rss_mib"]["cloud"] / result["peak_rss_mib"]["states_file"], 2
    )
    result["model_ratio_cloud_over_file"] = round(result["model_mib"]["cloud"] / result["model_mib"]["states_file"], 1)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    rows = [
        "| | with the cloud | with the states file | ratio |",
        "|---|---|---|---|",
        f"| peak resident memory (MiB) | {result['peak_rss_mib']['cloud']} | {result['peak_rss_mib']['states_file']} "
        f"| {result['peak_rss_ratio_cloud_over_file']} |",
        f"| model held (MiB) | {result['model_mib']['cloud']} | {result['model_mib']['states_file']} "
        f"| {result['model_ratio_cloud_over_file']} |",
        f"| training steps/s | {result['steps_per_s']['cloud']} | {result['steps_per_s']['states_file']} | |",
    ]
    text = (
        f"# Cloud states file vs. cloud: {args.cloud} -> {args.edge}, {args.steps} steps\n\n"
        + "\n".join(rows)
        + f"\n\nTrained weights, max abs difference between the two runs: {gap:.3g}\n"
    )
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Measure the core efficiency claims of LoRA-Gen on the bundled model, in one run.

Prints ratios (not absolute seconds, which depend on the machine):

- training-path forward with generated LoRA ÷ base forward (batch 8 × 128 tokens, k=2, r=8)
- merged forward ÷ base forward (target ≤ 1.02: reparameterization costs nothing)
- generate + merge one task's LoRA ÷ one cloud forward over that system prompt (target ≤ 1.5)
- bundled model load: cold (dequantize GGUF into an empty cache) ÷ cached (target ≥ 5)

    python scripts/benchmark_core.py [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

SOURCE = "bundled:smollm2-135m-instruct"
QUICKSTART = Path(__file__).resolve().parents[1] / "loragen" / "data" / "quickstart"


def task_system_prompt(task: str) -> str:
    """The real system prompt of a shipped quickstart task (description + 3 shots)."""
    with open(QUICKSTART / f"{task}.test.jsonl") as fh:
        return json.loads(fh.readline())["system"]


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per measurement (median)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--skip-load", action="store_true", help="skip the cold-vs-cached load measurement")
    parser.add_argument("--task", default="arc_easy", help="quickstart task whose system prompt is generated for")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from loragen import backbones
    from loragen.models.components.lora_gen import LoRAGen

    figures: dict[str, float] = {}
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as cache:
            previous = os.environ.get("LORAGEN_CACHE")
            os.environ["LORAGEN_CACHE"] = cache
            start = time.perf_counter()
            backbones.load_backbone(SOURCE)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            backbones.load_backbone(SOURCE)
            warm = time.perf_counter() - start
            if previous is None:
                os.environ.pop("LORAGEN_CACHE")
            else:
                os.environ["LORAGEN_CACHE"] = previous
        figures.update(load_cold_s=cold, load_cached_s=warm, load_cold_over_cached=cold / warm)

    bb = backbones.load_backbone(SOURCE)
    model = LoRAGen(bb, bb, num_experts=8, top_k=2, rank=8).eval()
    with torch.no_grad():  # trained-looking experts (B is zero at init)
        for p in model.pool.B.values():
            p.normal_(0, 0.01)
    tok = bb.tokenizer
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, len(tok) - 100, (args.batch, args.tokens), generator=gen)
    mask = torch.ones_like(ids)
    system = tok([task_system_prompt(args.task)] * args.batch, return_tensors="pt")
    routing = model.route(system.input_ids, system.attention_mask)
    edge = model.edge

    def base() -> object:
        return edge(input_ids=ids, attention_mask=mask, use_cache=False)

    def functional() -> object:
        with model.edge_lora.routing(routing.indices, routing.weights):
            return edge(input_ids=ids, attention_mask=mask, use_cache=False)

    with torch.no_grad():
        t_base = median_time(base, args.repeats)
        t_functional = median_time(functional, args.repeats)
        (lora,) = model.generate(system.input_ids[:1], system.attention_mask[:1])
        with model.edge_lora.merged_lora(lora):
            t_merged = median_time(base, args.repeats)
        t_base_again = median_time(base, args.repeats)

        one = system.input_ids[:1], system.attention_mask[:1]
        decoder = bb.model.get_decoder()

        def cloud_forward() -> object:
            return decoder(input_ids=one[0], attention_mask=one[1], use_cache=False)

        def generate_and_merge() -> None:
            model.generator.clear_cache()  # a new task: no cached meta-token states
            (generated,) = model.generate(*one)
            model.edge_lora.merge(generated)
            model.edge_lora.unmerge()

        t_cloud = median_time(cloud_forward, args.repeats)
        t_generate = median_time(generate_and_merge, args.repeats)

    base_t = (t_base + t_base_again) / 2
    figures.update(
        base_forward_s=base_t,
        functional_forward_s=t_functional,
        merged_forward_s=t_merged,
        cloud_forward_s=t_cloud,
        generate_merge_s=t_generate,
        functional_over_base=t_functional / base_t,
        merged_over_base=t_merged / base_t,
        generate_merge_over_cloud=t_generate / t_cloud,
    )
    print(
        f"bundled SmolLM2-135M-Instruct, batch {args.batch} x {args.tokens} tokens, k=2, r=8, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}; system prompt of {args.task}: "
        f"{system.input_ids.shape[1]} tokens + {model.pool.num_layers} meta tokens"
    )
    rows = [
        ("training-path forward / base forward", "functional_over_base", "<= 1.6"),
        ("merged forward / base forward", "merged_over_base", "<= 1.02"),
        ("generate+merge / cloud forward", "generate_merge_over_cloud", "<= 1.5"),
    ]
    if "load_cold_over_cached" in figures:
        rows.append(("bundled load cold / cached", "load_cold_over_cached", ">= 5"))
    for label, key, target in rows:
        print(f"  {label:<40} {figures[key]:6.3f}   (target {target})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()

"""Training throughput of the many-task suite against today's five-task run, measured in one run.

Each setting trains LoRA-Gen (bundled SmolLM2 pair, 8 experts of rank 8, top-2, batch 8) for
``--steps`` measured steps after ``--warmup`` steps, in a real Lightning Trainer, and times every step,
splitting off the time spent in cloud passes (one per distinct system prompt; states are cached after):

- ``seen``: today's release run (configs/commonsense/seen.yaml's data: five tasks, one description each);
- ``seen+machinery``: the same five tasks through the suite's machinery (8 descriptions per task,
  temperature-2 mixing, length-grouped batches): what the new data path itself costs;
- ``suite``: configs/suite/train.yaml's data (the suite preset);
- ``suite+margin`` / ``suite+null`` / ``suite+distill``: the suite with one specificity signal switched on
  (``model.specificity``, coefficient 1): what each signal costs per step (their terms' values are printed).

Printed per setting: samples/s and edge tokens/s of the training step without cloud passes, cloud seconds
per new prompt, the distinct prompts a 1500-step run meets (from the sampler's real order), the samples/s
of a 1500-step run with those cloud passes amortised; and the ratios to ``seen``.

    python scripts/benchmark_suite.py --data_dir DATA [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "cloud": "bundled:smollm2-135m-instruct",
    "edge": "bundled:smollm2-135m-instruct",
    "batch_size": 8,
    "shots": 3,
    "train_limit_per_task": 2000,
    "max_system_tokens": 1024,
    "max_input_tokens": 256,
    "max_output_tokens": 64,
    "seed": 0,
}
SETTINGS = {
    "seen": {"train_tasks": ["seen"]},
    "seen+machinery": {
        "train_tasks": ["seen"],
        "train_descriptions": 8,
        "mixing_temperature": 2.0,
        "length_grouped": True,
    },
    "suite": {
        "train_tasks": ["suite"],
        "unseen": ["piqa", "winogrande", "hellaswag", "commonsenseqa", "mc_taco", "mrpc"],
        "holdout": 100,
        "files": {"winogrande": {"train": "winogrande/train_s.jsonl"}},
        "train_descriptions": 8,
        "mixing_temperature": 2.0,
        "length_grouped": True,
    },
}
for _signal in ("margin", "null", "distill"):
    SETTINGS[f"suite+{_signal}"] = {**SETTINGS["suite"], "specificity": {f"{_signal}_coef": 1.0}}
DEFAULT_SETTINGS = ["seen", "seen+machinery", "suite"]
RUN_STEPS = 1500
SIGNAL_LOGS = ("train/margin", "train/null", "train/distill")


def measure(name: str, data_dir: str, steps: int, warmup: int) -> dict[str, float]:
    import lightning as L

    from loragen.data.task_datamodule import TaskDataModule
    from loragen.models.config import PoolConfig, SpecificityConfig
    from loragen.models.lora_gen_module import LoRAGenModule

    L.seed_everything(0, verbose=False)
    setting = dict(SETTINGS[name])
    specificity = SpecificityConfig(**setting.pop("specificity", {}))
    data = TaskDataModule(data_dir=data_dir, **COMMON, **setting)
    model = LoRAGenModule(
        COMMON["cloud"],
        COMMON["edge"],
        pool=PoolConfig(num_experts=8, top_k=2, rank=8, lora_alpha=16, aux_coef=1.0),
        specificity=specificity,
    )
    generator = model.model.generator
    cloud = {"seconds": 0.0}
    run_cloud = generator._run_cloud

    def timed_cloud(rows):  # noqa: ANN001, ANN202 - instrumentation of the real cloud pass
        start = time.perf_counter()
        out = run_cloud(rows)
        cloud["seconds"] += time.perf_counter() - start
        return out

    generator._run_cloud = timed_cloud
    rows: list[dict[str, float]] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            self.start, self.cloud0, self.passes0 = time.perf_counter(), cloud["seconds"], generator.cloud_passes

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            terms = {k: float(v) for k, v in trainer.callback_metrics.items() if k in SIGNAL_LOGS}
            rows.append(
                {
                    **terms,
                    "seconds": time.perf_counter() - self.start,
                    "cloud": cloud["seconds"] - self.cloud0,
                    "passes": generator.cloud_passes - self.passes0,
                    "tokens": float(batch["attention_mask"].sum()),
                    "padded": float(batch["input_ids"].numel()),
                }
            )

    trainer = L.Trainer(
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Timer()],
        accelerator="cpu",
        devices=1,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - start
    timed = rows[warmup:]
    edge = [r["seconds"] - r["cloud"] for r in timed]
    passes = sum(r["passes"] for r in rows)
    per_prompt = sum(r["cloud"] for r in rows) / max(passes, 1)
    # the distinct prompts a RUN_STEPS-step run meets, in the sampler's real order
    examples = data.examples[data._examples_key("train")]
    sampler = data.train_dataloader().sampler
    order = list(iter(sampler))[: RUN_STEPS * COMMON["batch_size"]]
    prompts = len({tuple(examples[i]["system_ids"]) for i in order})
    step = statistics.mean(edge)
    amortised = RUN_STEPS * COMMON["batch_size"] / (RUN_STEPS * step + prompts * per_prompt)
    return {
        "samples_per_s": COMMON["batch_size"] / step,
        "edge_tokens_per_s": sum(r["tokens"] for r in timed) / sum(edge),
        "padded_tokens_per_sample": statistics.mean(r["padded"] for r in timed) / COMMON["batch_size"],
        "tokens_per_sample": statistics.mean(r["tokens"] for r in timed) / COMMON["batch_size"],
        "cloud_s_per_prompt": per_prompt,
        "prompts_in_run": prompts,
        "run_samples_per_s": amortised,
        "training_records": len(examples),
        "wall_s": wall,
        **{k: statistics.mean(r[k] for r in timed if k in r) for k in SIGNAL_LOGS if any(k in r for r in timed)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="the benchmark files (the layout of docs/data.md)")
    parser.add_argument("--steps", type=int, default=20, help="measured training steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="steps run before measuring")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=DEFAULT_SETTINGS,
        choices=list(SETTINGS),
        help="settings to measure; the ratios need 'seen'",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.settings:
            print(f"[benchmark_suite] {name}: {args.warmup} + {args.steps} training steps ...", flush=True)
            figures[name] = measure(name, args.data_dir, args.steps, args.warmup)
    base = figures.get("seen") or next(iter(figures.values()))
    print(
        "\n| setting | samples/s (step) | edge tokens/s | tokens/sample (padded) | cloud s/new prompt | "
        "prompts in a 1500-step run | samples/s (1500-step run) | ratio to seen (step / run) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        step, run = f["samples_per_s"] / base["samples_per_s"], f["run_samples_per_s"] / base["run_samples_per_s"]
        ratio = f"{step:.2f} / {run:.2f}"
        print(
            f"| {name} | {f['samples_per_s']:.2f} | {f['edge_tokens_per_s']:.0f} | {f['tokens_per_sample']:.1f} "
            f"({f['padded_tokens_per_sample']:.1f}) | {f['cloud_s_per_prompt']:.3f} | {f['prompts_in_run']} | "
            f"{f['run_samples_per_s']:.2f} | {ratio} |"
        )
    for name, f in figures.items():
        terms = ", ".join(f"{k.removeprefix('train/')} {f[k]:.4g}" for k in SIGNAL_LOGS if k in f)
        if terms:
            print(f"{name}: mean term over the measured steps: {terms}")
    print(
        f"\nbatch {COMMON['batch_size']}, {args.steps} measured steps after {args.warmup}, bundled SmolLM2-135M "
        f"pair, {torch.get_num_threads()} threads"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()

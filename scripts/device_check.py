"""The device check: what loragen does on an accelerator, measured in one run, reported as Markdown.

    bash scripts/device_check.sh [OUT]            (OUT: default runs/device_check; the report is OUT/report.md)

Steps (each timed; a failing step is reported with its error and the others still run):

1. environment: torch, CUDA, the devices;
2. the bundled pair on the device: merge / unmerge of a generated LoRA restores every edge weight bit for bit,
   and the merged forward equals the functional (training) path within tolerance;
3. zero-shot parity: the bare edge on the 200 quickstart test items, fp32 against bf16 (same choices, accuracy);
4. a bf16 quickstart fit on the device (steps/s, samples/s, peak device memory) and the same fit on the CPU, for
   the training-throughput ratio device ÷ CPU;
5. strategies: DDP over the devices present (two CPU processes with gloo when there is no GPU), FSDP (CUDA only) and
   DeepSpeed ZeRO-2 (CUDA and the deepspeed package);
6. the test suite's CUDA-marked tests (``pytest -m cuda``; skipped without CUDA).

The throughput ratio is meant against *these* CPUs (the 2-core machines loragen is developed on), not the GPU
machine's own: run the script once here without a GPU, then pass its ``report.json`` to the GPU run with
``--cpu-reference`` (the GPU run then skips its own CPU fit).

Without a GPU every step runs on the CPU except FSDP (Lightning runs it only on CUDA), with fewer fit steps, so the
script itself is checked on any machine. Everything it writes stays under OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAIR = "bundled:smollm2-135m-instruct"
PROMPT = "Answer the science question with the letter of the correct option."
FIT_PROBE = """
import json, resource, sys, time
import lightning as L
import torch
from loragen.cli import run


class StepTimer(L.Callback):
    \"\"\"Wall time of the training steps after the first (model loading and the first step's warm-up excluded).\"\"\"

    start = end = None
    first = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if StepTimer.start is None:
            StepTimer.start, StepTimer.first = time.perf_counter(), trainer.global_step
        StepTimer.end = time.perf_counter()
        StepTimer.last = trainer.global_step


args = json.loads(sys.argv[1])
if args[0] == "fit":
    args = [*args, "--trainer.callbacks+=__main__.StepTimer"]
start = time.perf_counter()
cli = run(args)
seconds = time.perf_counter() - start
timed = None
if StepTimer.start is not None and StepTimer.last > StepTimer.first:
    timed = {"steps": StepTimer.last - StepTimer.first, "seconds": StepTimer.end - StepTimer.start}
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
held = sum(t.numel() * t.element_size() for t in [*cli.model.parameters(), *cli.model.buffers()])
print("DEVICE_CHECK " + json.dumps({"seconds": seconds, "steps": cli.trainer.global_step, "peak_bytes": peak,
                                    "peak_rss_bytes": rss, "model_bytes": held, "timed": timed}))
"""


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def step_environment(_: argparse.Namespace) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": gpu_count(),
        "cpu_threads": torch.get_num_threads(),
    }
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(gpu_count())]
    return info


def step_merge_exactness(_: argparse.Namespace) -> dict[str, Any]:
    import torch

    from loragen.backbones import load_backbone
    from loragen.models.components.lora_gen import LoRAGen

    device = "cuda" if gpu_count() else "cpu"
    torch.manual_seed(0)
    backbone = load_backbone(PAIR)
    model = LoRAGen(backbone, backbone, num_experts=8, top_k=2, rank=8).to(device).eval()
    with torch.no_grad():  # a trained-like pool: B is zero-initialised
        for b in model.pool.B.values():
            b.normal_(0, 0.02)
    tok = backbone.tokenizer
    s = tok([PROMPT], return_tensors="pt").to(device)
    x = tok(["Which gas do plants take in? A. oxygen B. carbon dioxide"], return_tensors="pt").to(device)
    before = {n: p.detach().clone() for n, p in model.edge.named_parameters()}
    with torch.no_grad():
        functional, _ = model(s.input_ids, s.attention_mask, x.input_ids, x.attention_mask)
        (lora,) = model.generate(s.input_ids, s.attention_mask)
        with model.edge_lora.merged_lora(lora):
            merged = model.edge(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
    restored = all(torch.equal(p, before[n]) for n, p in model.edge.named_parameters())
    gap = float((merged - functional.logits).abs().max())
    if not restored:
        raise AssertionError("an edge weight differs after unmerge")
    if gap > 1e-3:
        raise AssertionError(f"merged and functional logits differ by {gap:.3g} (> 1e-3)")
    return {"device": device, "restored_bit_for_bit": restored, "merged_vs_functional_max_abs": gap}


def run_probe(args: list[str], log: Path) -> dict[str, Any]:
    """``loragen`` subcommand in a fresh process; its probe line (time, steps, peak device memory). The probe is a
    script file, not ``python -c``: multi-process strategies start their workers by re-running it."""
    probe_file = log.parent / "probe.py"
    probe_file.write_text(FIT_PROBE)
    env = {**os.environ, "WANDB_MODE": "offline"}
    with open(log, "w") as fh:
        run = subprocess.run(
            [sys.executable, str(probe_file), json.dumps(args)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=fh,
            text=True,
            timeout=900,
        )
    probe = [line for line in run.stdout.splitlines() if line.startswith("DEVICE_CHECK ")]
    if run.returncode != 0 or not probe:
        raise RuntimeError(f"exit {run.returncode}; see {log}: " + log.read_text()[-500:].replace("\n", " | "))
    return json.loads(probe[-1].removeprefix("DEVICE_CHECK "))


def _items(run_dir: Path) -> dict[str, dict[str, Any]]:
    found = sorted(run_dir.rglob("items.jsonl"), key=lambda p: p.stat().st_mtime)
    return {f"{x['setting']}:{x['uid']}": x for x in map(json.loads, found[-1].read_text().splitlines())}


def step_zero_shot_parity(args: argparse.Namespace) -> dict[str, Any]:
    accelerator = "gpu" if gpu_count() else "cpu"
    out: dict[str, Any] = {}
    items = {}
    for precision in ("32-true", "bf16-true"):
        run_dir = args.out / f"zero_shot_{precision}"
        run_probe(
            [
                "test",
                "--config",
                "configs/quickstart.yaml",
                "--config",
                "configs/baselines/base_zero_shot.yaml",
                "--trainer.accelerator",
                accelerator,
                "--trainer.devices",
                "1",
                "--trainer.precision",
                precision,
                "--trainer.logger",
                "false",
                "--trainer.default_root_dir",
                str(run_dir),
                "--data.init_args.limit_per_task",
                "50",
            ],
            args.out / f"zero_shot_{precision}.log",
        )
        items[precision] = _items(run_dir)
    fp32, bf16 = items["32-true"], items["bf16-true"]
    same = sum(fp32[k]["pred_norm"] == bf16[k]["pred_norm"] for k in fp32 if k in bf16)
    out["items"] = len(fp32)
    out["same_choice"] = same
    out["acc_norm_fp32"] = sum(x["acc_norm"] for x in fp32.values()) / len(fp32)
    out["acc_norm_bf16"] = sum(x["acc_norm"] for x in bf16.values()) / len(bf16)
    return out


def _fit(args: argparse.Namespace, name: str, accelerator: str, steps: int, extra: list[str]) -> dict[str, Any]:
    run_dir = args.out / name
    probe = run_probe(
        [
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--trainer.accelerator",
            accelerator,
            "--trainer.max_steps",
            str(steps),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.default_root_dir",
            str(run_dir),
            "--trainer.logger",  # no W&B needed on the device machine (LearningRateMonitor goes with it)
            "false",
            *extra,
        ],
        args.out / f"{name}.log",
    )
    batch = 8  # configs/quickstart.yaml
    timed = probe["timed"] or {"steps": probe["steps"], "seconds": probe["seconds"]}  # one step: whole run
    return {
        "steps": probe["steps"],
        "seconds": round(probe["seconds"], 1),
        "samples_per_s": round(timed["steps"] * batch / timed["seconds"], 2),  # steps after the first
        "peak_device_mib": None if probe["peak_bytes"] is None else round(probe["peak_bytes"] / 2**20),
    }


def _cpu_reference(path: Path) -> dict[str, Any]:
    """The CPU fit of an earlier run's report.json (the same script, run on the reference CPUs)."""
    for row in json.loads(path.read_text()):
        if row["step"].startswith("quickstart fit") and row["status"] == "ok":
            return {**row["result"]["cpu"], "measured": f"on the reference machine ({path.name})"}
    raise ValueError(f"{path} has no successful quickstart fit step: run the script on the CPU machine first")


def step_fit_throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.cpu_reference:
        out = {"cpu": _cpu_reference(args.cpu_reference)}
    else:
        out = {"cpu": _fit(args, "fit_cpu", "cpu", args.cpu_steps, [])}
    if gpu_count():
        out["gpu_bf16"] = _fit(
            args, "fit_gpu_bf16", "gpu", args.gpu_steps, ["--trainer.precision", "bf16-mixed", "--trainer.devices", "1"]
        )
        out["ratio_gpu_over_cpu"] = round(out["gpu_bf16"]["samples_per_s"] / out["cpu"]["samples_per_s"], 1)
    return out


def step_ddp(args: argparse.Namespace) -> dict[str, Any]:
    """DDP over the GPUs present, else two CPU processes with gloo."""
    ddp = ["--config", "configs/strategies/ddp.yaml"]
    if gpu_count():
        return _fit(args, "ddp_gpu", "gpu", 10, [*ddp, "--trainer.devices", str(gpu_count())])
    return _fit(args, "ddp_cpu", "cpu", 4, [*ddp, "--trainer.devices", "2"])


def _gpu_strategy(args: argparse.Namespace, name: str, package: str | None = None) -> dict[str, Any] | str:
    """10 fit steps with ``configs/strategies/NAME.yaml`` over the GPUs present (it needs CUDA, and ``package``)."""
    import importlib.util

    if not gpu_count():
        return f"not run: {name} needs CUDA (Lightning runs it only there)"
    if package and importlib.util.find_spec(package) is None:
        return f"not run: the {package} package is not installed (pip install {package})"
    layer = ["--config", f"configs/strategies/{name}.yaml", "--trainer.devices", str(gpu_count())]
    return _fit(args, f"{name}_gpu", "gpu", 10, layer)


def step_fsdp(args: argparse.Namespace) -> dict[str, Any] | str:
    """FSDP (configs/strategies/fsdp.yaml: bf16-mixed, norm clipping over the shards)."""
    return _gpu_strategy(args, "fsdp")


def step_deepspeed(args: argparse.Namespace) -> dict[str, Any] | str:
    """DeepSpeed ZeRO-2 (configs/strategies/deepspeed.yaml), where the package is installed."""
    return _gpu_strategy(args, "deepspeed", package="deepspeed")


def step_cuda_tests(args: argparse.Namespace) -> dict[str, Any] | str:
    if not gpu_count():
        return "skipped: no CUDA device"
    log = args.out / "cuda_tests.log"
    with open(log, "w") as fh:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    summary = log.read_text().strip().splitlines()[-1]
    if done.returncode != 0:
        raise RuntimeError(f"pytest exit {done.returncode}: {summary}; see {log}")
    return {"pytest": summary}


STEPS: list[tuple[str, Callable[[argparse.Namespace], Any]]] = [
    ("environment", step_environment),
    ("merge / unmerge on the device", step_merge_exactness),
    ("zero-shot parity fp32 vs bf16 (200 items)", step_zero_shot_parity),
    ("quickstart fit: throughput and peak memory", step_fit_throughput),
    ("strategy: DDP", step_ddp),
    ("strategy: FSDP", step_fsdp),
    ("strategy: DeepSpeed", step_deepspeed),
    ("CUDA-marked tests", step_cuda_tests),
]


def report(results: list[tuple[str, str, float, Any]]) -> str:
    lines = ["# loragen device check", "", "| step | status | seconds | result |", "|---|---|---|---|"]
    for name, status, seconds, result in results:
        text = json.dumps(result, default=str) if not isinstance(result, str) else result
        lines.append(f"| {name} | {status} | {seconds:.0f} | {text.replace('|', '/')} |")
    lines += ["", "Command: `bash scripts/device_check.sh`; every run's log is beside this report."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "device_check")
    parser.add_argument("--gpu-steps", type=int, default=60, help="fit steps on the GPU")
    parser.add_argument("--cpu-steps", type=int, default=6, help="fit steps on the CPU (the throughput baseline)")
    parser.add_argument(
        "--cpu-reference", type=Path, help="report.json of a CPU run: its fit is the throughput ratio's baseline"
    )
    parser.add_argument("--only", nargs="*", help="run only these step functions (e.g. step_ddp step_fsdp)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, fn in STEPS:
        if args.only and fn.__name__ not in args.only:
            continue
        start = time.perf_counter()
        print(f"[device check] {name} ...", flush=True)
        try:
            result, status = fn(args), "ok"
        except Exception as err:  # noqa: BLE001 - every step is reported, the others still run
            result, status = f"{type(err).__name__}: {err}", "FAILED"
            (args.out / "errors.log").open("a").write(f"== {name}\n{traceback.format_exc()}\n")
        seconds = time.perf_counter() - start
        results.append((name, status, seconds, result))
        print(f"[device check] {name}: {status} ({seconds:.0f} s) {result}", flush=True)
        (args.out / "report.md").write_text(report(results))
    (args.out / "report.json").write_text(
        json.dumps(
            [dict(zip(("step", "status", "seconds", "result"), r, strict=True)) for r in results], indent=1, default=str
        )
    )
    print(f"wrote {args.out / 'report.md'}")
    if any(status != "ok" for _, status, _, _ in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

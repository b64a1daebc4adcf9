"""A hard kill (SIGKILL) of `loragen fit` costs nothing: `--ckpt_path last` completes the run with the weights and
optimizer state of an uninterrupted one, and no checkpoint file left behind fails to load.

The kill comes from inside the real `loragen fit` process (the ``KillAt`` callback below sends SIGKILL to its own
process at an exact point), so each point is hit deterministically: in the middle of a training step (gradients
computed, not yet applied), while a checkpoint is being written (after its contents were gathered, before any
byte reached the disk), and during validation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from loragen.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
# deterministic CPU kernels and one thread: a resumed run repeats the uninterrupted one to float32 rounding
TOLERANCE = 1e-6


class KillAt(Callback):
    """SIGKILL this process at ``when`` (train_step | checkpoint | validation) once ``global_step == step``."""

    def __init__(self, when: str, step: int) -> None:
        self.when, self.step = when, step

    def _kill(self, trainer, when: str) -> None:  # noqa: ANN001
        if when == self.when and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        self._kill(trainer, "train_step")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # noqa: ANN001
        self._kill(trainer, "checkpoint")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._kill(trainer, "validation")


class HoldUntil(Callback):
    """Pause training at step 1 until ``release`` exists (so another process can try the same run directory)."""

    def __init__(self, release: str) -> None:
        self.release = Path(release)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        import time

        deadline = time.time() + 300
        while trainer.global_step == 1 and not self.release.exists() and time.time() < deadline:
            time.sleep(0.1)


def _fit(run_dir: Path, kill: tuple[str, int] | None = None, resume: bool = False) -> subprocess.CompletedProcess:
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["trainer"].update(
        max_steps=STEPS,
        limit_train_batches=3,
        val_check_interval=2,
        limit_val_batches=1,
        deterministic=True,
        default_root_dir=str(run_dir),
        logger=False,
        enable_progress_bar=False,
    )
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(run_dir / "ckpt"),
                "save_last": True,
                "every_n_train_steps": 1,
                "save_top_k": -1,
            },
        }
    ]
    if kill:
        callbacks.append({"class_path": "tests.test_kill.KillAt", "init_args": {"when": kill[0], "step": kill[1]}})
    config["trainer"]["callbacks"] = callbacks
    path = run_dir / ("resume.yaml" if resume else "config.yaml")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "loragen.cli", "fit", "--config", str(path)]
    if resume:
        args += ["--ckpt_path", str(run_dir / "ckpt" / "last.ckpt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    return subprocess.run(args, cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)


def _state(path: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    checkpoint = load_checkpoint(path)
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    return weights, [s for s in checkpoint["optimizer_states"][0]["state"].values()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    out = _fit(run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return _state(run_dir / "ckpt" / "last.ckpt")


@pytest.mark.heavy
@pytest.mark.parametrize("when, step", [("train_step", 3), ("checkpoint", 4), ("validation", 2)])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, when, step):
    killed = _fit(tmp_path, kill=(when, step))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert left, "no checkpoint was written before the kill"
    steps = [load_checkpoint(path)["global_step"] for path in left]  # every checkpoint file left behind loads
    # the work done before the kill is kept (a checkpoint being written when killed is simply not there)
    assert max(steps) == (step - 1 if when == "checkpoint" else step)
    resumed = _fit(tmp_path, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr  # a resume, not a restart
    weights, optimizer = _state(tmp_path / "ckpt" / "last.ckpt")
    ref_weights, ref_optimizer = uninterrupted
    assert load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["global_step"] == STEPS
    assert weights.keys() == ref_weights.keys()
    for key in weights:
        assert torch.allclose(weights[key], ref_weights[key], atol=TOLERANCE), (when, key)
    for mine, ref in zip(optimizer, ref_optimizer, strict=True):
        assert float(mine["step"]) == float(ref["step"]) == STEPS
        assert torch.allclose(mine["exp_avg"], ref["exp_avg"], atol=TOLERANCE)
        assert torch.allclose(mine["exp_avg_sq"], ref["exp_avg_sq"], atol=TOLERANCE)


@pytest.mark.heavy
def test_a_second_fit_on_the_same_run_directory_is_refused(tmp_path):
    """Two `loragen fit` runs pointed at one run directory: the second stops in one line, the first finishes."""
    import time

    from loragen.files import RUN_LOCK

    run_dir = tmp_path / "run"
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["trainer"].update(
        max_steps=3, default_root_dir=str(run_dir), logger=False, enable_progress_bar=False, limit_val_batches=0
    )
    release = tmp_path / "release"
    first_config = {
        **config,
        "trainer": {
            **config["trainer"],
            "callbacks": [
                *config["trainer"]["callbacks"],
                {"class_path": "tests.test_kill.HoldUntil", "init_args": {"release": str(release)}},
            ],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first_config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "loragen.cli", "fit", "--config", str(path)]
    first = subprocess.Popen(
        [*args[:-1], str(tmp_path / "first.yaml")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / RUN_LOCK).is_file() or not (run_dir / RUN_LOCK).read_text().strip():
            assert first.poll() is None and time.time() < deadline, "the first fit never took the lock"
            time.sleep(0.2)
        second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"run directory {run_dir} is in use by another `loragen fit` (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        release.touch()
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]  # the lock ends with its process

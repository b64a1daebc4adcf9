"""Progress without a terminal: `loragen fit/test` with stdout in a pipe print plain progress lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "loragen.cli", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.heavy
def test_fit_and_test_print_progress_lines_into_a_pipe(tmp_path):
    common = [
        "--config",
        "configs/tiny.yaml",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    out = _run(
        "fit",
        *common,
        "--trainer.max_steps",
        "5",
        "--trainer.val_check_interval",
        "5",
        "--trainer.callbacks",
        f"[{{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
        f"{{dirpath: {tmp_path}/ckpt, save_last: true}}}}]",
    )
    steps = [
        int(m)
        for m in re.findall(
            r"^\[fit\] step (\d+)/5 · loss \d+\.\d+ · [\d.]+ samples/s · [\d.]+ s/step · "
            r"ETA \d+:\d\d:\d\d$",
            out,
            flags=re.M,
        )
    ]
    assert steps[0] == 1 and steps[-1] == 5 and steps == sorted(steps)
    assert re.search(r"^\[validate\] batch 2/2 · ", out, flags=re.M)
    assert re.search(r"^\[fit\] done: 5 steps in ", out, flags=re.M)
    out = _run("test", *common, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"), "--verbose", "false")
    batches = re.findall(r"^\[test\] batch (\d+)/(\d+) · [\d.]+ s/batch", out, flags=re.M)
    assert batches and batches[0][0] == "1" and batches[-1][0] == batches[-1][1]


@pytest.mark.heavy
def test_logs_without_a_terminal_have_no_adverts_bars_or_colour_codes(tmp_path):
    """With W&B (offline) as the logger (loragen's, as the configs use it) and both streams in pipes: the run's own
    lines, no Lightning "Tip" adverts, no W&B warnings, no progress bar, no ANSI escape sequences."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # what a user's shell has
    done = subprocess.run(
        [sys.executable, "-m", "loragen.cli", "fit", "--config", "configs/tiny.yaml", "--trainer.max_steps", "2",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "loragen.loggers.WandbLogger",
         "--trainer.logger.init_args.offline", "true", "--trainer.logger.init_args.save_dir", str(tmp_path)],
        cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    both = done.stdout + done.stderr
    assert "[fit] step 2/2" in done.stdout and "[fit] done" in done.stdout
    assert "Tip:" not in both and "\x1b[" not in both, both[-2000:]
    assert "wandb: WARNING" not in both, both[-2000:]  # e.g. the anonymous key Lightning passes
    assert not re.search(r"[━█]|\d+it/s", both), both[-2000:]  # rich / tqdm bars
    assert list(tmp_path.rglob("wandb/offline-run-*")), "the W&B run is still written"

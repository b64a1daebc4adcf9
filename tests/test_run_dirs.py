"""Run directories follow the user: every config derives its logger, checkpoint and results paths from
`trainer.default_root_dir`, and a fresh fit beside an earlier run says what it does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted(
    p
    for p in (ROOT / "configs").rglob("*.yaml")
    if "trainer" in (yaml.safe_load(p.read_text()) or {})
    and "default_root_dir" in (yaml.safe_load(p.read_text()) or {}).get("trainer", {})
)


def _loragen(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loragen.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


def _paths(node, found=None):  # every save_dir / dirpath in a resolved config
    found = [] if found is None else found
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("save_dir", "dirpath") and isinstance(value, str):
                found.append(value)
            _paths(value, found)
    elif isinstance(node, list):
        for value in node:
            _paths(value, found)
    return found


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_default_root_dir_moves_every_output_path(config, tmp_path, capsys):
    from loragen.cli import run

    target = tmp_path / "elsewhere"
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(config), "--trainer.default_root_dir", str(target), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    paths = _paths(resolved["trainer"])
    assert resolved["trainer"]["default_root_dir"] == str(target)
    assert paths and all(p == str(target) or p.startswith(f"{target}/") for p in paths), paths


@pytest.mark.heavy
def test_a_fresh_fit_beside_an_earlier_run_says_so_and_a_resume_does_not_fork(tmp_path):
    common = ["--config", "configs/tiny.yaml", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2"]
    first = _loragen("fit", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "earlier run" not in first.stderr
    resumed = _loragen("fit", *common[:-1], "4", "--ckpt_path", "last")
    assert resumed.returncode == 0 and "earlier run" not in resumed.stderr
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))  # resuming keeps one last.ckpt
    fresh = _loragen("fit", *common)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "holds an earlier run's last.ckpt: this run starts from scratch" in fresh.stderr
    assert "--ckpt_path last" in fresh.stderr

"""Hard kills and concurrent writers outside training: `loragen generate` / `apply` killed mid-write leave no
output and no cache entry that loads wrong (the next run cleans up and rebuilds), a corrupt cache entry is
rebuilt, two `generate` processes racing for one output end with one valid result and a clear message for
the other, and `loragen sweep` / `loragen compare` killed mid-point resume the unfinished point.

Every kill is a real SIGKILL of a real `loragen` process. Where the kill must land at an exact point, the
process is started through ``KILLER`` below: the real CLI with one function wrapped so that the process kills
itself right after (or, for the race, waits at) that call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from loragen.deploy.artifacts import META_FILE
from loragen.deploy.deployment import Deployment
from loragen.deploy.gates import GatesRecord
from tests.conftest import PROMPT, _save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# argv: MODULE FUNCTION MODE [loragen args...]; MODE "kill": SIGKILL right after FUNCTION returns;
# "hold:DIR": after FUNCTION, write DIR/ready-PID and wait for DIR/go before going on.
KILLER = """
import os, signal, sys, time
from pathlib import Path
import importlib
module, name, mode = sys.argv[1:4]
target = importlib.import_module(module)
original = getattr(target, name)
def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    gate = Path(mode.split(":", 1)[1])
    (gate / f"ready-{os.getpid()}").touch()
    while not (gate / "go").exists():
        time.sleep(0.05)
    return result
setattr(target, name, wrapped)
from loragen.cli import main
sys.argv = ["loragen", *sys.argv[4:]]
main()
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LORAGEN_CACHE": str(tmp_path / "cache")}


def _loragen(tmp_path: Path, *argv: str, wrap: tuple[str, str, str] | None = None) -> subprocess.Popen:
    prefix = [sys.executable, "-c", KILLER, *wrap] if wrap else [sys.executable, "-m", "loragen.cli"]
    return subprocess.Popen(
        [*prefix, *argv],
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("kill-deploy") / "gen.ckpt", "tiny:qwen2", "tiny:llama")


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.json"))


def _leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.heavy
@pytest.mark.parametrize("command", ["generate", "apply"])
def test_a_kill_during_the_output_write_leaves_no_output_and_the_next_run_cleans_up(ckpt, tmp_path, command):
    out = tmp_path / "out"
    if command == "generate":
        argv = [
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt",
            PROMPT,
            "--output",
            str(out),
            "--format",
            "merged",
        ]
    else:
        rc, _, err = _finish(
            _loragen(
                tmp_path,
                "generate",
                "--ckpt_path",
                str(ckpt),
                "--system_prompt",
                PROMPT,
                "--output",
                str(tmp_path / "gates"),
                "--format",
                "gates",
            )
        )
        assert rc == 0, err
        argv = [
            "apply",
            "--gates",
            str(tmp_path / "gates"),
            "--ckpt_path",
            str(ckpt),
            "--output",
            str(out),
            "--format",
            "merged",
        ]
    # killed right after the last file (loragen_meta.json) was written into the temporary directory
    rc, _, _ = _finish(_loragen(tmp_path, *argv, wrap=("loragen.deploy.generate", "write_json", "kill")))
    assert rc == -signal.SIGKILL
    assert not out.exists()
    assert len(_leftovers(tmp_path)) == 1  # the killed writer's temporary directory, hidden beside the target
    rc, _, err = _finish(_loragen(tmp_path, *argv))
    assert rc == 0, err
    assert not _leftovers(tmp_path)  # removed by the next writer of the same output
    meta = json.loads((out / META_FILE).read_text())
    assert meta["format"] == "merged" and (out / "model.safetensors").is_file()


@pytest.mark.heavy
def test_a_kill_during_the_cache_write_and_a_corrupt_entry_are_rebuilt(ckpt, tmp_path):
    argv = ["generate", "--ckpt_path", str(ckpt), "--system_prompt", PROMPT, "--format", "gates"]
    cache = tmp_path / "cache"
    # loragen.files._umask runs inside atomic_write_text after the entry's bytes, before the rename
    rc, _, _ = _finish(
        _loragen(tmp_path, *argv, "--output", str(tmp_path / "a"), wrap=("loragen.files", "_umask", "kill"))
    )
    assert rc == -signal.SIGKILL
    assert not _entries(cache) and len(_leftovers(cache)) == 1 and not (tmp_path / "a").exists()
    rc, out, err = _finish(_loragen(tmp_path, *argv, "--output", str(tmp_path / "b")))
    assert rc == 0, err
    assert "gates reused" not in out  # a cloud pass: nothing half-written was taken for an entry
    (entry,) = _entries(cache)
    assert not _leftovers(cache)
    reference = GatesRecord.from_dict(json.loads(entry.read_text()))

    entry.write_text(entry.read_text()[: len(entry.read_text()) // 2])  # a truncated entry (disk trouble)
    rc, out, err = _finish(_loragen(tmp_path, *argv, "--output", str(tmp_path / "c")))
    assert rc == 0, err
    assert "gates reused" not in out
    rebuilt = GatesRecord.from_dict(json.loads(entry.read_text()))
    assert torch.equal(rebuilt.gates, reference.gates)
    served = GatesRecord.from_dict(json.loads((tmp_path / "c" / META_FILE).read_text()))
    assert torch.equal(served.gates, reference.gates)


@pytest.mark.heavy
def test_two_generate_processes_racing_for_one_output_leave_one_valid_result(ckpt, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    out = tmp_path / "out"
    argv = ["generate", "--ckpt_path", str(ckpt), "--system_prompt", PROMPT, "--output", str(out), "--format", "gates"]
    # both hold after writing their complete output into their temporary directories, then swap together
    procs = [
        _loragen(tmp_path, *argv, wrap=("loragen.deploy.generate", "write_json", f"hold:{gate}")) for _ in range(2)
    ]
    deadline = time.monotonic() + 240
    while len(list(gate.glob("ready-*"))) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "writers did not get ready"
        time.sleep(0.1)
    (gate / "go").touch()
    results = sorted((_finish(p) for p in procs), key=lambda r: r[0])
    (rc_win, _, _), (rc_lose, _, err_lose) = results
    assert (rc_win, rc_lose) == (0, 2)
    lines = [line for line in err_lose.splitlines() if line.startswith("loragen: error:")]
    assert len(lines) == 1 and "written by another process" in lines[0], err_lose
    record = GatesRecord.from_dict(json.loads((out / META_FILE).read_text()))
    (entry,) = _entries(tmp_path / "cache")
    assert torch.equal(GatesRecord.from_dict(json.loads(entry.read_text())).gates, record.gates)
    assert torch.equal(Deployment(ckpt, cache=False).gates(PROMPT)[0].gates, record.gates)
    assert not _leftovers(tmp_path)


def _wait_for(path_glob: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list(path_glob.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {pattern} under {path_glob}"
        time.sleep(0.1)


TINY_RUN = ["--trainer.max_steps", "40", "--trainer.val_check_interval", "40", "--data.init_args.limit_per_task", "2"]


@pytest.mark.heavy
@pytest.mark.parametrize("runner", ["sweep", "compare"])
def test_a_killed_sweep_or_compare_resumes_the_unfinished_point(tmp_path, runner):
    out = tmp_path / "runs"
    if runner == "sweep":
        argv = [
            "sweep",
            "--base",
            "configs/tiny.yaml",
            "--grid",
            "model.init_args.pool.num_experts=2,4",
            "--out",
            str(out),
            *TINY_RUN,
        ]
        first, second = out / "num_experts=2", out / "num_experts=4"
        marker = "point.json"
    else:
        argv = ["compare", "--base", "configs/tiny.yaml", "--methods", "base,loragen", "--out", str(out), *TINY_RUN]
        first, second = out / "base", out / "loragen"
        marker = "method.json"
    proc = _loragen(tmp_path, *argv)
    _wait_for(second, "**/last*.ckpt", proc)  # the second point is training and has checkpointed
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its fit subprocess, at once
    proc.wait(timeout=60)
    assert (first / marker).is_file() and not (second / marker).exists()
    rc, stdout, err = _finish(_loragen(tmp_path, *argv), timeout=600)
    assert rc == 0, err
    assert "done before, skipped" in stdout
    log = (second / "run.log").read_text()
    assert "Restoring states from the checkpoint" in log or "Restored all states" in log  # resumed, not restarted
    record = json.loads((second / marker).read_text())
    assert record["results"]["trained_steps"] == 40

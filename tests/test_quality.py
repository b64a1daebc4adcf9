"""Quality gates the test command runs: the linter and the formatter (``ruff``) agree with every Python file of the
repository, and the type checker (``mypy``) finds nothing in ``loragen/``, each configured in pyproject.toml; so
nothing lands unformatted, with a lint finding or with a type error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]' (scripts/setup.sh does)")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_finds_nothing():
    run = _ruff("check", ".", "--output-format", "concise")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


def test_ruff_format_would_change_nothing():
    run = _ruff("format", "--check", ".")
    assert run.returncode == 0, "run `ruff format .`: " + run.stdout[-3000:] + run.stderr[-1000:]


def test_mypy_finds_no_type_error_in_loragen():
    exe = shutil.which("mypy") or shutil.which("mypy", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("mypy is not installed: pip install -e '.[dev]' (scripts/setup.sh does)")
    run = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=600)  # settings: pyproject.toml
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]

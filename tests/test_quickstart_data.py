"""The shipped quickstart data is what ``scripts/build_quickstart_data.py`` builds from the LLM-Adapters files (read
with the task registry's LLM-Adapters reader): rebuilt from the shared data, every file is byte-identical."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loragen.data.datamodule import PACKAGED
from tests.conftest import ROOT, SHARED, needs_shared


@needs_shared
@pytest.mark.heavy
def test_the_builder_reproduces_the_shipped_quickstart_files(tmp_path):
    out = tmp_path / "quickstart"
    run = subprocess.run(
        [
            sys.executable,
            "scripts/build_quickstart_data.py",
            "--source",
            str(SHARED / "llm-adapters"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    shipped = PACKAGED / "quickstart"
    built = sorted(p.name for p in out.iterdir())
    assert built == sorted(p.name for p in shipped.iterdir() if p.is_file() and p.name != "__init__.py")
    for name in built:
        assert (out / name).read_bytes() == (shipped / name).read_bytes(), name

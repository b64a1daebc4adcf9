"""A non-editable install ships `loragen` (with `loragen.callbacks`, from the repository's `callbacks/`), the
quickstart data and the released generator, and no top-level `callbacks` module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_wheel_installs_loragen_with_its_callbacks_and_the_data(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("loragen-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    code = (
        "import importlib.util, loragen, loragen.callbacks, pathlib, sys\n"
        f"site = pathlib.Path({str(site)!r})\n"
        "assert pathlib.Path(loragen.__file__).is_relative_to(site), loragen.__file__\n"
        "assert pathlib.Path(loragen.callbacks.__file__) == site / 'loragen/callbacks/__init__.py'\n"
        "assert importlib.util.find_spec('callbacks') is None and not (site / 'callbacks').exists()\n"
        "from loragen.callbacks import RouterStatistics, JsonlPredictionWriter\n"
        "from loragen.data.datamodule import resolve_files\n"
        "files = resolve_files('quickstart:test')\n"
        "assert len(files) == 4 and all(f.is_relative_to(site) for f in files)\n"
        "assert (site / 'loragen/data/quickstart/LLM_ADAPTERS_DATA_LICENSE.txt').is_file()\n"
        "from loragen.release import known_releases\n"
        "release = known_releases()['smollm2-135m-lora-gen']\n"
        "assert release.is_relative_to(site), release\n"
        "assert (release / 'generator.safetensors').stat().st_size <= 40e6\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)

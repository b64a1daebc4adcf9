"""Untrusted files: checkpoints are read without running code, bad ones are refused in one line, and a model
directory's own code never runs unless the user asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loragen import LoRAGenError
from loragen.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this opens (creates) a file: what a malicious checkpoint would do with any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return open, (self.marker, "w")


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "loragen": {"fingerprint": {}}, "payload": _Payload(marker)}, evil)
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(bytes(range(256)) * 64)
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    return {"marker": marker, "evil": evil, "noise": noise, "text": text, "foreign": foreign}


def test_checkpoints_are_read_weights_only_and_bad_ones_refused_in_one_line(tmp_path):
    files = _bad_files(tmp_path)
    for name in ("evil", "noise", "text"):
        with pytest.raises(LoRAGenError, match="is not a loragen checkpoint .*nothing in it ran") as err:
            load_checkpoint(files[name])
        assert "\n" not in str(err.value)
    with pytest.raises(LoRAGenError, match="was not written by loragen"):
        load_checkpoint(files["foreign"])
    with pytest.raises(LoRAGenError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    assert not files["marker"].exists()  # the payload never ran


@pytest.mark.heavy
@pytest.mark.parametrize("command", ["test", "generate", "init_from"])
def test_the_cli_refuses_bad_checkpoints_before_any_work(tmp_path, command):
    files = _bad_files(tmp_path)
    for name in ("evil", "noise", "text"):
        if command == "test":
            args = [
                "test",
                "--config",
                str(ROOT / "configs" / "tiny.yaml"),
                "--ckpt_path",
                str(files[name]),
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
            ]
        elif command == "generate":
            args = [
                "generate",
                "--ckpt_path",
                str(files[name]),
                "--system_prompt",
                "Be brief.",
                "--output",
                str(tmp_path / "out"),
                "--format",
                "gates",
            ]
        else:
            args = [
                "fit",
                "--config",
                str(ROOT / "configs" / "tiny.yaml"),
                "--model.init_args.init_from",
                str(files[name]),
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
            ]
        out = subprocess.run(
            [sys.executable, "-m", "loragen.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert out.returncode == 2, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("loragen: error:")]
        assert len(errors) == 1 and "not a loragen checkpoint" in errors[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr
    assert not files["marker"].exists() and not (tmp_path / "out").exists()


def test_a_model_directory_with_its_own_code_is_not_run(tmp_path):
    """transformers' trust_remote_code stays off: the directory's modeling code is never imported."""
    from loragen.backbones import load_backbone

    model_dir = tmp_path / "custom"
    model_dir.mkdir()
    marker = tmp_path / "remote-code-ran"
    (model_dir / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {
                    "AutoConfig": "modeling_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                },
            }
        )
    )
    with pytest.raises(LoRAGenError) as err:
        load_backbone(str(model_dir))
    assert "\n" not in str(err.value) and str(model_dir) in str(err.value)
    assert not marker.exists()
    assert "trust_remote_code=True" not in (ROOT / "loragen" / "backbones.py").read_text()

"""`loragen` end to end on tiny models: every subcommand, config validation, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from loragen.cli import run

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", TINY, "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), *extra]


def test_top_level_help_answers_without_importing_torch():
    code = ("import sys; from loragen.cli import main; sys.argv = ['loragen', '--help']; main(); "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "fit" in out.stdout and "predict" in out.stdout


def test_fit_test_predict_and_resume_through_the_cli(tmp_path):
    run(["fit", *_args(tmp_path)])
    (last,) = tmp_path.rglob("last.ckpt")
    assert last.is_file() and last.stat().st_size < 2_000_000
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 4
    cli = run(["fit", *_args(tmp_path, "--trainer.max_steps", "6"), "--ckpt_path", str(last)])
    assert cli.trainer.global_step == 6
    cli = run(["test", *_args(tmp_path), "--ckpt_path", str(last)])
    results = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())
    assert results["items"] == 16 and len(results["rows"]) == 3
    cli = run(["predict", *_args(tmp_path), "--ckpt_path", str(last)])
    writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "JsonlPredictionWriter")
    lines = [json.loads(line) for line in writer.path.read_text().splitlines()]
    assert len(lines) == 16 and {"task", "input", "prediction", "reference"} <= set(lines[0])
    assert all("Answer" in row["input"] for row in lines)


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--model.init_args.num_expertz", "3"], "num_expertz"),
     (["--model.init_args.num_experts", "three"], "num_experts"),
     (["--model.init_args.top_k", "9"], "top_k"),
     (["--model.init_args.edge", "nope:model"], "unknown model source scheme"),
     (["--data.init_args.train_files", "missing.jsonl"], "does not exist")],
)
def test_bad_config_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys, extra, fragment):
    import loragen.models.components.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exc:
        run(["fit", *_args(tmp_path, *extra)])
    assert exc.value.code != 0
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")))
def test_every_config_parses(config, capsys):
    data = yaml.safe_load((ROOT / config).read_text())
    if "program" in data or "method" in data:  # a W&B sweep config, checked by the sweep tests
        pytest.skip("sweep config")
    with pytest.raises(SystemExit) as exc:
        run(["fit", "--config", str(ROOT / config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("loragen.") and printed["data"]["class_path"]
    assert "cloud" not in printed["data"]["init_args"]  # linked from the model, never set twice

"""Every config under configs/ runs: one `fast_dev_run` step (train + validation, or a test batch) of a real
LightningCLI run, on tiny models, with the shipped data, the test fixtures or the shared benchmark files.

Pair configs (hub models) only change the model sources, which this test replaces by tiny ones, so they are
parsed by tests/test_cli.py and not run here; FSDP and DeepSpeed need CUDA devices (without them they are refused
in one line, tested below) and multi-process DDP is run on two CPU processes by tests/test_training.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from loragen.cli import run

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "tests" / "fixtures"
TINY_PAIR = ["--model.init_args.cloud", "tiny:qwen2", "--model.init_args.edge", "tiny:llama"]

# config layers -> (subcommand, data directory or None, extra arguments)
RUNS = {
    "quickstart.yaml": ("fit", None, []),
    "tiny.yaml": ("fit", None, []),
    "commonsense/seen.yaml": ("fit", SHARED, ["--data.init_args.train_limit_per_task", "8"]),
    "commonsense/study.yaml": ("fit", SHARED, ["--data.init_args.train_limit_per_task", "8"]),
    "commonsense/unseen.yaml": ("test", FIXTURES, ["--data.init_args.files", "{piqa: {train: piqa/train.jsonl}}"]),
    "gpt4tools/train.yaml": ("fit", FIXTURES, []),
    "pretrain/alpaca.yaml": ("fit", SHARED, []),
    "suite/train.yaml": ("fit", SHARED, ["--data.init_args.train_limit_per_task", "4"]),
    "suite/train.yaml+suite/release.yaml": ("fit", SHARED, ["--data.init_args.train_limit_per_task", "4"]),
    **{
        f"tiny.yaml+baselines/{p.name}": ("test" if p.stem.startswith("base_") else "fit", None, [])
        for p in sorted((ROOT / "configs" / "baselines").glob("*.yaml"))
    },  # base_*: nothing to train
    "tiny.yaml+strategies/bf16.yaml": ("fit", None, []),
}


def test_every_runnable_config_is_listed():
    listed = {layer for key in RUNS for layer in key.split("+")}
    skipped = {
        p.relative_to(ROOT / "configs").as_posix()
        for p in (ROOT / "configs").rglob("*.yaml")
        if p.parent.name in ("pairs", "sweeps", "studies") or p.stem in ("ddp", "fsdp", "deepspeed")
    }
    every = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert every - skipped <= listed, f"configs not run by this test: {sorted(every - skipped - listed)}"


@pytest.mark.heavy
@pytest.mark.parametrize("layers", list(RUNS))
def test_config_runs_one_step_on_tiny_models(layers, tmp_path):
    command, data_dir, extra = RUNS[layers]
    if data_dir is SHARED and not SHARED.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED}")
    configs = [a for layer in layers.split("+") for a in ("--config", str(ROOT / "configs" / layer))]
    data = ["--data.init_args.data_dir", str(data_dir)] if data_dir is not None else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = run(
            [
                command,
                *configs,
                *TINY_PAIR,
                *data,
                *extra,
                "--trainer.fast_dev_run",
                "1",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
    state = cli.trainer.state
    assert state.finished and state.fn == command
    if command == "fit":
        assert cli.trainer.global_step == 1
    else:
        assert cli.trainer.callback_metrics  # a test batch was scored


def test_fit_without_val_data_trains_and_validate_without_it_says_so(tmp_path, capsys):
    tiny = [
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--data.init_args.val_files",
        "null",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_steps",
        "2",
        "--trainer.logger",
        "false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = run(["fit", *tiny])
        assert cli.trainer.global_step == 2 and not cli.trainer.callback_metrics.get("val/acc_mean")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run(["validate", *tiny])
    assert exit_info.value.code == 2
    assert "no val data: set data.val_files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ("fsdp.yaml", "trainer.accelerator=gpu needs a CUDA device"),
        ("deepspeed.yaml", "trainer.accelerator=gpu needs a CUDA device"),
    ],
)
def test_gpu_strategy_configs_are_refused_in_one_line_on_a_machine_without_cuda(layer, fragment, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the strategy runs (scripts/device_check.sh)")
    configs = [
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--config",
        str(ROOT / "configs" / "strategies" / layer),
    ]
    with pytest.raises(SystemExit) as stop:
        run(["fit", *configs, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_evaluation_under_a_sharded_strategy_is_refused_not_merged_into_a_shard():
    """Lightning runs FSDP only on CUDA, so the check every evaluation epoch makes is tested on the strategy
    objects here; an FSDP run itself needs a GPU machine."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    from loragen import LoRAGenError
    from loragen.models.edge_method import check_unsharded

    with pytest.raises(LoRAGenError, match="test under FSDPStrategy: serving merges adapters into whole edge"):
        check_unsharded(FSDPStrategy(), "test")
    check_unsharded(DDPStrategy(), "test")  # whole weights on every rank: served as always
    check_unsharded(SingleDeviceStrategy("cpu"), "validate")

"""`loragen` end to end on tiny models: every subcommand, config validation, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from loragen.cli import run
from tests.conftest import _print_config

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config",
        TINY,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        *extra,
    ]


def test_top_level_help_answers_without_importing_torch():
    code = (
        "import sys; from loragen.cli import main; sys.argv = ['loragen', '--help']; main(); "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from loragen.cli import COMMANDS

    usage = out.stdout.splitlines()[0]
    for command in COMMANDS:  # the usage line and the list name every subcommand the dispatcher knows
        assert command.name in usage and f"\n  {command.name} " in out.stdout, command.name


def test_every_declared_subcommand_answers_help(capsys):
    from loragen.cli import COMMANDS, LIGHTNING

    for command in COMMANDS:
        if command.entry == LIGHTNING:
            continue  # LightningCLI's own help is tested with fit
        code = f"import sys; from loragen.cli import main; sys.argv = ['loragen', {command.name!r}, '--help']; main()"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout.lower(), (command.name, out.stderr[-500:])


@pytest.mark.heavy
def test_fit_test_predict_and_resume_through_the_cli(tmp_path):
    run(["fit", *_args(tmp_path)])
    (last,) = tmp_path.rglob("last.ckpt")
    assert last.is_file() and last.stat().st_size < 2_000_000
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 4
    # the weight-shaping groups are stored; how to evaluate never is
    assert ckpt["hyper_parameters"]["pool"]["num_experts"] == 4 and "eval" not in ckpt["hyper_parameters"]
    cli = run(["fit", *_args(tmp_path, "--trainer.max_steps", "6"), "--ckpt_path", str(last)])
    assert cli.trainer.global_step == 6
    # the pool comes from the checkpoint, whatever the command line says
    cli = run(["test", *_args(tmp_path, "--model.init_args.pool.num_experts", "2"), "--ckpt_path", str(last)])
    assert cli.model.model.pool.num_experts == 4
    results = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())
    assert results["items"] == 16 and len(results["rows"]) == 5  # + the two prompt-sensitivity rows
    # evaluation settings given at test time win over the checkpoint's (architecture still comes from it)
    evaluation = (
        "--model.init_args.eval.zero_shot_reference",
        "false",
        "--model.init_args.eval.scoring",
        "generate",
        "--model.init_args.eval.max_new_tokens",
        "2",
    )
    cli = run(["test", *_args(tmp_path, *evaluation), "--ckpt_path", str(last)])
    results = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())
    assert [r["key"] for r in results["rows"]] == ["loragen", "rotated", "generic", "prompted"]
    assert results["scoring"] == "generation + answer extraction"
    cli = run(["predict", *_args(tmp_path), "--ckpt_path", str(last)])
    writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "JsonlPredictionWriter")
    lines = [json.loads(line) for line in writer.path.read_text().splitlines()]
    assert len(lines) == 16 and {"task", "input", "prediction", "reference"} <= set(lines[0])
    from loragen.data.datamodule import resolve_files
    from loragen.data.records import load_records

    shipped = {r.input for f in resolve_files("quickstart:test") for r in load_records(f)}
    assert all(row["input"] in shipped for row in lines)  # the user input, as the edge read it


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--model.init_args.num_expertz", "3"], "num_expertz"),
        (["--model.init_args.pool.num_experts", "three"], "num_experts"),
        (["--model.init_args.pool.top_k", "9"], "top_k"),
        (["--model.init_args.edge", "nope:model"], "unknown model source scheme"),
        (["--data.init_args.train_files", "missing.jsonl"], "does not exist"),
    ],
)
def test_bad_config_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys, extra, fragment):
    import loragen.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exc:
        run(["fit", *_args(tmp_path, *extra)])
    assert exc.value.code != 0
    assert fragment in capsys.readouterr().err


CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.startswith(("configs/sweeps/", "configs/studies/"))])
def test_every_config_parses(config, capsys):
    data = yaml.safe_load((ROOT / config).read_text())
    # Partial configs (a model pair, a strategy, a recipe) are layered on top of a full one: their own, or tiny.yaml.
    layered_over = {"configs/suite/release.yaml": "configs/suite/train.yaml"}
    base = [] if {"model", "data"} <= set(data) else [layered_over.get(config, "configs/tiny.yaml")]
    printed = _print_config(capsys, *base, config)
    assert printed["model"]["class_path"].startswith("loragen.") and printed["data"]["class_path"]
    assert "cloud" not in printed["data"]["init_args"]  # linked from the model, never set twice
    for section, values in data.items():
        if section == "trainer":
            for key, value in values.items():
                if not isinstance(value, dict | list):
                    assert printed["trainer"][key] == value, key


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/sweeps/")])
def test_wandb_sweep_configs_name_real_config_keys(config, capsys):
    sweep = yaml.safe_load((ROOT / config).read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["program"] == "loragen"
    base = sweep["command"][sweep["command"].index("--config") + 1]
    printed = _print_config(capsys, base)
    for dotted in sweep["parameters"]:
        node = printed
        for part in dotted.split("."):
            assert part in node, f"{dotted} is not a key of {base}"
            node = node[part]


@pytest.mark.parametrize(
    ("study", "base"),
    [
        ("recipe.yaml", "configs/commonsense/study.yaml"),
        ("specificity.yaml", "configs/suite/train.yaml"),
        ("release_card.yaml", "configs/suite/train.yaml"),
    ],
)
def test_study_points_name_real_config_keys(capsys, study, base):
    """Every point of a study changes keys its base config has; a tested checkpoint is a shipped release."""
    from loragen.release import PREFIX, known_releases
    from loragen.sweep import CHECKPOINT, LAYER, read_points

    printed = _print_config(capsys, base)
    points = read_points(str(ROOT / "configs" / "studies" / study))
    assert study == "release_card.yaml" or ("base" in points and not points["base"])
    for name, overrides in points.items():
        for dotted in overrides:
            if dotted == CHECKPOINT:
                released = str(overrides[dotted]).removeprefix(PREFIX)
                assert released in known_releases(), f"point {name}: {overrides[dotted]} is not a shipped release"
                continue
            if dotted == LAYER:  # a config file layered over the base (its own parse checks it)
                assert (ROOT / overrides[dotted]).is_file(), f"point {name}: {overrides[dotted]} does not exist"
                continue
            node = printed
            for part in dotted.split("."):
                assert part in node, f"point {name}: {dotted} is not a key of {base}"
                node = node[part]


def test_wandb_offline_run_records_config_fingerprint_metrics_and_tables(tmp_path):
    wandb_args = [
        "--trainer.logger",
        "lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.offline",
        "true",
        "--trainer.logger.init_args.project",
        "loragen-test",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    args = ["--config", TINY, "--trainer.default_root_dir", str(tmp_path), *wandb_args]
    import wandb

    run(["fit", *args, "--trainer.callbacks+=loragen.callbacks.RouterStatistics"])
    wandb.finish()  # separate processes on the command line; here, close the run as process exit would
    (last,) = tmp_path.rglob("last.ckpt")
    run(["test", *args, "--ckpt_path", str(last)])
    wandb.finish()
    runs = sorted(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 2

    # Offline runs keep config, metrics and summaries in the run's .wandb record file (synced later),
    # written by the W&B service process, which may still be flushing: wait for it.
    def record_log(run_dir, needles):
        deadline = time.time() + 60
        while True:
            data = next(run_dir.glob("*.wandb")).read_bytes()
            if all(n in data for n in needles) or time.time() > deadline:
                return data

    fit_needles = (
        b"edge_arch",
        b"tiny:llama",
        b"resolved_config",
        b"num_experts",
        b"train/loss",
        b"train/gate_entropy",
    )
    fit_log = record_log(runs[0], fit_needles)
    for needle in fit_needles:
        assert needle in fit_log, needle
    assert list((runs[0] / "files" / "media" / "images" / "router").glob("expert_usage*.png"))
    test_log = record_log(runs[1], (b"test/acc_mean", b"test/results"))
    for needle in (b"test/acc_mean", b"test/results", b"table-file"):
        assert needle in test_log, needle
    assert list((runs[1] / "files" / "media" / "table").rglob("*.json"))


@pytest.mark.heavy
def test_csv_logger_runs_without_wandb_installed(tmp_path):
    code = (
        "import sys; sys.modules['wandb'] = None\n"  # makes `import wandb` fail, as if not installed
        "from loragen.cli import run\n"
        f"run(['fit', '--config', {TINY!r}, '--trainer.default_root_dir', {str(tmp_path)!r},"
        f" '--trainer.logger.init_args.save_dir', {str(tmp_path)!r}, '--trainer.max_steps', '2'])\n"
        "assert 'wandb' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train/loss" in metrics
    hparams = next(tmp_path.rglob("hparams.yaml")).read_text()
    assert "edge_arch" in hparams and "max_new_tokens" in hparams  # the pair fingerprint and the eval group


@pytest.mark.heavy
@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["hub-off", "hub-unreachable"]
)
def test_an_unknown_hub_id_is_one_line_before_any_model_loads(env):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loragen.cli",
            "fit",
            "--config",
            TINY,
            "--model.init_args.edge",
            "nosuch/model",
            "--trainer.max_steps",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **env},
        timeout=300,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("loragen: error: model 'nosuch/model' is not"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "bundled:smollm2-135m-instruct" in errors[0]


def test_a_checkpoint_of_the_flat_argument_layout_is_upgraded(tmp_path, monkeypatch):
    """Checkpoints written before the typed groups (flat ``num_experts``, ``lr``, ``scoring``, a retired
    ``length_normalize``) still test and deploy: an upgraded copy (same weights) is used, its evaluation
    settings dropped."""
    from loragen.checkpoint import read_checkpoint
    from loragen.files import sha256_file

    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "cache"))
    run(["fit", *_args(tmp_path, "--trainer.max_steps", "2")])
    (last,) = tmp_path.rglob("last.ckpt")
    ckpt = torch.load(last, weights_only=False)
    hp = ckpt["hyper_parameters"]
    flat = {k: v for k, v in hp.items() if k not in ("pool", "optim")}
    flat.update(hp["pool"] | hp["optim"] | {"scoring": "generate", "eval_path": "functional", "length_normalize": True})
    ckpt["hyper_parameters"] = flat
    ckpt["loragen"]["format"] = 1
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy)
    cli = run(["test", *_args(tmp_path / "t"), "--ckpt_path", str(legacy)])
    assert cli.model.pool_config.num_experts == 4 and cli.model.evaluation.scoring == "loglik"  # config's eval
    info = read_checkpoint(legacy)
    assert info.sha256 == sha256_file(legacy)  # known by its own hash: earlier gates files still match it
    assert info.pool.num_experts == 4 and info.hparams["optim"]["lr"] == 0.01 and "scoring" not in info.hparams
    state = torch.load(info.path, weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())  # the weights untouched


def test_no_logger_leaves_a_logger_only_callback_out_in_one_line_instead_of_failing(tmp_path, capsys):
    args = [
        "fit",
        "--config",
        TINY,
        "--trainer.logger",
        "false",
        "--trainer.fast_dev_run",
        "1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    cli = run(args)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in cli.trainer.callbacks)
    assert "loragen: no logger: LearningRateMonitor left out (it writes to a logger)" in capsys.readouterr().err


def test_test_needs_only_the_test_files_and_fit_still_checks_the_train_files(tmp_path, capsys):
    """A data directory with test files alone serves `loragen test`; `fit` refuses the missing train file in one
    line before any model loads."""
    missing = str(tmp_path / "no" / "train.jsonl")
    common = ["--config", TINY, "--data.init_args.train_files", missing, "--trainer.default_root_dir", str(tmp_path)]
    cli = run(["test", *common, "--trainer.fast_dev_run", "1"])
    assert cli.trainer.state.finished and cli.trainer.callback_metrics
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(["fit", *common, "--trainer.fast_dev_run", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.jsonl" in err[0], err


@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("--model.init_args.eval.scoring", "vote", "loglik, generate"),
        ("--model.init_args.eval.metric", "f1", "acc_norm, acc, harness"),
        ("--model.init_args.router_noise", "loud", "none, gaussian, gumbel"),
        ("--model.init_args.pool.aux_loss", "l2", "cv2, switch, none"),
        ("--data.init_args.scoring", "vote", "loglik, generate"),
    ],
)
def test_a_value_outside_a_fixed_set_is_refused_at_parse_time_in_one_line(tmp_path, capsys, flag, value, allowed):
    with pytest.raises(SystemExit) as stop:
        run(["fit", *_args(tmp_path, flag, value)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == f"loragen: error: {flag.removeprefix('--')}={value!r} is not allowed: choose one of {allowed}"
    assert not (tmp_path / "checkpoints").exists()  # refused before anything ran


def test_the_metric_choices_are_the_described_metrics():
    from loragen.eval.results import METRICS as DESCRIBED
    from loragen.models.config import METRICS

    assert set(METRICS) == set(DESCRIBED)


def test_a_missing_or_malformed_config_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    for path, fragment in ((tmp_path / "nosuch.yaml", "does not exist"), (bad, "is not valid YAML")):
        with pytest.raises(SystemExit) as stop:
            run(["fit", "--config", str(path)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("loragen: error: ") and fragment in err[0], err


def test_sweep_and_compare_parse_like_every_command_and_keep_their_fit_options(tmp_path, capsys):
    """``--print_config`` of a runner holds its own options and the fit options it collected; that file given back
    as ``--config`` parses to the same options (one study = one file)."""
    from loragen.runner import parse_runner, runner_parser

    argv = ["--base", TINY, "--out", str(tmp_path / "s"), "--trainer.max_steps", "30", "--grid", "a.b=1,2"]
    argv += ["--data.init_args.limit_per_task=2", "--seed_everything", "-1"]
    parser = runner_parser("loragen sweep", None, "runs/sweep")
    parser.add_argument("--grid", action="append")
    args = parse_runner(parser, argv)
    assert args.fit_args == [
        "--trainer.max_steps",
        "30",
        "--data.init_args.limit_per_task=2",
        "--seed_everything",
        "-1",
    ]
    assert args.grid == ["a.b=1,2"] and args.base == TINY
    with pytest.raises(SystemExit) as stop:
        parse_runner(parser, [*argv, "--print_config"])
    assert stop.value.code in (0, None)
    study = tmp_path / "study.yaml"
    study.write_text(capsys.readouterr().out)
    again = parse_runner(parser, ["--config", str(study)])
    assert (again.base, again.out, again.grid, again.fit_args) == (args.base, args.out, args.grid, args.fit_args)


@pytest.mark.parametrize("command", ["sweep", "compare"])
def test_a_fit_config_given_as_a_runners_config_is_one_line_naming_base(command, capsys):
    from loragen.cli import COMMANDS

    entry = next(c for c in COMMANDS if c.name == command).entry
    module, function = entry.split(":")
    main = getattr(__import__(module, fromlist=[function]), function)
    with pytest.raises(SystemExit) as stop:
        main(["--config", TINY, "--out", "runs/never"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"give it as --base {TINY}" in err
    grid = ["--grid", "model.init_args.pool.num_experts=2"] if command == "sweep" else []
    with pytest.raises(SystemExit) as stop:
        main(["--base", "configs/missing.yaml", "--out", "runs/never", *grid])
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(
            "--base configs/missing.yaml does not exist: give a loragen fit config (e.g. configs/quickstart.yaml)"
        )
    )
    assert not (ROOT / "runs" / "never").exists()


def test_release_reads_its_options_from_a_config_file_and_refuses_an_unknown_dtype(tmp_path, capsys):
    from loragen.release import main

    options = tmp_path / "release.yaml"
    options.write_text(yaml.safe_dump({"ckpt_path": "a.ckpt", "out": "rel", "name": "n", "command": "c"}))
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(options), "--dtype", "bfloat16", "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["dtype"] == "bfloat16" and printed["name"] == "n" and printed["licence"] == []
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(options), "--dtype", "int8"])
    assert stop.value.code == 2 and "int8" in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``loragen tasks | head -1``: the pipe closes while loragen writes; it stops quietly."""
    run_ = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m loragen.cli tasks | true"], capture_output=True, text=True, cwd=ROOT
    )
    assert "Traceback" not in run_.stderr and "BrokenPipeError" not in run_.stderr, run_.stderr[-1000:]


def test_a_runs_cost_is_each_childs_own_wall_time_and_peak_memory(tmp_path):
    from loragen.compare import fit_time
    from loragen.runner import _run_child, exit_reason

    def child(mb: int, seconds: float, code: int = 0) -> list[str]:
        body = f"import sys, time; b = bytearray({mb} << 20); b[::4096] = b'1' * len(b[::4096]); "
        return [sys.executable, "-c", body + f"time.sleep({seconds}); sys.exit({code})"]

    import resource

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process: the children's floor
    with open(tmp_path / "log", "w") as log:
        big_s, big_mb = _run_child(child(int(floor) + 1000, 0.5), log)
        small_s, small_mb = _run_child(child(20, 0.0), log)
        with pytest.raises(subprocess.CalledProcessError) as failed:
            _run_child(child(1, 0.0, code=3), log)
        with pytest.raises(subprocess.CalledProcessError) as killed:  # as the out-of-memory killer does
            _run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], log)
    assert failed.value.returncode == 3 and exit_reason(3) == "exit 3"
    assert exit_reason(killed.value.returncode).startswith("killed by SIGKILL: usually the out-of-memory killer")
    assert exit_reason(-15) == "killed by SIGTERM"
    assert big_s >= 0.5 and big_mb >= floor + 1000  # the child's own high-water mark, touched pages included
    assert small_mb < floor + 200 < big_mb  # not the largest child so far: each run's cost is its own
    assert fit_time({"fit_seconds": 3725.4, "trained_steps": 500}) == "1:02:05"
    assert fit_time({"fit_seconds": 61, "resumed": True, "trained_steps": 500}) == "0:01:01 (resumed)"
    assert fit_time({"fit_seconds": None, "trained_steps": None}) == "-"  # untrained (base, few-shot)
    assert fit_time({"trained_steps": 500}) == "?"  # a row written before the cost was measured


def test_an_interrupted_fit_is_resumed_only_by_the_run_that_started_it(tmp_path):
    from loragen import LoRAGenError
    from loragen.runner import STARTED, Plan, check_interrupted, run_plans

    def plan(lr):
        return Plan(
            "lora", tmp_path / "lora", {"model": {"init_args": {"optim": {"lr": lr}}}}, ["--trainer.max_steps", "5"]
        )

    started = plan(0.001)
    (started.run_dir / "checkpoints").mkdir(parents=True)
    (started.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an interrupted fit's checkpoint")
    (started.run_dir / STARTED).write_text(started.identity + "\n")
    check_interrupted(started)  # the same run: it may continue
    other = plan(0.01)
    with pytest.raises(LoRAGenError, match="interrupted lora fit started with another configuration"):
        run_plans([other], "method.json", lambda p, o: {})
    assert not (other.run_dir / "config.yaml").exists()  # refused before anything in the directory changed
    _, failed = run_plans([other], "method.json", lambda p, o: {}, keep_going=True)
    assert len(failed) == 1 and "another configuration" in failed[0]
    (started.run_dir / STARTED).unlink()  # a directory from before identities were recorded passes
    check_interrupted(other)

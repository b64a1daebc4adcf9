"""The one experiment runner behind ``loragen sweep`` (a grid or named points) and ``loragen compare`` (the methods
as points): a run is a list of ``Plan``s, each a fit + test in subprocesses in its own directory, resumable; and
the command line both share (``--base`` fit config, the runner's own options from ``--config FILE``, fit options
collected as ``fit_args``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loragen import LoRAGenError
from loragen.files import atomic_write_text


def read_base(path: str) -> dict[str, Any]:
    """The ``--base`` config of a sweep or comparison: a YAML mapping (a loragen fit config)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise LoRAGenError(f"--base {path} does not exist: give a loragen fit config (e.g. configs/quickstart.yaml)")
    try:
        base = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())
        raise LoRAGenError(f"--base {path} is not valid YAML ({problem}): fix the file") from None
    if not isinstance(base, dict):
        raise LoRAGenError(f"--base {path} is not a loragen fit config (a YAML mapping with model, data, trainer)")
    return base


COST_KEYS = ("fit_seconds", "test_seconds", "peak_rss_mb", "resumed")  # a run's ``cost`` (``run_point``)


def _run_child(cmd: list[str], log: IO[str]) -> tuple[float, float]:
    """Run ``cmd`` with its output to ``log``; its wall seconds and peak resident memory in MB (the child's
    own high-water mark, read from ``wait4``; on Linux it counts the resident memory of this process at the
    spawn as a floor, since the child starts as its copy). A non-zero exit raises ``CalledProcessError``; an
    interrupt here stops the child too."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except BaseException:
        child.kill()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, cmd)
    per_mb = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    return time.perf_counter() - start, usage.ru_maxrss / per_mb


def exit_reason(returncode: int) -> str:
    """``exit 3``, or the signal that killed a child, with the usual cause of a SIGKILL nobody sent."""
    import signal

    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = (
        ": usually the out-of-memory killer (lower data.batch_size or the max_*_tokens limits; the prompted "
        "LoRA has activation_checkpointing)"
        if name == "SIGKILL"
        else ""
    )
    return f"killed by {name}{hint}"


def last_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's ``last*.ckpt`` files, oldest first (the last one is the fit's latest state)."""
    return sorted(run_dir.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)


def run_point(config_path: Path, run_dir: Path, extra: list[str], fit: bool = True) -> dict[str, Any]:
    """fit (unless ``fit=False``) then test one run in subprocesses (a crash in one run cannot take
    the sweep or comparison down); the log goes to ``run_dir/run.log``. Returns the test's results, the
    run's seconds and its ``cost``: fit and test wall seconds, the larger of their peak resident memories
    (MB), and whether the fit continued an interrupted attempt (its seconds are then this attempt's only)."""
    cli = [sys.executable, "-m", "loragen.cli"]
    start = time.perf_counter()
    log_path = run_dir / "run.log"
    cost: dict[str, Any] = {**dict.fromkeys(COST_KEYS), "resumed": False}
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    try:
        checkpoint = []
        fit_peak = 0.0
        if fit:
            # an interrupted earlier attempt left a checkpoint: continue it (resumes are exact)
            earlier = last_checkpoints(run_dir)
            resume = ["--ckpt_path", str(earlier[-1])] if earlier else []
            cost["resumed"] = bool(earlier)
            seconds, peak = _run_child([*cli, "fit", "--config", str(config_path), *resume, *extra], log)
            cost["fit_seconds"], fit_peak = round(seconds, 1), peak
            last = last_checkpoints(run_dir)
            if not last:
                raise LoRAGenError(
                    f"{run_dir}: fit wrote no last.ckpt; give the config a ModelCheckpoint with save_last"
                )
            checkpoint = ["--ckpt_path", str(last[-1])]
        seconds, peak = _run_child(
            [*cli, "test", "--config", str(config_path), *checkpoint, "--verbose", "false", *extra], log
        )
        cost["test_seconds"], cost["peak_rss_mb"] = round(seconds, 1), round(max(fit_peak, peak))
    except subprocess.CalledProcessError as err:
        raise LoRAGenError(f"run {run_dir.name} failed ({exit_reason(err.returncode)}); see {log_path}") from None
    finally:
        log.close()
    found = sorted(run_dir.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LoRAGenError(f"{run_dir}: test wrote no results.json")
    return {"results": json.loads(found[-1].read_text()), "seconds": time.perf_counter() - start, "cost": cost}


@dataclass
class Plan:
    """One run of an experiment: its name, directory, resolved config, options and whether it trains."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    extra: list[str]
    fit: bool = True
    checkpoint: str | None = None
    """A trained checkpoint (or ``bundled:NAME``) tested as it is (``fit`` is then False)."""

    @property
    def identity(self) -> str:
        """What the run's results depend on (its config and options, output paths aside; for a tested checkpoint,
        its weights' sha256 instead of its path, and no training option)."""
        import hashlib

        config = {k: v for k, v in self.config.items() if k != "trainer"}
        tested = self.checkpoint is not None
        skipped = {"default_root_dir", "logger", "callbacks"} | (TRAINING_ONLY if tested else set())
        trainer = {k: v for k, v in (self.config.get("trainer") or {}).items() if k not in skipped}
        identity: dict[str, Any] = {"config": config, "trainer": trainer, "extra": self.extra}
        if self.checkpoint is not None:
            options = {"--ckpt_path", *(f"--trainer.{k}" for k in TRAINING_ONLY)}
            identity |= {"extra": drop_options(self.extra, options), "weights": weights_digest(self.checkpoint)}
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


TRAINING_ONLY = {"max_steps", "max_epochs", "val_check_interval", "check_val_every_n_epoch", "accumulate_grad_batches"}
"""Trainer options a test-only run does not depend on."""


def drop_options(args: list[str], names: set[str]) -> list[str]:
    """``args`` without the named options (``--name VALUE`` and ``--name=VALUE``)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif arg.split("=", 1)[0] not in names:
            kept.append(arg)
    return kept


def weights_digest(checkpoint: str) -> str:
    """What a tested checkpoint's results depend on: a release's weights sha256 (from its ``release.json``), a
    checkpoint file's sha256; ``missing`` for a file not written yet (an earlier run of the same sweep writes it)."""
    from loragen.files import sha256_file
    from loragen.release import is_release, read_release, release_dir

    if is_release(checkpoint):
        return str(read_release(release_dir(checkpoint))["weights_sha256"])
    path = Path(checkpoint)
    return sha256_file(path) if path.is_file() else "missing"


STARTED = ".started-identity"
"""Written into a run directory when its run starts: the identity an interrupted fit's checkpoint belongs to."""


def check_interrupted(plan: Plan) -> None:
    """Refuse to continue an interrupted fit (a checkpoint, no finished marker) that was started with another
    configuration or options: resuming it would mix two runs in one row. Directories of runs started before
    identities were recorded pass."""
    started = plan.run_dir / STARTED
    if not plan.fit or not started.is_file() or not last_checkpoints(plan.run_dir):
        return
    if started.read_text().strip() != plan.identity:
        raise LoRAGenError(
            f"{plan.run_dir} holds an interrupted {plan.name} fit started with another configuration or options: "
            "re-run with those, use a new --out, or delete that directory to start it again"
        )


def run_plans(
    plans: list[Plan],
    marker: str,
    record: Callable[[Plan, dict[str, Any]], dict[str, Any]],
    keep_going: bool = False,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The one experiment loop of ``loragen sweep`` and ``loragen compare``: each plan's fit + test in
    subprocesses (``run_point``), resumable: a finished run leaves ``run_dir/MARKER`` (``record(plan, outcome)``
    plus its identity) and is skipped when the command is run again; a finished run made with another config or
    options is refused, not mixed in. ``keep_going``: a failed run is reported and the others still run.
    Returns the records of the finished runs by name, and the failures."""
    import yaml

    records: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for i, plan in enumerate(plans, 1):
        path = plan.run_dir / marker
        if path.is_file():
            done = json.loads(path.read_text())
            if done.get("identity", plan.identity) != plan.identity:  # runs before identities were recorded pass
                raise LoRAGenError(
                    f"{plan.run_dir} holds a {plan.name} run made with another configuration or options: "
                    "use a new --out, or delete that directory to run it again"
                )
            print(f"[{i}/{len(plans)}] {plan.name}: done before, skipped", flush=True)
            records[plan.name] = done
            continue
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = plan.run_dir / "config.yaml"
        print(f"[{i}/{len(plans)}] {plan.name}: {'fit + test' if plan.fit else 'test'} ...", flush=True)
        try:
            check_interrupted(plan)  # before config.yaml is rewritten: a refused directory is left as it was
            config_path.write_text(yaml.safe_dump(plan.config, sort_keys=False))
            (plan.run_dir / STARTED).write_text(plan.identity + "\n")
            outcome = run_point(config_path, plan.run_dir, plan.extra, fit=plan.fit)
        except LoRAGenError as err:
            if not keep_going:
                raise
            print(f"[{i}/{len(plans)}] {plan.name}: FAILED: {err}", flush=True)
            failed.append(f"{plan.name} ({err})")
            continue
        done = {**record(plan, outcome), "identity": plan.identity, "results": outcome["results"]}
        atomic_write_text(path, json.dumps(done, indent=1))
        print(f"[{i}/{len(plans)}] {plan.name}: done ({outcome['seconds']:.0f} s)", flush=True)
        records[plan.name] = done
    return records, failed


FIT_KEYS = ("model", "data", "trainer", "seed_everything", "optimizer", "lr_scheduler")  # LightningCLI's groups


def split_fit_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """A runner's own options and the ``--model.* / --data.* / --trainer.* / --seed_everything`` options (with their
    values) that go to every ``loragen fit`` / ``loragen test`` it runs."""
    own: list[str] = []
    fit: list[str] = []
    words = iter(argv)
    for word in words:
        name = word[2:].split("=", 1)[0] if word.startswith("--") else ""
        if name.split(".", 1)[0] not in FIT_KEYS:
            own.append(word)
            continue
        fit.append(word)
        if "=" not in word:
            value = next(words, None)
            if value is not None:
                fit.append(value)
    return own, fit


def runner_parser(prog: str, description: str | None, out: str) -> Any:
    """The parser ``loragen sweep`` and ``loragen compare`` share (jsonargparse, as every loragen command:
    ``--config FILE`` reads these options from YAML, ``--print_config`` writes the resolved ones)."""
    import argparse

    from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

    class Help(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """The module docstring's examples keep their lines."""

    parser = ArgumentParser(prog=prog, description=description, formatter_class=Help)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of these options (see --print_config)")
    parser.add_argument(
        "--base", required=True, metavar="FILE", help="the LightningCLI config every run starts from (YAML)"
    )
    parser.add_argument("--out", default=out, metavar="DIR", help="output directory (one subdirectory per run)")
    parser.add_argument(
        "--fit_args",
        action="append",
        default=[],
        metavar="ARG",
        help="words added to every `loragen fit` / `loragen test` command line; on the command line any --model.*, "
        "--data.*, --trainer.* or --seed_everything option is collected here (e.g. --trainer.max_steps 30)",
    )
    return parser


def parse_runner(parser: Any, argv: list[str]) -> Any:
    """Parse a runner's command line: its fit options go to ``fit_args``; a LightningCLI config given as
    ``--config`` (before ``--base`` existed) is refused in one line."""
    import yaml

    own, fit = split_fit_args(argv)
    for i, word in enumerate(own[:-1]):
        file = Path(own[i + 1])
        if word == "--config" and file.suffix in (".yaml", ".yml") and file.is_file():
            try:
                keys = set(yaml.safe_load(file.read_text()) or {})
            except (yaml.YAMLError, TypeError, ValueError):
                continue  # the parser reports it
            if keys & set(FIT_KEYS):
                parser.error(
                    f"{file} is a loragen fit config: give it as --base {file} (--config takes this command's own "
                    "options, see --print_config)"
                )
    return parser.parse_args([*own, *(f"--fit_args={word}" for word in fit)])

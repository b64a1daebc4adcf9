"""The ``loragen`` command: LightningCLI with ``fit | validate | test | predict``.

Every component is configurable from YAML (``class_path`` / ``init_args``) and from flags; model and
data stay consistent because the data's ``cloud``/``edge`` tokenizer sources are linked from the
model. Heavy libraries are imported only after the top-level ``--help`` has been answered.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

LIGHTNING = "lightning"  # a subcommand LightningCLI parses (``run``)


@dataclass(frozen=True)
class Command:
    """One ``loragen`` subcommand: its line in ``loragen --help`` and where it runs."""

    name: str
    summary: str
    entry: str = LIGHTNING  # ``module:function`` called with the arguments after the name (with the name: deploy)
    with_name: bool = False


COMMANDS = (
    Command("fit", "train a generator (resume with --ckpt_path last)"),
    Command("validate", "evaluate on data.val_files"),
    Command("test", "evaluate on data.test_files; writes results.json / results.md in the run directory"),
    Command("predict", "write the specialized edge model's answers as JSONL (merged LoRA, no system prompt)"),
    Command(
        "encode",
        "the frozen cloud's meta-token states for every system prompt of the data, in a states file (--out "
        "FILE); fit / test / generate / serve with --model.init_args.cloud_states FILE never load the cloud",
    ),
    Command(
        "generate",
        "checkpoint + system prompt -> PEFT adapter, merged HF model, gates file or GGUF",
        "loragen.deploy.cli:main",
        with_name=True,
    ),
    Command(
        "apply",
        "gates file (or --server URL) + checkpoint -> PEFT adapter or merged HF model (edge side, no cloud pass)",
        "loragen.deploy.cli:main",
        with_name=True,
    ),
    Command(
        "chat",
        "talk to the specialized edge model (no system prompt in its context)",
        "loragen.deploy.cli:main",
        with_name=True,
    ),
    Command(
        "serve",
        "the generator as an HTTP service (LitServe): POST /v1/generate -> gates or PEFT adapter",
        "loragen.deploy.cli:main",
        with_name=True,
    ),
    Command(
        "sweep",
        "offline grid or named points of fit + test, resumable, table + plot (and a study report)",
        "loragen.sweep:main",
    ),
    Command(
        "compare",
        "LoRA-Gen vs. baselines (base, few-shot, LoRA +/- system prompt, MixLoRA, LoRAMoE, prompt tuning, "
        "Text-to-LoRA) on one config: comparison.md/csv/json + accuracy-vs-latency plot",
        "loragen.compare:main",
    ),
    Command(
        "release",
        "a checkpoint's trained weights as a release directory (float16 weights + release.json): bundled:NAME",
        "loragen.release:main",
    ),
    Command(
        "tasks",
        "the task registry as a table: family, dataset, items per split, descriptions, grading, licence",
        "loragen.tasks_command:main",
    ),
)


def top_help() -> str:
    """``loragen --help``, from ``COMMANDS``."""
    import textwrap

    names = ",".join(c.name for c in COMMANDS)
    lines = [
        f"usage: loragen {{{names}}} [options]",
        "",
        "loragen trains LoRA-Gen generators: a cloud LM reads a task's system prompt once (plus one meta",
        "token per edge layer), a router mixes LoRA experts, and the LoRA is merged into the edge LM, which",
        "then answers without the system prompt.",
        "",
        "subcommands:",
    ]
    for command in COMMANDS:
        wrapped = textwrap.wrap(command.summary, width=96)
        lines.append(f"  {command.name:<10} {wrapped[0]}")
        lines += [f"  {'':<10} {rest}" for rest in wrapped[1:]]
    lines += [
        "",
        f"common options ({', '.join(c.name for c in COMMANDS if c.entry == LIGHTNING)}):",
        "  --config FILE           YAML config (see configs/; e.g. configs/quickstart.yaml)",
        "  --print_config          print the fully resolved config and exit",
        "  --ckpt_path PATH|last   checkpoint to resume from or evaluate",
        "  --model.*, --data.*, --trainer.*   any field, e.g. --model.init_args.pool.num_experts 4",
        "",
        "Run `loragen SUBCOMMAND --help` for every option of a subcommand.",
    ]
    return "\n".join(lines)


def _cli_class() -> Any:
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

    class LoggerSaveConfigCallback(SaveConfigCallback):
        """Writes config.yaml to the run directory and logs the full resolved config to every
        logger (the W&B run config, the CSV logger's hparams.yaml)."""

        def save_config(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
            config = self.config.as_dict()
            config.pop("config", None)  # the list of YAML paths, not settings
            for logger in trainer.loggers:
                logger.log_hyperparams({"resolved_config": config})

    class LoRAGenParser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            """A value outside a field's fixed set: one line naming the field and the allowed values."""
            # a nested parser (a subclass's, one Union member tried) raises instead of exiting: leave it be
            line = condense_parse_error(message) if getattr(self, "exit_on_error", True) else None
            if line is None:
                super().error(message, ex)
            print(f"loragen: error: {line}", file=sys.stderr)
            raise SystemExit(2)

    class LoRAGenCLI(LightningCLI):
        save_config_class = LoggerSaveConfigCallback
        parser_class = LoRAGenParser  # passed to the constructor by ``run``

        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            """Lightning's four, and ``encode`` (``LoRAGenTrainer.encode``)."""
            return {**LightningCLI.subcommands(), "encode": {"model", "datamodule"}}

        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
            parser.link_arguments("model.init_args.cloud", "data.init_args.cloud")
            parser.link_arguments("model.init_args.edge", "data.init_args.edge")
            # the data asks each question in the formulation the model's scoring grades
            parser.link_arguments("model.init_args.eval.scoring", "data.init_args.scoring")

        def parse_arguments(self, parser, args) -> None:  # noqa: ANN001
            """A ``--ckpt_path`` that is a released generator (``bundled:NAME``) or a checkpoint of an older
            loragen becomes the loragen checkpoint it stands for, before Lightning reads the model's
            arguments from it (the weight-shaping ones: a checkpoint never stores how it is evaluated)."""
            super().parse_arguments(parser, args)
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path:
                from loragen.checkpoint import resolve_checkpoint

                self.config[subcommand]["ckpt_path"] = str(resolve_checkpoint(ckpt_path))

        def before_instantiate_classes(self) -> None:
            """Check model and data settings (cheaply) before any model is loaded."""
            from loragen.models.edge_method import check_method_args, load_class

            config = self.config[self.subcommand] if self.subcommand else self.config
            model, data = config.get("model"), config.get("data")
            if model is not None and model.get("class_path"):  # the typed groups validate themselves
                check_method_args(model["class_path"], model.get("init_args") or {})
            if data is not None and data.get("class_path"):  # files and tasks exist, before any model loads
                cls = load_class(data["class_path"])
                if hasattr(cls, "check_config"):
                    from loragen.data.datamodule import SUBCOMMAND_STAGES

                    stages = SUBCOMMAND_STAGES.get(self.subcommand) if self.subcommand else None
                    cls.check_config(stages=stages, **dict(data.get("init_args") or {}))
            check_trainer(config.get("trainer") or {})
            drop_logger_callbacks(config.get("trainer"))
            trainer = config.get("trainer")
            if trainer is not None and not sys.stdout.isatty() and trainer.get("enable_progress_bar") is None:
                trainer["enable_progress_bar"] = False  # no terminal: the progress lines instead of a bar
            root = (config.get("trainer") or {}).get("default_root_dir")
            if self.subcommand == "fit" and root:  # one fit per run directory: a second is refused, not interleaved
                from loragen.files import lock_run_directory

                self._run_lock = lock_run_directory(root)

        def instantiate_classes(self) -> None:
            """A loragen error while the model or data is built (a stale states file, another pair's checkpoint)
            reaches the user as its own line, not inside jsonargparse's wrapping of every subclass it tried."""
            try:
                super().instantiate_classes()
            except Exception as err:
                cause = loragen_error_in(err)
                if cause is None:
                    raise
                raise cause from None

        def _progress_lines(self) -> None:
            """Without a terminal the rich progress bar prints nothing: print plain progress lines."""
            from loragen.callbacks.progress_lines import ProgressLines

            callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # set in Trainer.__init__, not declared
            if not sys.stdout.isatty() and not any(isinstance(c, ProgressLines) for c in callbacks):
                callbacks.append(ProgressLines())

        def before_fit(self) -> None:
            self._progress_lines()
            if self.config[self.subcommand].get("ckpt_path") is None:  # a fresh run beside an earlier one: say so
                from lightning.pytorch.callbacks import ModelCheckpoint

                for callback in self.trainer.callbacks:  # type: ignore[attr-defined]  # as above
                    if (
                        isinstance(callback, ModelCheckpoint)
                        and callback.dirpath
                        and (Path(callback.dirpath) / "last.ckpt").is_file()
                    ):
                        print(
                            f"loragen: {callback.dirpath} holds an earlier run's last.ckpt: this run starts from "
                            "scratch and writes last-v1.ckpt beside it; pass --ckpt_path last to resume instead",
                            file=sys.stderr,
                            flush=True,
                        )

        # the other subcommands only need the progress lines
        before_validate = before_test = before_predict = before_encode = _progress_lines

        def after_fit(self) -> None:
            from loragen.files import release_run_directory

            release_run_directory(getattr(self, "_run_lock", None))

    return LoRAGenCLI


def condense_parse_error(message: str) -> str | None:
    """jsonargparse's report of a value outside a ``Literal`` field (nested in every subclass it tried) as one
    line, ``model.init_args.eval.scoring='foo' is not allowed: choose one of loglik, generate``, and of a missing
    or malformed ``--config`` file; None for other errors (they keep jsonargparse's words)."""
    import re

    missing = re.search(r'Parser key "config": File does not exist: (.*)', message)
    if missing:
        path = missing.group(1).strip()
        return f"--config {path} does not exist: give a YAML config file (e.g. configs/quickstart.yaml)"
    if message.startswith("Problems parsing config"):
        problem = " ".join(line.strip() for line in message.splitlines()[0:5] if line.strip())
        problem = problem.removeprefix("Problems parsing config:").strip()
        return f"a --config file is not valid YAML ({problem}): fix the file"
    found = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)", message)
    if found is None:
        return None
    keys = re.findall(r'Parser key "([^"]+)"', message)
    key = keys[0] + (".init_args." + keys[1] if len(keys) > 1 and "class_path" in message else "")
    allowed = ", ".join(v.strip().strip("'\"") for v in found.group(1).split(","))
    return f"{key}={found.group(2).strip()!r} is not allowed: choose one of {allowed}"


def loragen_error_in(err: BaseException) -> BaseException | None:
    """The LoRAGenError an exception was raised from or while handling, if any (its cause/context chain)."""
    from loragen import LoRAGenError

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, LoRAGenError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def check_trainer(trainer: Any) -> None:
    """Trainer settings this machine cannot run, in one line before any model loads: a GPU accelerator
    without a CUDA device, DeepSpeed without the ``deepspeed`` package."""
    import importlib.util

    import torch

    from loragen import LoRAGenError

    if hasattr(trainer, "as_dict"):
        trainer = trainer.as_dict()
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise LoRAGenError(
            f"trainer.accelerator={accelerator} needs a CUDA device and this machine has none: run it on a GPU "
            "machine, or leave out the GPU strategy config (configs/strategies/ddp.yaml runs on CPU processes)"
        )
    strategy = trainer.get("strategy")
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy or "")
    if "deepspeed" in name.lower() and importlib.util.find_spec("deepspeed") is None:
        raise LoRAGenError(f"trainer.strategy={name} needs DeepSpeed: pip install deepspeed (on a GPU machine)")


class _NoAdverts:
    """A logging filter: Lightning's "💡 Tip" lines advertise other products; they are not about the run."""

    def filter(self, record: Any) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_logs() -> None:
    """Logs a user reads: no product adverts from Lightning; without a terminal, no W&B banners (their ANSI
    colour codes land in log files as escape sequences; the run's W&B files are still written) and no
    carriage-return progress bars of transformers' weight loading (one line of ``\r`` frames in a log file)."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
    if not sys.stderr.isatty():
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


LOGGER_CALLBACKS = ("LearningRateMonitor",)  # callbacks that only write to a logger


def drop_logger_callbacks(trainer: Any) -> None:
    """``--trainer.logger false`` on a config that carries a logger-only callback: leave the callback out (said in
    one line) instead of Lightning's MisconfigurationException when training starts."""
    if trainer is None or trainer.get("logger") is not False or not trainer.get("callbacks"):
        return
    kept = []
    for callback in trainer["callbacks"]:
        path = callback.get("class_path", "") if hasattr(callback, "get") else type(callback).__name__
        if str(path).rsplit(".", 1)[-1] in LOGGER_CALLBACKS:
            print(
                f"loragen: no logger: {str(path).rsplit('.', 1)[-1]} left out (it writes to a logger)", file=sys.stderr
            )
            continue
        kept.append(callback)
    trainer["callbacks"] = kept


def run(args: list[str] | None = None) -> object:
    """Run the CLI (``args`` as on the command line); returns the LightningCLI object."""
    os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed
    quiet_logs()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # Frozen backbones are in eval mode on purpose; Lightning's notice about it is noise here.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    import lightning as L
    from jsonargparse import set_parsing_settings

    from loragen import LoRAGenError
    from loragen.data.datamodule import RecordDataModule
    from loragen.encode import LoRAGenTrainer

    # configs derive their output paths from the run directory, e.g. ``save_dir: ${trainer.default_root_dir}``:
    # interpolations resolve after every config and flag is merged, so ``--trainer.default_root_dir`` moves them
    # ``--help`` shows the docstring under each field of the typed config groups
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True, docstring_parse_attribute_docstrings=True)
    cli_class = _cli_class()
    try:  # model: LoRAGenModule or any baseline (loragen.models.baselines), chosen by class_path
        return cli_class(
            L.LightningModule,
            RecordDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            save_config_callback=cli_class.save_config_class,
            trainer_class=LoRAGenTrainer,
            parser_class=cli_class.parser_class,
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "omegaconf+"},
        )
    except LoRAGenError as err:
        print(f"loragen: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(top_help())
        return
    command = next((c for c in COMMANDS if c.name == argv[0]), None)
    if command is None or command.entry == LIGHTNING:
        run(None)  # LightningCLI names an unknown subcommand itself
        return
    import importlib

    module, function = command.entry.split(":")
    getattr(importlib.import_module(module), function)(argv if command.with_name else argv[1:])


def main() -> None:
    try:
        _dispatch(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (``loragen --help | head``): no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""``TaskDataModule``: the paper's benchmarks by task name, on top of ``RecordDataModule``.

Records come from the task registry (``loragen.data.tasks``): each task's system prompt is its
description plus ``shots`` few-shot examples drawn deterministically from its train split; the
user input is the question in lm-evaluation-harness's cloze formulation of the task for option
scoring (``scoring: loglik``), or with the options listed for ``scoring: generate``; multiple-choice
records carry the option texts and the label. Batching,
tokenization, limits and per-task evaluation grouping are ``RecordDataModule``'s.
"""

from __future__ import annotations

from typing import Any

from loragen import LoRAGenError
from loragen.data.datamodule import RecordDataModule, check_sizes
from loragen.data.mixing import check_temperature, mix
from loragen.data.records import Record
from loragen.data.tasks import REGISTRY, TaskLoader, TaskSpec, expand_tasks, get_task, task_from_config
from loragen.data.tasks.base import formulation_for
from loragen.data.tasks.loader import EvalDescription
from loragen.data.tasks.registry import plain_config
from loragen.models.config import Scoring

STAGES = ("train", "val", "test", "predict")


def _stage_pairs(kw: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    splits = {
        "train": kw.get("train_split") or "train",
        "val": kw.get("val_split") or "val",
        "test": kw.get("test_split") or "test",
        "predict": kw.get("test_split") or "test",
    }
    return {stage: expand_tasks(plain_config(kw.get(f"{stage}_tasks")), splits[stage]) for stage in STAGES}


def check_unseen(train: list[tuple[str, str]], unseen: list[str] | None, extra: dict[str, TaskSpec]) -> None:
    """A train task whose dataset is listed in ``data.unseen`` is refused, in one line."""
    if not unseen:
        return
    datasets = {spec.dataset for spec in (*REGISTRY.values(), *extra.values())}
    unknown = [name for name in unseen if name not in datasets]
    if unknown:
        raise LoRAGenError(
            f"data.unseen names unknown dataset(s) {', '.join(unknown)}: a dataset is a task's "
            "`dataset` (see `loragen tasks`)"
        )
    for task, _ in train:
        dataset = get_task(task, extra).dataset
        if dataset in unseen:
            raise LoRAGenError(
                f"train task {task!r} is from dataset {dataset!r}, which data.unseen keeps out of "
                "training: remove it from data.train_tasks (or from data.unseen)"
            )


def _extra_specs(extra_tasks: Any) -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    for entry in plain_config(extra_tasks) or []:
        spec = task_from_config(entry)
        specs[spec.name] = spec
    return specs


class TaskDataModule(RecordDataModule):
    """Benchmark tasks by name (presets ``seen``, ``unseen``, ``suite``, ``suite_no_nc``, ``dev_unseen``),
    from local files or the hub.

    Args:
        train_tasks / val_tasks / test_tasks / predict_tasks: task names, presets (``seen`` =
            arc_challenge, arc_easy, openbookqa, boolq, siqa; ``unseen`` = hellaswag, winogrande, piqa;
            ``suite`` = every trainable task and family of the many-task suite, ``suite_no_nc`` the same
            without non-commercial data, ``dev_unseen`` = the suite's held-out tasks; ``loragen tasks``
            lists them), or ``name:split`` to pick a split for one entry.
        data_dir: folder holding the task files in the layout of ``docs/data.md`` (e.g.
            ``llm-adapters/ARC-Easy/test.json``, ``siqa/train.jsonl``). None: load from the hub.
        files: per-task, per-split overrides, ``{task: {split: path or "hub"}}``; relative paths are
            resolved against ``data_dir`` when it is set.
        shots: few-shot examples in each task's system prompt (drawn from its train split).
        shot_draws: distinct few-shot draws per task that training records are spread over (1 = every
            record reads the task's one fixed prompt; more = the router learns from varied prompts of
            a task, not from one point per task). Evaluation always reads the fixed prompt (draw 0).
        holdout: carve a dev split named ``holdout`` of this many seeded items from each task's train
            split (train keeps the rest), e.g. ``test_tasks: [piqa:holdout, winogrande:holdout]`` to
            select recipes without touching the tasks' evaluation sets. 0 = no carving.
        holdout_skip: draw the ``holdout`` split from the train items outside the ``holdout_skip`` items
            that ``holdout: <holdout_skip>`` carves (same seed and files; train excludes both): a second,
            untouched split to report on after model selection on the first. 0 = no skipping.
        train_split / val_split / test_split: the split each stage uses when an entry names none
            (LLM-Adapters files have no validation split: use ``val_split: test`` with them).
        extra_tasks: user task definitions (see ``loragen.data.tasks.registry``): declarative
            mappings or ``{class_path: ..., init_args: ...}``.
        train_limit_per_task: the per-task cap of the training mixture: a task contributes at most this
            many records (a seeded subset) before the temperature is applied.
        mixing_temperature: T of the training mixture (as T5 / FLAN mix tasks): task i gets a share of the
            mixture proportional to min(n_i, cap)^(1/T), the mixture's size staying sum(min(n_i, cap)); T = 1
            is proportional to the capped sizes (a task's records, subset to the cap), larger T flattens
            the mix toward equal shares (small tasks repeat their records, large ones are subsampled), and
            no task exceeds the cap.
        train_descriptions: how many of a task's descriptions training records draw from (seeded per
            record): 1 = the task's one description; n = its description and the first n-1 paraphrases;
            null = all of them. The held-out paraphrase is never drawn.
        eval_description: ``canonical`` (evaluation prompts read each task's description) or ``heldout``
            (its held-out paraphrase, which no training record reads: does a generator follow the meaning
            or memorised strings?).
        unseen: datasets never trained on (e.g. the project's unseen tasks and the suite's held-out ones): a
            train task of one of them, a family included, is refused before any model loads.
        seed: data order and the few-shot draw.
        The remaining arguments are ``RecordDataModule``'s (tokenizer sources, batch sizes, limits).
    """

    def __init__(
        self,
        train_tasks: list[str] | str | None = None,
        val_tasks: list[str] | str | None = None,
        test_tasks: list[str] | str | None = None,
        predict_tasks: list[str] | str | None = None,
        data_dir: str | None = None,
        files: dict[str, dict[str, str]] | None = None,
        shots: int = 3,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        extra_tasks: list[dict[str, Any]] | None = None,
        train_limit_per_task: int | None = None,
        shot_draws: int = 1,
        holdout: int = 0,
        holdout_skip: int = 0,
        mixing_temperature: float = 1.0,
        train_descriptions: int | None = 1,
        eval_description: EvalDescription = "canonical",
        unseen: list[str] | None = None,
        # RecordDataModule.__init__'s arguments (datamodule.py), passed on: spelled out so that the CLI and
        # save_hyperparameters see each one
        cloud: str = "bundled:smollm2-135m-instruct",
        edge: str = "bundled:smollm2-135m-instruct",
        batch_size: int = 8,
        eval_batch_size: int = 8,
        max_system_tokens: int = 1024,
        max_input_tokens: int = 256,
        max_output_tokens: int = 64,
        limit_per_task: int | None = None,
        val_limit_per_task: int | None = None,
        reference: bool = True,
        scoring: Scoring = "loglik",
        strict: bool = False,
        length_grouped: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            cloud=cloud,
            edge=edge,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            max_system_tokens=max_system_tokens,
            max_input_tokens=max_input_tokens,
            max_output_tokens=max_output_tokens,
            limit_per_task=limit_per_task,
            val_limit_per_task=val_limit_per_task,
            reference=reference,
            scoring=scoring,
            strict=strict,
            length_grouped=length_grouped,
            num_workers=num_workers,
            seed=seed,
        )
        # only this class's arguments (no *_files), so ``TaskDataModule(**hparams)`` rebuilds it
        self.save_hyperparameters(ignore=["train_files", "val_files", "test_files", "predict_files"])
        self.extra_specs = _extra_specs(extra_tasks)
        self.stage_tasks = _stage_pairs(dict(self.hparams))
        self.loader = TaskLoader(
            data_dir,
            plain_config(files),
            shots=shots,
            seed=seed,
            strict=strict,
            tasks=self.extra_specs,
            formulation=formulation_for(scoring),
            holdout=holdout,
            shot_draws=shot_draws,
            holdout_skip=holdout_skip,
            train_descriptions=train_descriptions,
            eval_description=eval_description,
        )

    @staticmethod
    def check_config(stages: tuple[str, ...] | None = None, **kw: Any) -> None:
        """Unknown tasks, splits and missing files fail here, before any model or tokenizer is loaded; files
        only of ``stages`` (None: all), e.g. a test reads no train file but its test tasks' shot files."""
        check_sizes(kw)
        for key in ("shots", "train_limit_per_task", "limit_per_task", "val_limit_per_task", "holdout", "holdout_skip"):
            if kw.get(key) is not None and kw[key] < 0:
                raise LoRAGenError(f"data.{key} must be >= 0, got {kw[key]}")
        check_temperature(kw.get("mixing_temperature", 1.0))
        extra = _extra_specs(kw.get("extra_tasks"))
        pairs = _stage_pairs(kw)
        if not any(pairs.values()):
            raise LoRAGenError("no tasks given: set data.init_args.train_tasks (and val/test tasks), e.g. [seen]")
        for stage_pairs in pairs.values():
            for task, _ in stage_pairs:
                get_task(task, extra)  # unknown names list the known tasks
        check_unseen(pairs["train"], plain_config(kw.get("unseen")), extra)
        loader = TaskLoader(
            kw.get("data_dir"),
            plain_config(kw.get("files")),
            shots=kw.get("shots", 3) or 0,
            tasks=extra,
            holdout=kw.get("holdout") or 0,
            shot_draws=kw.get("shot_draws", 1),
            holdout_skip=kw.get("holdout_skip") or 0,
            train_descriptions=kw.get("train_descriptions", 1),
            eval_description=kw.get("eval_description", "canonical"),
        )
        read = (p for stage, stage_pairs in pairs.items() if stages is None or stage in stages for p in stage_pairs)
        for task, split in dict.fromkeys(read):
            loader.check(task, split)
            loader.shot_split(task)  # a task with shots needs a split to draw them from (reads nothing)

    def has_stage(self, stage: str) -> bool:
        return bool(self.stage_tasks[stage])

    def read_records(self, stage: str) -> list[Record]:
        by_task = {
            task: self.loader.records(task, split, vary_shots=stage == "train")
            for task, split in self.stage_tasks[stage]
        }
        if stage == "train":
            return mix(by_task, self.hparams.train_limit_per_task, self.hparams.mixing_temperature, self.hparams.seed)
        return [r for task_records in by_task.values() for r in task_records]

    def system_prompt(self, task: str) -> str:
        """The system prompt the cloud reads for ``task`` (description + few-shot examples)."""
        return self.loader.system_prompt(task)

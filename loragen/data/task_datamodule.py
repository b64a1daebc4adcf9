"""``TaskDataModule``: the paper's benchmarks by task name, on top of ``RecordDataModule``.

Records come from the task registry (``loragen.data.tasks``): each task's system prompt is its
description plus ``shots`` few-shot examples drawn deterministically from its train split; the
user input is the question in lm-evaluation-harness's cloze formulation of the task for option
scoring (``scoring: loglik``), or with the options listed for ``scoring: generate``; multiple-choice
records carry the option texts and the label. Batching,
tokenization, limits and per-task evaluation grouping are ``RecordDataModule``'s.
"""

from __future__ import annotations

import random
from typing import Any

from loragen import LoRAGenError
from loragen.data.datamodule import RecordDataModule, check_sizes
from loragen.data.records import Record
from loragen.data.tasks import TaskLoader, TaskSpec, expand_tasks, get_task, task_from_config
from loragen.data.tasks.base import formulation_for
from loragen.data.tasks.registry import plain_config

STAGES = ("train", "val", "test", "predict")


def _stage_pairs(kw: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    splits = {"train": kw.get("train_split") or "train", "val": kw.get("val_split") or "val",
              "test": kw.get("test_split") or "test", "predict": kw.get("test_split") or "test"}
    return {stage: expand_tasks(plain_config(kw.get(f"{stage}_tasks")), splits[stage]) for stage in STAGES}


def _extra_specs(extra_tasks: Any) -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    for entry in plain_config(extra_tasks) or []:
        spec = task_from_config(entry)
        specs[spec.name] = spec
    return specs


class TaskDataModule(RecordDataModule):
    """Benchmark tasks by name (presets ``seen`` and ``unseen``), from local files or the hub.

    Args:
        train_tasks / val_tasks / test_tasks / predict_tasks: task names, presets (``seen`` =
            arc_challenge, arc_easy, openbookqa, boolq, siqa; ``unseen`` = hellaswag, winogrande, piqa),
            or ``name:split`` to pick a split for one entry.
        data_dir: folder holding the task files in the layout of ``../shared/data`` (e.g.
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
        train_limit_per_task: keep a seeded random subset of at most this many training records per task.
        seed: data order and the few-shot draw.
        The remaining arguments are ``RecordDataModule``'s (tokenizer sources, batch sizes, limits).
    """

    def __init__(self, train_tasks: list[str] | str | None = None, val_tasks: list[str] | str | None = None,
                 test_tasks: list[str] | str | None = None, predict_tasks: list[str] | str | None = None,
                 data_dir: str | None = None, files: dict[str, dict[str, str]] | None = None, shots: int = 3,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 extra_tasks: list[dict[str, Any]] | None = None, train_limit_per_task: int | None = None,
                 shot_draws: int = 1, holdout: int = 0, holdout_skip: int = 0,
                 cloud: str = "bundled:smollm2-135m-instruct", edge: str = "bundled:smollm2-135m-instruct",
                 batch_size: int = 8, eval_batch_size: int = 8, max_system_tokens: int = 1024,
                 max_input_tokens: int = 256, max_output_tokens: int = 64, limit_per_task: int | None = None,
                 val_limit_per_task: int | None = None, reference: bool = True, scoring: str = "loglik",
                 strict: bool = False, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(cloud=cloud, edge=edge, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         max_system_tokens=max_system_tokens, max_input_tokens=max_input_tokens,
                         max_output_tokens=max_output_tokens, limit_per_task=limit_per_task,
                         val_limit_per_task=val_limit_per_task, reference=reference, scoring=scoring,
                         strict=strict, num_workers=num_workers, seed=seed)
        # only this class's arguments (no *_files), so ``TaskDataModule(**hparams)`` rebuilds it
        self.save_hyperparameters(ignore=["train_files", "val_files", "test_files", "predict_files"])
        self.extra_specs = _extra_specs(extra_tasks)
        self.stage_tasks = _stage_pairs(dict(self.hparams))
        self.loader = TaskLoader(data_dir, plain_config(files), shots=shots, seed=seed, strict=strict,
                                 tasks=self.extra_specs, formulation=formulation_for(scoring), holdout=holdout,
                                 shot_draws=shot_draws, holdout_skip=holdout_skip)

    @staticmethod
    def check_config(**kw: Any) -> None:
        """Unknown tasks, splits and missing files fail here, before any model or tokenizer is loaded."""
        check_sizes(kw)
        for key in ("shots", "train_limit_per_task", "limit_per_task", "val_limit_per_task", "holdout",
                    "holdout_skip"):
            if kw.get(key) is not None and kw[key] < 0:
                raise LoRAGenError(f"data.{key} must be >= 0, got {kw[key]}")
        extra = _extra_specs(kw.get("extra_tasks"))
        pairs = _stage_pairs(kw)
        if not any(pairs.values()):
            raise LoRAGenError("no tasks given: set data.init_args.train_tasks (and val/test tasks), e.g. [seen]")
        for stage_pairs in pairs.values():
            for task, _ in stage_pairs:
                get_task(task, extra)  # unknown names list the known tasks
        loader = TaskLoader(kw.get("data_dir"), plain_config(kw.get("files")), shots=kw.get("shots", 3) or 0,
                            tasks=extra, holdout=kw.get("holdout") or 0, shot_draws=kw.get("shot_draws", 1),
                            holdout_skip=kw.get("holdout_skip") or 0)
        for task, split in dict.fromkeys(p for stage_pairs in pairs.values() for p in stage_pairs):
            loader.check(task, split)
            loader.shot_split(task)  # a task with shots needs a split to draw them from (reads nothing)

    def has_stage(self, stage: str) -> bool:
        return bool(self.stage_tasks[stage])

    def read_records(self, stage: str) -> list[Record]:
        records: list[Record] = []
        limit = self.hparams.train_limit_per_task if stage == "train" else None
        for task, split in self.stage_tasks[stage]:
            task_records = self.loader.records(task, split, vary_shots=stage == "train")
            if limit is not None and len(task_records) > limit:
                rng = random.Random(f"loragen-train-subset|{task}|{self.hparams.seed}")
                keep = sorted(rng.sample(range(len(task_records)), limit))
                task_records = [task_records[i] for i in keep]
            records.extend(task_records)
        return records

    def system_prompt(self, task: str) -> str:
        """The system prompt the cloud reads for ``task`` (description + few-shot examples)."""
        return self.loader.system_prompt(task)

"""The many-task suite: every dataset's native task and its families, their descriptions, the presets,
the licences a training set carries, and the suite's table (``loragen tasks``).

Presets (``train_tasks: [suite]``, ``test_tasks: [dev_unseen]``):

- ``suite``: every task with local training data, native and families, except the datasets that are
  never trained on: the project's unseen tasks (PIQA, WinoGrande, HellaSwag) and the suite datasets held
  out as unseen (``DEV_UNSEEN_DATASETS``, chosen before any training);
- ``suite_no_nc``: ``suite`` without the non-commercial data (DREAM, WiC, AG News, Alpaca);
- ``dev_unseen``: PIQA and WinoGrande items carved from their *train* files (``:holdout``, so
  ``data.holdout > 0``), PIQA's families on the same items, and every task of the held-out suite datasets.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from loragen.data.tasks.base import TaskSpec
from loragen.data.tasks.descriptions import paraphrases
from loragen.data.tasks.families import class_names, families_of, family_task, kind_of

NEVER_TRAIN = ("piqa", "winogrande", "hellaswag")  # evaluation only, in any form (no family, no mix)
DEV_UNSEEN_DATASETS = ("commonsenseqa", "mc_taco", "mrpc")  # held out of the suite before any training
NO_LOCAL_DATA = ("gpt4tools", "hellaswag")  # their files are not among the offline benchmark files


def answers_of(spec: TaskSpec) -> tuple[str, ...]:
    """The answer word of each class of a native label task, in the cloze formulation's class order."""
    from loragen.data.tasks.boolq import CLOZE_OPTIONS

    return tuple(getattr(spec, "words", ()) or CLOZE_OPTIONS)


def build_families(natives: Iterable[TaskSpec]) -> list[TaskSpec]:
    """Attach the grammar's paraphrases to each native task and build its families (see ``families``)."""
    built: list[TaskSpec] = []
    for spec in natives:
        kind = kind_of(spec)
        words = answers_of(spec) if kind == "label" else ()
        native = paraphrases(spec.dataset, kind, "native", words)
        if native is not None:
            spec.paraphrases, spec.heldout_description = native.train, native.heldout
        for family in families_of(kind):
            found = paraphrases(spec.dataset, kind, family, class_names(spec, words, family) if words else ())
            if found is None:
                continue
            task = family_task(spec, family, found.train[0])
            task.paraphrases, task.heldout_description = found.train[1:], found.heldout
            built.append(task)
    return built


def suite_presets(registry: dict[str, TaskSpec]) -> dict[str, tuple[str, ...]]:
    trainable = [
        name
        for name, spec in registry.items()
        if spec.dataset not in NEVER_TRAIN + DEV_UNSEEN_DATASETS
        and spec.dataset not in NO_LOCAL_DATA
        and spec.files.get("train")
    ]
    unseen = [f"{name}:holdout" for name, spec in registry.items() if spec.dataset in ("piqa", "winogrande")]
    unseen += [name for name, spec in registry.items() if spec.dataset in DEV_UNSEEN_DATASETS]
    return {
        "suite": tuple(trainable),
        "suite_no_nc": tuple(n for n in trainable if not registry[n].non_commercial),
        "dev_unseen": tuple(unseen),
    }


def licences(tasks: Iterable[str], registry: dict[str, TaskSpec]) -> list[dict[str, Any]]:
    """One entry per dataset of ``tasks``: its licence, whether it is non-commercial, and its tasks."""
    by_dataset: dict[str, dict[str, Any]] = {}
    for name in tasks:
        spec = registry[name]
        entry = by_dataset.setdefault(
            spec.dataset,
            {"dataset": spec.dataset, "licence": spec.license, "non_commercial": spec.non_commercial, "tasks": []},
        )
        entry["tasks"].append(name)
    return list(by_dataset.values())


# ------------------------------------------------------------------------------------------ the table

COLUMNS = ("task", "family", "dataset", "train", "val", "test", "descriptions", "grading", "licence")


def table_rows(names: Iterable[str], registry: dict[str, TaskSpec], loader: Any = None) -> list[dict[str, Any]]:
    """The suite's table: one row per task; item counts per split when a ``TaskLoader`` is given (a split
    the task has no local file for is empty)."""
    rows = []
    for name in names:
        spec = registry[name]
        row: dict[str, Any] = {"task": name, "family": spec.family, "dataset": spec.dataset}
        for split in ("train", "val", "test"):
            row[split] = ""
            if loader is not None and split in spec.splits and loader.available(name, split):
                row[split] = len(loader.parsed(name, split))
        pool = {spec.description, *spec.paraphrases} - {spec.heldout_description}
        row["descriptions"] = f"{len(pool)} + 1 held out" if spec.heldout_description else str(len(pool))
        if not spec.description and not spec.paraphrases:
            row["descriptions"] = "per item (its instruction)"
        row["grading"] = spec.grading()
        row["licence"] = spec.license.removeprefix("License: ").removeprefix("License ")
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [str(row[c]).replace("|", "/").replace("\n", " ") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]], registry: dict[str, TaskSpec]) -> str:
    """The totals of a table: datasets, tasks, families, descriptions, items (train + test of each dataset's
    native task; val is test or a carve shared with it)."""
    datasets = {row["dataset"] for row in rows}
    families = {row["family"] for row in rows} - {"native"}
    descriptions = sum(
        len({registry[r["task"]].description, *registry[r["task"]].paraphrases} - {""})
        + bool(registry[r["task"]].heldout_description)
        for r in rows
    )
    items = sum(int(r["train"] or 0) + int(r["test"] or 0) for r in rows if r["family"] == "native")
    counted = "" if not any(r["train"] != "" for r in rows) else f", {items:,} items (train + test of each dataset)"
    return (
        f"{len(rows)} tasks over {len(datasets)} datasets, {len(families)} families besides the native "
        f"formulations ({', '.join(sorted(families))}), {descriptions:,} descriptions{counted}."
    )

"""The task registry: one ``TaskSpec`` per task name, presets, and user tasks from configs.

Users add tasks in three ways:

- in Python: ``register_task(MyTask(name="mytask", ...))`` (a ``TaskSpec`` subclass with ``parse_row``);
- from a config, by class path: ``data.init_args.extra_tasks: [{class_path: mypkg.MyTask, init_args: {...}}]``
  (a ``TaskSpec`` subclass, a function returning one, or a module-level ``TaskSpec`` object);
- from a config, declaratively: ``{name: mytask, format: choice, description: ..., files: {train: ..., test: ...},
  question_field: q, options_field: choices, label_field: answer}`` (formats in ``generic.py``), or a variant of a
  built-in task: ``{name: arc_easy_big, like: arc_easy, files: {...}}``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from loragen import LoRAGenError
from loragen.data.tasks.base import HubSource, TaskSpec

REGISTRY: dict[str, TaskSpec] = {}
PRESETS: dict[str, tuple[str, ...]] = {
    "seen": ("arc_challenge", "arc_easy", "openbookqa", "boolq", "siqa"),
    "unseen": ("hellaswag", "winogrande", "piqa"),
}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add ``spec`` to the registry (``replace=True`` to redefine a name)."""
    if not isinstance(spec, TaskSpec):
        raise LoRAGenError(f"register_task needs a TaskSpec, got {type(spec).__name__}")
    if not spec.name or ":" in spec.name or spec.name in PRESETS:
        raise LoRAGenError(f"invalid task name {spec.name!r} (empty, has ':', or is a preset name)")
    if spec.name in REGISTRY and not replace and REGISTRY[spec.name] is not spec:
        raise LoRAGenError(f"task {spec.name!r} is already registered; pass replace=True to redefine it")
    REGISTRY[spec.name] = spec
    return spec


def known_tasks(extra: Mapping[str, TaskSpec] | None = None) -> list[str]:
    return sorted({*REGISTRY, *(extra or {})})


def dataset_of(task: str) -> str:
    """The dataset a task (``name``, ``name:split``) reads: the registry's, else the name's stem (a task outside the
    registry, e.g. a record file's name)."""
    name = task.split(":")[0]
    return REGISTRY[name].dataset if name in REGISTRY else name.split(".")[0]


def get_task(name: str, extra: Mapping[str, TaskSpec] | None = None) -> TaskSpec:
    """The spec of ``name`` (``extra`` first); an unknown name suggests the closest ones and lists the
    datasets and presets (``loragen tasks`` lists every task)."""
    if extra and name in extra:
        return extra[name]
    if name in REGISTRY:
        return REGISTRY[name]
    import difflib

    close = difflib.get_close_matches(name, known_tasks(extra), n=3)
    natives = [t for t in known_tasks(extra) if "." not in t]
    raise LoRAGenError(
        f"unknown task {name!r}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + f": known tasks are {', '.join(natives)}, and their families DATASET.FAMILY "
        f"(`loragen tasks` lists all); presets: {', '.join(PRESETS)}; "
        "add your own with data.init_args.extra_tasks"
    )


def expand_tasks(entries: str | Iterable[str] | None, default_split: str) -> list[tuple[str, str]]:
    """Task list entries -> ``(task, split)`` pairs: presets expand, ``name:split`` picks a split (a preset's
    members that name their own split, like ``piqa:holdout`` in ``dev_unseen``, keep it)."""
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise LoRAGenError(f"task list entries must be task names, got {entry!r}")
        name, _, split = entry.strip().partition(":")
        split = split or default_split
        for member in PRESETS.get(name, (name,)):
            task, _, own = member.partition(":")
            pair = (task, own or split)
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def plain_config(value: Any) -> Any:
    """jsonargparse may hand nested config sections over as Namespaces."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_config(v) for v in value]
    return value


def _import(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise LoRAGenError(f"class_path {path!r} must be a dotted path like mypackage.tasks.MyTask")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise LoRAGenError(f"cannot import {path!r} for a user task: {err}") from err


def task_from_config(config: Mapping[str, Any] | TaskSpec) -> TaskSpec:
    """A ``TaskSpec`` from one ``extra_tasks`` entry (see the module docstring)."""
    from loragen.data.tasks.generic import FORMATS

    if isinstance(config, TaskSpec):
        return config
    config = plain_config(config)
    if not isinstance(config, Mapping):
        raise LoRAGenError(f"an extra_tasks entry must be a mapping, got {type(config).__name__}")
    config = dict(config)
    if "class_path" in config:
        target = _import(config["class_path"])
        init_args = dict(config.get("init_args") or {})
        if isinstance(init_args.get("hub"), Mapping):
            init_args["hub"] = HubSource(**init_args["hub"])
        try:
            if isinstance(target, TaskSpec):  # a module-level spec object, optionally with overrides
                spec = dataclasses.replace(target, **init_args) if init_args else target
            else:  # a TaskSpec subclass or a factory function
                spec = target(**init_args)
        except TypeError as err:
            raise LoRAGenError(f"{config['class_path']}: bad init_args for a user task: {err}") from err
        if not isinstance(spec, TaskSpec):
            raise LoRAGenError(f"{config['class_path']} did not give a TaskSpec (got {type(spec).__name__})")
        return spec
    if "name" not in config:
        raise LoRAGenError(f"an extra_tasks entry needs a 'name' (or a 'class_path'): {config}")
    if isinstance(config.get("hub"), Mapping):
        config["hub"] = HubSource(**config["hub"])
    if "shot_splits" in config and config["shot_splits"] is not None:
        config["shot_splits"] = tuple(config["shot_splits"])
    like = config.pop("like", None)
    fmt = config.pop("format", None)
    try:
        if like is not None:  # a variant of a known task; its files are merged split by split
            base = get_task(like)
            if "files" in config:
                config["files"] = {**base.files, **dict(config["files"] or {})}
            return dataclasses.replace(base, **config)
        if fmt not in FORMATS:
            raise LoRAGenError(
                f"extra task {config['name']!r}: 'format' must be one of {sorted(FORMATS)} "
                "(or give 'like: TASK' or a 'class_path')"
            )
        return FORMATS[fmt](**config)
    except TypeError as err:
        raise LoRAGenError(f"extra task {config['name']!r}: {err}") from err

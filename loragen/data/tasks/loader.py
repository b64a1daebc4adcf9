"""``TaskLoader``: (task, split) -> ``Record``s, from local files or the hub, with the task's
few-shot system prompt.

Sources, in order: ``files[task][split]`` (a path, relative to ``data_dir`` when one is set, or
``"hub"``), then ``data_dir / spec.files[split]`` when ``data_dir`` is set (local only: a missing file
is an error, the hub is never tried), then the hub when ``data_dir`` is None.

Few-shot examples are drawn once per task, deterministically from ``(seed, task)``, from the first
of the task's ``shot_splits`` that is available, and every item equal to one of them (same user
input) is removed from every split built -- so an example is never also an evaluated item, and a
training item never sees its own answer in its system prompt.

``holdout > 0`` carves a *dev* split from each task's train split: the split ``holdout`` is a seeded
random subset of that many train items, and ``train`` (training records and the few-shot pool alike)
is the rest — model selection on tasks whose labelled evaluation sets must stay untouched.
``holdout_skip > 0`` draws that split from the train items *outside* the ``holdout_skip`` items a
``holdout: <holdout_skip>`` loader carves (same seed and file), and train excludes both: a second,
untouched split for the final report after model selection on the first.

``shot_draws > 1`` gives training records varied system prompts: draw 0 is the task's fixed prompt
(the one every evaluation reads); draws 1.. are further seeded few-shot samples, and training record
``i`` reads draw ``i mod shot_draws`` (the next draw when its own item is one of that draw's shots).

``train_descriptions > 1`` (or None: all) lets each training record draw its task description from the
task's description and its paraphrases (``TaskSpec.paraphrases``), seeded per record; evaluation reads
the task's description, or with ``eval_description="heldout"`` its held-out paraphrase, which no
training record ever reads.

A dataset with a single labelled file (``TaskSpec.carve``) has ``val`` / ``test`` splits carved from it
(seeded by the dataset's name, so all its tasks share the carve) and ``train`` is the rest. Every parsed
item carries ``meta["item_sha"]``, a hash of its content (question or input, options), the same in every
task of its dataset: the suite's leak checks compare these.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from loragen import LoRAGenError
from loragen.data.records import Record, RecordError
from loragen.data.tasks.base import FORMULATIONS, Item, Malformed, TaskSpec
from loragen.data.tasks.io import hub_rows, labels_file, read_labels
from loragen.data.tasks.registry import get_task

HUB = "hub"
HOLDOUT = "holdout"  # the dev split carved from train when ``holdout > 0``
CARVED = ("val", "test")  # the splits a single-file dataset carves from its file (``TaskSpec.carve``)
EvalDescription = Literal["canonical", "heldout"]  # data.eval_description
EVAL_DESCRIPTIONS: tuple[str, ...] = get_args(EvalDescription)


def item_sha(item: Item) -> str:
    """A hash of an item's content (whitespace-normalised question or input, and options): equal for the
    same item in every task of its dataset, and for the same text in another dataset."""
    parts = [item.plain or item.question or item.input, *(item.options or ()), *(item.contexts or ())]
    if not item.options:
        parts.append(item.output)
    text = "\x1f".join(" ".join(str(p).split()) for p in parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class TaskLoader:
    def __init__(
        self,
        data_dir: str | Path | None = None,
        files: Mapping[str, Mapping[str, str]] | None = None,
        shots: int = 3,
        seed: int = 0,
        strict: bool = False,
        tasks: Mapping[str, TaskSpec] | None = None,
        formulation: str = "cloze",
        holdout: int = 0,
        shot_draws: int = 1,
        holdout_skip: int = 0,
        train_descriptions: int | None = 1,
        eval_description: str = "canonical",
    ) -> None:
        if shots < 0:
            raise LoRAGenError(f"data.shots must be >= 0, got {shots}")
        if holdout < 0:
            raise LoRAGenError(f"data.holdout must be >= 0, got {holdout}")
        if shot_draws < 1:
            raise LoRAGenError(f"data.shot_draws must be >= 1 (1 = the task's one fixed prompt), got {shot_draws}")
        if holdout_skip < 0 or (holdout_skip and not holdout):
            raise LoRAGenError(
                f"data.holdout_skip must be >= 0 and needs data.holdout > 0, got holdout_skip="
                f"{holdout_skip} with holdout={holdout}"
            )
        if train_descriptions is not None and train_descriptions < 1:
            raise LoRAGenError(
                f"data.train_descriptions must be >= 1 (1 = each task's one description) or null "
                f"(all its paraphrases), got {train_descriptions}"
            )
        if eval_description not in EVAL_DESCRIPTIONS:
            raise LoRAGenError(
                f"data.eval_description={eval_description!r} is unknown: choose one of {', '.join(EVAL_DESCRIPTIONS)}"
            )
        self.train_descriptions, self.eval_description = train_descriptions, eval_description
        self.holdout, self.holdout_skip, self.shot_draws = holdout, holdout_skip, shot_draws
        if formulation not in FORMULATIONS:
            raise LoRAGenError(f"unknown formulation {formulation!r}: choose one of {', '.join(FORMULATIONS)}")
        self.formulation = formulation
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.files = {task: dict(splits or {}) for task, splits in (files or {}).items()}
        self.shots, self.seed, self.strict = shots, seed, strict
        self.extra = dict(tasks or {})
        self._items: dict[tuple[str, str], list[tuple[str, Item]]] = {}
        self._files: dict[tuple[str, str], list[tuple[str, Item]]] = {}  # (dataset, source) -> parsed items
        self._shots: dict[str, tuple[str | None, list[Item]]] = {}
        self._draws: dict[str, list[list[Item]]] = {}

    def spec(self, task: str) -> TaskSpec:
        return get_task(task, self.extra)

    # ------------------------------------------------------------------ sources

    def source(self, task: str, split: str) -> Path | str:
        """Where (task, split) comes from: a file path or ``"hub"``; errors name the fix."""
        if split == HOLDOUT:
            if not self.holdout:
                raise LoRAGenError(
                    f"task {task!r}: the {HOLDOUT!r} split is carved from train only when "
                    "data.init_args.holdout > 0 (items per task, e.g. 200)"
                )
            split = "train"
        spec = self.spec(task)
        split = self.file_split(spec, task, split)
        override = self.files.get(task, {}).get(split)
        hub_ok = spec.hub is not None and split in spec.hub.splits
        if override == HUB:
            if not hub_ok:
                raise LoRAGenError(f"task {task!r} has no hub source for split {split!r}")
            return HUB
        if override:
            path = Path(override).expanduser()
            return self.data_dir / path if self.data_dir is not None and not path.is_absolute() else path
        if self.data_dir is not None:
            if split not in spec.files:
                raise LoRAGenError(
                    f"task {task!r} has no local {split!r} split (local: {', '.join(spec.files) or 'none'}; "
                    f"hub: {', '.join(spec.hub.splits) if spec.hub else 'none'}): pick another split "
                    f"(e.g. '{task}:{next(iter(spec.files), 'test')}' or data.init_args.val_split) or give "
                    f"data.init_args.files.{task}.{split}"
                )
            return self.data_dir / spec.files[split]
        if hub_ok:
            return HUB
        raise LoRAGenError(
            f"task {task!r}, split {split!r}: no data_dir and no hub source; set "
            f"data.init_args.data_dir (expected layout: {spec.files.get(split, '?')}) or "
            f"data.init_args.files.{task}.{split}"
        )

    def file_split(self, spec: TaskSpec, task: str, split: str) -> str:
        """The split whose file holds ``split``: ``train`` for the splits a single-file dataset carves."""
        overrides = self.files.get(task, {})
        local = overrides.get("train", "") != HUB and (self.data_dir is not None or bool(overrides.get("train")))
        carved = spec.carve and local and split in CARVED and split not in spec.files and split not in overrides
        return "train" if carved else split

    def check(self, task: str, split: str) -> None:
        """Fail now if (task, split) has no usable source (missing file, unknown split)."""
        where = self.source(task, split)
        if where != HUB and not Path(where).is_file():
            spec = self.spec(task)
            split = self.file_split(spec, task, "train" if split == HOLDOUT else split)
            hint = (
                f"data_dir should hold {spec.files[split]}"
                if split in spec.files and task not in self.files
                else "check data.init_args.files"
            )
            raise LoRAGenError(f"data file {where} for task {task!r} ({split}) does not exist: {hint}")

    def available(self, task: str, split: str) -> bool:
        try:
            self.check(task, split)
        except LoRAGenError:
            return False
        return True

    # ------------------------------------------------------------------ items

    def items(self, task: str, split: str) -> list[tuple[str, Item]]:
        """Items of (task, split) in this loader's formulation, with their ``file:line``."""
        spec = self.spec(task)
        return [(loc, spec.formulate(item, self.formulation)) for loc, item in self.parsed(task, split)]

    def parsed(self, task: str, split: str) -> list[tuple[str, Item]]:
        """Parsed items of (task, split) with their ``file:line``; with ``holdout`` the ``holdout`` split
        is carved from train and train is the rest."""
        if not self.holdout or split not in ("train", HOLDOUT):
            return self._read(task, split)
        if (task, HOLDOUT) not in self._items:
            train = self._read(task, "train")
            if len(train) < self.holdout_skip + self.holdout + max(self.shots, 1):
                after = f" after the {self.holdout_skip} skipped" if self.holdout_skip else ""
                raise LoRAGenError(
                    f"task {task!r}: its train split has {len(train)} items, too few to hold out "
                    f"{self.holdout}{after} and keep {max(self.shots, 1)}: lower data.init_args.holdout "
                    f"or point data.init_args.files.{task}.train at a larger file"
                )
            seed = f"loragen-holdout|{self.spec(task).dataset}|{self.seed}"  # every task of a dataset: one carve
            # the skipped items are exactly those a ``holdout: <holdout_skip>`` loader carves
            skipped = set(random.Random(seed).sample(range(len(train)), self.holdout_skip))
            rest = [i for i in range(len(train)) if i not in skipped]
            rng = random.Random(f"{seed}|after {len(skipped)}" if skipped else seed)  # no skip: the original carve
            chosen = set(rng.sample(rest, self.holdout))
            self._items[(task, HOLDOUT)] = [pair for i, pair in enumerate(train) if i in chosen]
            self._items[(task, "train-kept")] = [
                pair for i, pair in enumerate(train) if i not in chosen and i not in skipped
            ]
        return self._items[(task, HOLDOUT if split == HOLDOUT else "train-kept")]

    def _read(self, task: str, split: str) -> list[tuple[str, Item]]:
        """Parsed items of a split with their ``file:line``; malformed rows are reported and skipped. A
        carving dataset's ``val`` / ``test`` are its carve and its ``train`` the rest (see the module docstring)."""
        key = (task, split)
        if key not in self._items:
            spec = self.spec(task)
            if spec.carve and self.file_split(spec, task, split) == "train" and "train" in spec.files:
                whole = self._read_file(task, "train")
                if len(whole) <= spec.carve:
                    raise LoRAGenError(
                        f"task {task!r}: its file has {len(whole)} items, too few to carve {spec.carve} for val/test"
                    )
                chosen = set(random.Random(f"loragen-carve|{spec.dataset}").sample(range(len(whole)), spec.carve))
                self._items[(task, "carve")] = [pair for i, pair in enumerate(whole) if i in chosen]
                self._items[(task, "carve-rest")] = [pair for i, pair in enumerate(whole) if i not in chosen]
                self._items[key] = self._items[(task, "carve" if split in CARVED else "carve-rest")]
            else:
                self._items[key] = self._read_file(task, split)
        return self._items[key]

    def _read_file(self, task: str, split: str) -> list[tuple[str, Item]]:
        """Parsed items of the file (or hub split) of ``split``, shared by every task of the dataset."""
        self.check(task, split)
        spec, where = self.spec(task), self.source(task, split)
        cache_key = (spec.dataset, f"{where}|{split}" if where == HUB else str(where))
        if cache_key not in self._files:
            if where == HUB:
                hub = spec.hub
                assert hub is not None  # ``source`` answers HUB only for a task with a hub source
                rows, labels, parse = hub_rows(hub, split), None, lambda row, _: spec.parse_hub_row(row)
                name = f"{hub.path} ({hub.splits[split]})"
            else:
                path = Path(where)
                rows, parse, name = spec.read(path), spec.parse_row, str(path)
                label_path = labels_file(path)
                labels = read_labels(label_path, len(rows)) if label_path else None
            items, problems = [], []
            for i, (loc, row) in enumerate(rows):
                label = labels[i][1] if labels else None
                try:
                    if isinstance(row, Malformed):
                        raise row
                    if isinstance(label, Malformed):
                        raise label
                    item = parse(row, label)
                    item.meta.setdefault("item_sha", item_sha(item))
                    items.append((loc, item))
                except (Malformed, KeyError, TypeError, ValueError, AttributeError) as err:
                    problems.append(f"{loc}: {err}")
                    if self.strict:
                        raise RecordError(
                            f"{loc}: {err} (task {task}, {split}; fix the record or drop data.strict)"
                        ) from err
            if problems:
                shown = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
                warnings.warn(
                    f"skipped {len(problems)} malformed record(s) of {len(rows)} in {name} "
                    f"(task {task}, {split}): {shown}",
                    stacklevel=2,
                )
            if not items:
                raise LoRAGenError(f"{name} has no usable records for task {task!r} ({split})")
            self._files[cache_key] = items
        return self._files[cache_key]

    # ------------------------------------------------------------------ few-shot system prompts

    def shot_split(self, task: str) -> str | None:
        spec = self.spec(task)
        if not spec.shot_splits or self.shots == 0:
            return None
        for split in spec.shot_splits:
            if self.available(task, split):
                return split
        raise LoRAGenError(
            f"task {task!r}: no split to draw {self.shots} few-shot examples from (tried "
            f"{', '.join(spec.shot_splits)}); give data.init_args.files.{task}.{spec.shot_splits[0]} "
            "or set data.init_args.shots: 0"
        )

    def shots_of(self, task: str) -> int:
        """Few-shot examples in ``task``'s prompt: ``shots``, at most the task's ``max_shots``."""
        limit = self.spec(task).max_shots
        return self.shots if limit is None else min(self.shots, limit)

    def shot_items(self, task: str) -> list[Item]:
        """The task's few-shot examples (deterministic in ``seed`` and the task name)."""
        if task not in self._shots:
            split = self.shot_split(task)
            shots: list[Item] = []
            if split is not None:
                pool = [item for _, item in self.items(task, split)]
                rng = random.Random(f"loragen-shots|{task}|{self.seed}")
                shots = [pool[i] for i in rng.sample(range(len(pool)), min(self.shots_of(task), len(pool)))]
            self._shots[task] = (split, shots)
        return self._shots[task][1]

    def description(self, task: str) -> str:
        """The description every evaluation prompt of ``task`` reads (``eval_description``)."""
        spec = self.spec(task)
        if self.eval_description == "heldout":
            if not spec.heldout_description:
                raise LoRAGenError(
                    f"task {task!r} has no held-out paraphrase: use data.eval_description: canonical for it"
                )
            return spec.heldout_description
        return spec.description

    def descriptions(self, task: str) -> list[str]:
        """The descriptions training records of ``task`` draw from: its description first, then its
        paraphrases, ``train_descriptions`` of them in all (None: all); never the held-out one."""
        spec = self.spec(task)
        pool = list(dict.fromkeys([spec.description, *spec.paraphrases]))
        pool = [d for d in pool if d != spec.heldout_description]
        return pool if self.train_descriptions is None else pool[: self.train_descriptions]

    def system_prompt(self, task: str) -> str:
        return self.spec(task).system_prompt(self.shot_items(task), self.description(task))

    def shot_draws_of(self, task: str) -> list[list[Item]]:
        """The task's few-shot draws: draw 0 is ``shot_items`` (the evaluation prompt's), then
        ``shot_draws - 1`` further seeded samples from the same pool."""
        if task not in self._draws:
            draws = [self.shot_items(task)]
            split = self._shots[task][0]
            if split is not None and self.shot_draws > 1:
                pool = [item for _, item in self.items(task, split)]
                for d in range(1, self.shot_draws):
                    rng = random.Random(f"loragen-shots|{task}|{self.seed}|draw{d}")
                    draws.append([pool[i] for i in rng.sample(range(len(pool)), min(self.shots_of(task), len(pool)))])
            self._draws[task] = draws
        return self._draws[task]

    def records(self, task: str, split: str, vary_shots: bool = False) -> list[Record]:
        """The records of (task, split); ``vary_shots`` (training) spreads them over the task's few-shot
        draws (see the module docstring), else every record reads the task's fixed prompt."""
        spec = self.spec(task)
        items = self.items(task, split)
        shots = self.shot_items(task)
        taken = {(s.input, s.options) for s in shots}
        kept = [(loc, item) for loc, item in items if (item.input, item.options) not in taken]
        if len(kept) < len(items) and split != self._shots[task][0]:
            warnings.warn(
                f"task {task} ({split}): left out {len(items) - len(kept)} item(s) that equal one of its "
                f"few-shot examples (from {self._shots[task][0]})",
                stacklevel=2,
            )
        if not kept:
            raise LoRAGenError(f"task {task!r} ({split}) has no items left besides its few-shot examples")
        draws = self.shot_draws_of(task) if vary_shots else [shots]
        texts = self.descriptions(task) if vary_shots else [self.description(task)]
        systems: dict[tuple[int, int], str] = {}
        draw_keys = [{(s.input, s.options) for s in draw} for draw in draws]
        records = []
        for i, (loc, item) in enumerate(kept):
            d = i % len(draws)
            for step in range(len(draws)):  # an item never reads its own answer among the shots
                if (item.input, item.options) not in draw_keys[(d + step) % len(draws)]:
                    d = (d + step) % len(draws)
                    break
            t = (
                random.Random(f"loragen-description|{task}|{self.seed}|{i}").randrange(len(texts))
                if len(texts) > 1
                else 0
            )
            if (d, t) not in systems:
                systems[(d, t)] = spec.system_prompt(draws[d], texts[t])
            records.append(spec.to_record(item, systems[(d, t)], split, loc))
        if not vary_shots and spec.heldout_description and self.eval_description == "canonical":
            heldout = spec.system_prompt(shots, spec.heldout_description)  # the paraphrase row's prompt
            for record in records:
                record.meta["heldout_system"] = heldout
        return records

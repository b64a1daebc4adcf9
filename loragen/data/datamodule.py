"""``RecordDataModule``: the generic ``system / input / output`` record format as a LightningDataModule."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from loragen import LoRAGenError
from loragen.contracts import PromptReading
from loragen.data.records import Record, load_records
from loragen.data.tokenize import Collator, Limits, RecordTokenizer
from loragen.models.config import Scoring

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

PACKAGED = Path(__file__).parent


# the data stages each Trainer entry point reads
SUBCOMMAND_STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def resolve_files(spec: str | list[str] | None) -> list[Path]:
    """Resolve file specs; ``quickstart:SPLIT`` names the small multi-task set shipped with loragen."""
    if spec is None:
        return []
    specs = [spec] if isinstance(spec, str) else list(spec)
    files: list[Path] = []
    for item in specs:
        if item.startswith("quickstart:"):
            split = item.split(":", 1)[1]
            found = sorted((PACKAGED / "quickstart").glob(f"*.{split}.jsonl"))
            if not found:
                raise LoRAGenError(f"no packaged quickstart files for split {split!r}: use train, val or test")
            files.extend(found)
        else:
            path = Path(item).expanduser()
            if not path.is_file():
                raise LoRAGenError(f"data file {item} does not exist: check data.*_files in your config")
            files.append(path)
    return files


def check_sizes(kw: dict[str, Any]) -> None:
    """Batch sizes and scoring mode every DataModule shares."""
    for key in ("batch_size", "eval_batch_size"):
        if kw.get(key) is not None and kw[key] < 1:
            raise LoRAGenError(f"data.{key} must be >= 1, got {kw[key]}")
    from loragen.data.tasks.base import formulation_for

    formulation_for(kw.get("scoring", "loglik"))  # an unknown scoring mode fails here


class EpochShuffleSampler(DistributedSampler):
    """Shuffles with a generator seeded by (seed, epoch) and shards the order across processes.

    The order of epoch e depends only on (seed, e), so a resumed run repeats it, and process r of
    w takes ``order[r::w]``: the union of the w per-process batches of a step is exactly the batch
    a single process with a w-times larger batch would see. Being a ``DistributedSampler``,
    Lightning leaves it in place under DDP instead of wrapping it.

    With ``lengths`` (one per example) and ``group`` (the global batch size), the shuffled order is cut into
    windows of ``GROUP_WINDOW`` global batches; each window is sorted by length and cut into batches, whose
    order is shuffled again: a batch holds examples of similar lengths (little padding), while the windows
    and the batch order keep the mix and the length of consecutive steps random. The order still depends
    only on (seed, epoch).
    """

    GROUP_WINDOW = 64

    def __init__(
        self,
        size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: list[int] | None = None,
        group: int = 1,
    ) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.lengths, self.group = lengths, group
        self.skip_once = 0  # samples (of the global order) already consumed in this epoch before a resume

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.num_replicas

    def __iter__(self):  # noqa: ANN204
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=gen).tolist()
        order = order[: len(self) * self.num_replicas]  # equal shards (drop the remainder)
        if self.lengths is not None:
            window, grouped = self.group * self.GROUP_WINDOW, []
            for start in range(0, len(order), window):
                ranked = sorted(order[start : start + window], key=lambda j: -self.lengths[j])
                batches = [ranked[b : b + self.group] for b in range(0, len(ranked), self.group)]
                for b in torch.randperm(len(batches), generator=gen).tolist():  # batch order stays random
                    grouped.extend(batches[b])
            order = grouped
        skip, self.skip_once = self.skip_once, 0
        return iter(order[skip:][self.rank :: self.num_replicas])


class RecordDataModule(L.LightningDataModule):
    """Batches of tokenized system prompts (cloud tokenizer) and user input + answer (edge tokenizer).

    Args:
        train_files / val_files / test_files / predict_files: JSONL or JSON files of records (or
            ``quickstart:train|val|test``). The task of a record is its ``task`` field, else the file name.
        cloud / edge: model sources; normally linked from the model config by the CLI.
        batch_size: training batch size; eval_batch_size: items per evaluation batch.
        max_system_tokens / max_input_tokens / max_output_tokens: truncation limits (see ``tokenize``).
        limit_per_task: keep at most this many test/predict records per task (None = all).
        val_limit_per_task: the same for validation (default: ``limit_per_task``).
        reference: also prepare the edge-with-system-prompt reference for evaluation.
        scoring: how the model grades items (``loglik`` or ``generate``), linked from the model by the
            CLI. Records are used as written; task DataModules pick the question's formulation by it.
        strict: stop on the first malformed record instead of skipping it with a warning.
        length_grouped: training batches of similar lengths (the shuffled order sorted by length within
            windows of 64 batches): far less padding when tasks differ in length, same data per epoch.
        num_workers: DataLoader workers.
        seed: shuffling seed (the order of epoch e depends only on seed and e, so resumes repeat it).
    """

    # Lightning types ``hparams`` as a MutableMapping; what ``save_hyperparameters`` stores is an AttributeDict
    if TYPE_CHECKING:

        @property
        def hparams(self) -> AttributeDict: ...

    extra_specs: dict[str, Any] = {}  # task specs beyond the registry (TaskDataModule's ``extra_tasks``)

    def __init__(
        self,
        train_files: str | list[str] | None = None,
        val_files: str | list[str] | None = None,
        test_files: str | list[str] | None = None,
        predict_files: str | list[str] | None = None,
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
        super().__init__()
        self.save_hyperparameters()
        self.check_config(stages=(), **self.hparams)  # files: checked for the stages a run sets up (``setup``)
        specs = {"train": train_files, "val": val_files, "test": test_files, "predict": predict_files}
        self._file_specs = specs
        self._files: dict[str, list[Path]] = {}  # resolved when a stage is set up: a test reads no train file
        self.records: dict[str, list[Record]] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self._tok: RecordTokenizer | None = None
        self._resume: dict[str, int] | None = None

    # Mid-epoch resume: Lightning stores this in checkpoints; a resumed run skips the batches the
    # interrupted run already trained on instead of replaying the epoch from its start.
    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:  # the epoch is finished: a resume starts the next one from its start
            return {"epoch": self.trainer.current_epoch + 1, "batches_done": 0}
        processed = progress.current.processed  # type: ignore[attr-defined]  # a _ProcessedTracker, typed as its base
        return {"epoch": self.trainer.current_epoch, "batches_done": processed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state) if state else None

    @staticmethod
    def check_config(stages: tuple[str, ...] | None = None, **kw: Any) -> None:
        """Fail on missing files or impossible sizes before any model or tokenizer is loaded; files only of
        ``stages`` (``train`` / ``val`` / ``test`` / ``predict``; None: all), e.g. a test needs no train file."""
        check_sizes(kw)
        specs = {s: kw.get(f"{s}_files") for s in ("train", "val", "test", "predict")}
        if not any(specs.values()):
            raise LoRAGenError("no data files given: set data.train_files (and val/test files) in your config")
        for stage, spec in specs.items():
            if stages is None or stage in stages:
                resolve_files(spec)

    # ----------------------------------------------------------------------------- setup

    def _tokenizer(self) -> RecordTokenizer:
        if self._tok is None:
            from loragen.backbones import load_tokenizer

            cloud_tok = load_tokenizer(self.hparams.cloud)
            edge_tok = cloud_tok if self.hparams.edge == self.hparams.cloud else load_tokenizer(self.hparams.edge)
            limits = Limits(
                self.hparams.max_system_tokens, self.hparams.max_input_tokens, self.hparams.max_output_tokens
            )
            self._tok = RecordTokenizer(cloud_tok, edge_tok, limits)
        return self._tok

    def judge(self, text: str, record: Record) -> bool | None:
        """Grade a generated answer to ``record``: its task's answer extraction when the task is known (the
        registry, or this DataModule's own task definitions), else an exact match; None = unparseable."""
        from loragen.data.tasks.registry import get_task
        from loragen.eval.extraction import exact_match

        try:
            spec = get_task(record.task, self.extra_specs)
        except LoRAGenError:
            return exact_match(text, record.output)
        return spec.is_correct(text, record)

    def has_stage(self, stage: str) -> bool:
        """Whether data is configured for ``stage`` (train / val / test / predict)."""
        return bool(self._file_specs[stage])

    def read_records(self, stage: str) -> list[Record]:
        """The raw records of a stage; subclasses (e.g. task-registry DataModules) override this."""
        if stage not in self._files:
            self._files[stage] = resolve_files(self._file_specs[stage])
        return [r for f in self._files[stage] for r in load_records(f, strict=self.hparams.strict)]

    def load(self, stage: str) -> list[Record]:
        """Records of a stage after per-task limits, grouped by task for evaluation (cached)."""
        if stage not in self.records:
            records = self.read_records(stage)
            limit = self.hparams.limit_per_task
            if stage == "val" and self.hparams.val_limit_per_task is not None:
                limit = self.hparams.val_limit_per_task
            if stage != "train" and limit:
                per_task: dict[str, list[Record]] = {}
                for record in records:
                    per_task.setdefault(record.task, []).append(record)
                records = [r for group in per_task.values() for r in group[:limit]]
            if stage != "train":  # group by task so evaluation batches share system prompts
                records = sorted(records, key=lambda r: r.task)
            self.records[stage] = records
        return self.records[stage]

    @property
    def tasks(self) -> list[str]:
        names = {r.task for stage in ("val", "test") if self.has_stage(stage) for r in self.load(stage)}
        return sorted(names)

    def setup(self, stage: str | None = None) -> None:
        stages = SUBCOMMAND_STAGES.get(stage or "fit", ("train", "val", "test", "predict"))
        self.check_config(stages=stages, **self.hparams)  # the files these stages read
        tok = self._tokenizer()
        for name in stages:
            key = self._examples_key(name)
            if key in self.examples or not self.has_stage(name):
                continue
            if name == "train":
                make = partial(tok.train_example, with_system=key == "train+system", teacher="+teacher" in key)
                if "+sibling" in key:
                    make = partial(with_sibling, make, tok, sibling_prompts(self.load("train")), {})
                self._tokenize(key, make, split="train")
            else:
                self._tokenize(name, lambda r: tok.eval_example(r, self.hparams.reference))

    def tokenize_system_prompt(self, text: str) -> list[int]:
        """A system prompt's cloud token ids, truncated to ``max_system_tokens`` as the records' prompts are."""
        return self._tokenizer().system_ids(text)

    def system_prompt_ids(self) -> list[list[int]]:
        """Every distinct tokenized system prompt of the configured stages (held-out paraphrases included), in
        order of first appearance: what ``loragen encode`` computes the cloud's states for."""
        for subcommand in ("fit", "test", "predict"):
            if any(self.has_stage(s) for s in SUBCOMMAND_STAGES[subcommand]):
                self.setup(subcommand)
        seen: dict[tuple[int, ...], None] = {}
        for examples in self.examples.values():
            for example in examples:
                for ids in (example["system_ids"], example.get("heldout_system_ids")):
                    if ids is not None:
                        seen.setdefault(tuple(ids))
        return [list(ids) for ids in seen]

    def _examples_key(self, stage: str) -> str:
        """Where a stage's examples live. Methods that read the system prompt at every request (e.g.
        LoRA with the system prompt) also train with it in the edge context: ``train+system``; methods that
        distil the edge reading the prompt also get that sequence (``train+teacher``), methods that contrast a task with
        its sibling get the sibling's prompt (``train+sibling``; both: ``train+teacher+sibling``)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if stage != "train" or not isinstance(module, PromptReading):
            return stage
        if module.train_with_system_prompt:
            return "train+system"
        flags = (("+teacher", module.train_teacher_prompt), ("+sibling", module.train_sibling_prompt))
        return stage + "".join(flag for flag, wanted in flags if wanted)

    def _tokenize(self, name: str, make: Any, split: str | None = None) -> None:
        """Tokenize a split's records into ``self.examples[name]``, warning once about truncations."""
        tok = self._tokenizer()
        records = self.load(split or name)
        before = dict(tok.limits.truncated)
        self.examples[name] = [make(r) for r in records]
        if split is None:  # evaluation: a stable identity per item (DDP padding repeats items) and its
            positions: dict[str, int] = {}  # place within its task (the latency sample is the first few)
            for uid, example in enumerate(self.examples[name]):
                example["uid"], example["task_pos"] = uid, positions.get(example["task"], 0)
                positions[example["task"]] = example["task_pos"] + 1
        cut = {k: v - before.get(k, 0) for k, v in tok.limits.truncated.items() if v > before.get(k, 0)}
        if cut:
            detail = ", ".join(f"{k}: {v}" for k, v in cut.items())
            warnings.warn(
                f"{name}: {sum(cut.values())} truncation(s) over the configured limits across "
                f"{len(records)} records ({detail}); raise data.max_*_tokens to keep them whole",
                stacklevel=3,
            )

    # ----------------------------------------------------------------------------- loaders

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if not self.has_stage(stage):
            raise LoRAGenError(f"no {stage} data: set data.{stage}_files (or the {stage} tasks) in your config")
        self.setup({"train": "fit", "val": "validate"}.get(stage, stage))
        tok = self._tokenizer()
        examples = self.examples[self._examples_key(stage)]
        collate = Collator(tok.cloud.pad_token_id, tok.edge.pad_token_id)
        size = self.hparams.batch_size if stage == "train" else self.hparams.eval_batch_size
        sampler = None
        if shuffle:
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            lengths = [len(e["input_ids"]) for e in examples] if self.hparams.get("length_grouped") else None
            sampler = EpochShuffleSampler(len(examples), self.hparams.seed, world, rank, lengths, size * world)
            if self._resume:
                sampler.set_epoch(self._resume["epoch"])
                sampler.skip_once = self._resume["batches_done"] * size * world
                self._resume = None
        # Its own generator: creating an iterator must not draw from the global RNG (router noise),
        # or a resumed run would see different noise than an uninterrupted one.
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            examples,  # type: ignore[arg-type]  # a list is a map-style dataset
            batch_size=size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation during fit is optional: without val data a fit trains without it (``loragen
        validate`` still needs the data and says so)."""
        trainer = getattr(self, "trainer", None)
        validating = trainer is not None and trainer.state.fn == "validate"
        if not self.has_stage("val") and not validating:
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)


def sibling_prompts(records: list[Record], seed: int = 0) -> dict[int, str]:
    """For each training record (by ``id``), the system prompt of one record of a *sibling* task: the same dataset
    (``loragen.data.tasks.dataset_of``) in another form, e.g. ``boolq.swapped`` for ``boolq``; drawn with a fixed
    seed. A record whose dataset is trained in one form only has none."""
    import random

    from loragen.data.tasks import dataset_of

    prompts: dict[str, dict[str, dict[str, None]]] = {}
    for record in records:
        prompts.setdefault(dataset_of(record.task), {}).setdefault(record.task, {})[record.system] = None
    choices = {
        task: [t for t in forms if t != task] for forms in prompts.values() for task in forms
    }  # task -> its siblings
    texts = {task: list(systems) for forms in prompts.values() for task, systems in forms.items()}
    rng = random.Random(seed)
    drawn: dict[int, str] = {}
    for record in records:
        siblings = choices[record.task]
        if siblings:
            sibling = siblings[rng.randrange(len(siblings))]
            drawn[id(record)] = texts[sibling][rng.randrange(len(texts[sibling]))]
    return drawn


def with_sibling(
    make: Any, tok: RecordTokenizer, siblings: dict[int, str], ids: dict[str, list[int]], record: Record
) -> dict[str, Any]:
    """``make(record)`` plus the cloud ids of the record's sibling prompt (None without one); ``ids`` memoizes them
    per text (a suite has about 1400 distinct prompts for 100k records: each is tokenized and held once)."""
    example: dict[str, Any] = make(record)
    text = siblings.get(id(record))
    if text is not None and text not in ids:
        ids[text] = tok.system_ids(text)
    example["sibling_system_ids"] = ids[text] if text is not None else None
    return example

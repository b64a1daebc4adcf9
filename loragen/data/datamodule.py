"""``RecordDataModule``: the generic ``system / input / output`` record format as a LightningDataModule."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from loragen import LoRAGenError
from loragen.data.records import Record, load_records
from loragen.data.tokenize import Collator, Limits, RecordTokenizer

PACKAGED = Path(__file__).parent


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


class RecordDataModule(L.LightningDataModule):
    """Batches of tokenized system prompts (cloud tokenizer) and user input + answer (edge tokenizer).

    Args:
        train_files / val_files / test_files / predict_files: JSONL or JSON files of records (or
            ``quickstart:train|val|test``). The task of a record is its ``task`` field, else the file name.
        cloud / edge: model sources; normally linked from the model config by the CLI.
        batch_size: training batch size; eval_batch_size: items per evaluation batch.
        max_system_tokens / max_input_tokens / max_output_tokens: truncation limits (see ``tokenize``).
        limit_per_task: keep at most this many eval/predict records per task (None = all).
        reference: also prepare the edge-with-system-prompt reference for evaluation.
        strict: stop on the first malformed record instead of skipping it with a warning.
        num_workers: DataLoader workers.
    """

    def __init__(self, train_files: str | list[str] | None = None, val_files: str | list[str] | None = None,
                 test_files: str | list[str] | None = None, predict_files: str | list[str] | None = None,
                 cloud: str = "bundled:smollm2-135m-instruct", edge: str = "bundled:smollm2-135m-instruct",
                 batch_size: int = 8, eval_batch_size: int = 8, max_system_tokens: int = 1024,
                 max_input_tokens: int = 256, max_output_tokens: int = 64, limit_per_task: int | None = None,
                 reference: bool = True, strict: bool = False, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or eval_batch_size < 1:
            raise LoRAGenError("data.batch_size and data.eval_batch_size must be >= 1")
        self.files = {stage: resolve_files(spec) for stage, spec in
                      (("train", train_files), ("val", val_files), ("test", test_files), ("predict", predict_files))}
        if not any(self.files.values()):
            raise LoRAGenError("no data files given: set data.train_files (and val/test files) in your config")
        self.records: dict[str, list[Record]] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self._tok: RecordTokenizer | None = None

    # ----------------------------------------------------------------------------- setup

    def _tokenizer(self) -> RecordTokenizer:
        if self._tok is None:
            from loragen.models.components.backbones import load_tokenizer

            cloud_tok = load_tokenizer(self.hparams.cloud)
            edge_tok = cloud_tok if self.hparams.edge == self.hparams.cloud else load_tokenizer(self.hparams.edge)
            limits = Limits(self.hparams.max_system_tokens, self.hparams.max_input_tokens,
                            self.hparams.max_output_tokens)
            self._tok = RecordTokenizer(cloud_tok, edge_tok, limits)
        return self._tok

    def load(self, stage: str) -> list[Record]:
        if stage not in self.records:
            records = [r for f in self.files[stage] for r in load_records(f, strict=self.hparams.strict)]
            if stage != "train" and self.hparams.limit_per_task:
                per_task: dict[str, list[Record]] = {}
                for record in records:
                    per_task.setdefault(record.task, []).append(record)
                records = [r for group in per_task.values() for r in group[: self.hparams.limit_per_task]]
            if stage != "train":  # group by task so evaluation batches share system prompts
                records = sorted(records, key=lambda r: r.task)
            self.records[stage] = records
        return self.records[stage]

    @property
    def tasks(self) -> list[str]:
        names = {r.task for stage in ("val", "test") if self.files[stage] for r in self.load(stage)}
        return sorted(names)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        stages = wanted.get(stage or "fit", ("train", "val", "test", "predict"))
        tok = self._tokenizer()
        for name in stages:
            if name in self.examples or not self.files[name]:
                continue
            records = self.load(name)
            before = dict(tok.limits.truncated)
            if name == "train":
                self.examples[name] = [tok.train_example(r) for r in records]
            else:
                self.examples[name] = [tok.eval_example(r, self.hparams.reference) for r in records]
            cut = {k: v - before.get(k, 0) for k, v in tok.limits.truncated.items() if v > before.get(k, 0)}
            if cut:
                detail = ", ".join(f"{k}: {v}" for k, v in cut.items())
                warnings.warn(f"{name}: truncated {sum(cut.values())} sequence(s) of {len(records)} records over "
                              f"the configured limits ({detail}); raise data.max_*_tokens to keep them whole",
                              stacklevel=2)

    # ----------------------------------------------------------------------------- loaders

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if not self.files[stage]:
            raise LoRAGenError(f"no {stage} data: set data.{stage}_files in your config")
        self.setup({"train": "fit", "val": "validate"}.get(stage, stage))
        tok = self._tokenizer()
        collate = Collator(tok.cloud.pad_token_id, tok.edge.pad_token_id)
        size = self.hparams.batch_size if stage == "train" else self.hparams.eval_batch_size
        return DataLoader(self.examples[stage], batch_size=size, shuffle=shuffle, collate_fn=collate,
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

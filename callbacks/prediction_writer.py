"""Write ``loragen predict`` answers as JSONL (one object per input, in input order)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from loragen.files import atomic_write_text


class JsonlPredictionWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs and writes them atomically to ``output`` (default:
    ``predictions.jsonl`` in the run directory) at the end of the predict epoch.

    Args:
        output: file to write; relative paths are taken from the run directory.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        path = Path(self.output) if self.output else run_dir / "predictions.jsonl"
        if not path.is_absolute() and self.output:
            path = run_dir / path
        rows = [row for batch in predictions for row in batch]
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.path = path
        print(f"Wrote {len(rows)} predictions to {path}")

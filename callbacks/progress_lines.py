"""``ProgressLines``: plain progress lines for runs without a terminal (nohup, CI, a pipe, a log file).

Lightning's rich progress bar draws nothing when stdout is not a TTY, so a long ``loragen fit`` in a
log file is silent until it ends. This callback prints one flushed line at the first step, then at
most every ``every_seconds`` (and every ``every_n_steps`` steps when given), and at the end:

    [fit] step 40/100 · loss 1.8321 · 3.0 samples/s · 2.66 s/step · ETA 0:02:39
    [test] batch 6/13 · 1.92 s/batch · ETA 0:00:13

``loragen fit/validate/test/predict`` add it by themselves when stdout is not a terminal (and the
config has none); add it to ``trainer.callbacks`` to have it on a terminal too.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any, TextIO

import lightning as L


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, int(round(seconds)))))


class ProgressLines(L.Callback):
    def __init__(
        self, every_seconds: float = 30.0, every_n_steps: int | None = None, stream: TextIO | None = None
    ) -> None:
        if every_seconds < 0 or (every_n_steps is not None and every_n_steps < 1):
            raise ValueError("ProgressLines: every_seconds must be >= 0 and every_n_steps >= 1")
        self.every_seconds, self.every_n_steps = every_seconds, every_n_steps
        self.stream = stream
        self._start = self._last = 0.0
        self._first_step = 0
        self._samples = 0
        self._eval_done = 0
        self._saved = (0.0, 0.0)  # the fit's clock while a validation inside it runs

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)
        self._last = time.perf_counter()

    def _due(self, count: int, total: int | None) -> bool:
        if count == 1 or (total is not None and count >= total):
            return True
        if self.every_n_steps is not None and count % self.every_n_steps == 0:
            return True
        return time.perf_counter() - self._last >= self.every_seconds

    # ------------------------------------------------------------------ training

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._first_step, self._samples = trainer.global_step, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, dict) and hasattr(batch.get("input_ids"), "shape"):
            self._samples += int(batch["input_ids"].shape[0])
        step = trainer.global_step
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        done = step - self._first_step
        if done < 1 or not self._due(done, None if total is None else total - self._first_step):
            return
        elapsed = time.perf_counter() - self._start
        per_step = elapsed / done
        parts = [f"[fit] step {step}" + (f"/{total}" if total else "")]
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "item"):
            parts.append(f"loss {float(loss.detach()):.4f}")
        if self._samples:
            parts.append(f"{self._samples / elapsed:.1f} samples/s")
        parts.append(f"{per_step:.2f} s/step")
        if total:
            parts.append(f"ETA {_eta(per_step * (total - step))}")
        self._print(" · ".join(parts))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        self._print(f"[fit] done: {trainer.global_step - self._first_step} steps in {_eta(elapsed)}")

    # ------------------------------------------------------------------ evaluation

    def _eval_start(self) -> None:
        self._start = self._last = time.perf_counter()
        self._eval_done = 0

    def _eval_batch(self, stage: str, totals: Any) -> None:
        self._eval_done += 1
        total = int(sum(t for t in (totals or []) if t != float("inf"))) or None
        if not self._due(self._eval_done, total):
            return
        per_batch = (time.perf_counter() - self._start) / self._eval_done
        line = f"[{stage}] batch {self._eval_done}" + (f"/{total}" if total else "") + f" · {per_batch:.2f} s/batch"
        if total:
            line += f" · ETA {_eta(per_batch * (total - self._eval_done))}"
        self._print(line)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved = (self._start, self._last)  # validation inside fit must not disturb the fit's clock
        self._eval_start()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if not trainer.sanity_checking:
            self._eval_batch("validate", trainer.num_val_batches)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._start, self._last = self._saved

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        self._eval_batch("test", trainer.num_test_batches)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        self._eval_batch("predict", trainer.num_predict_batches)

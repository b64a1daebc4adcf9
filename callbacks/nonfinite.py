"""``NonFiniteGuard``: how many consecutive non-finite training steps a run tolerates.

Every loragen method already drops the gradients of a step whose loss or gradients are NaN/inf (the
weights and optimizer moments stay as they were), counts it in ``train/nonfinite_steps`` and stops
after ``loragen.models.optim.MAX_NONFINITE_STEPS`` (3) in a row. Add this callback to change the limit:
``max_consecutive: 1`` stops at the first non-finite step, a large value skips them all.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from loragen import LoRAGenError


class NonFiniteGuard(Callback):
    """Args:
    max_consecutive: consecutive non-finite steps after which the run stops (>= 1).
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        if max_consecutive < 1:
            raise LoRAGenError(
                f"NonFiniteGuard max_consecutive={max_consecutive} must be >= 1 (1: stop at the first non-finite step)"
            )
        self.max_consecutive = max_consecutive

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        pl_module.max_nonfinite_steps = self.max_consecutive

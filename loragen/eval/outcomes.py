"""``ItemOutcomes``: what happened to each evaluated item, kept per item so that intervals, paired
differences and per-item parity checks can be computed, and correct under DDP.

Each rank appends its items; at ``compute()`` torchmetrics gathers the lists from every process
(``dist_reduce_fx="cat"``) and the items are deduplicated by ``uid``: a distributed sampler pads
the last batch by repeating items, which must not be counted twice.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

FIELDS = ("uid", "task", "label", "pred", "pred_norm", "acc", "acc_norm", "unparseable", "tokens", "ms")


class ItemOutcomes(Metric):
    """Per-item outcomes of one evaluated setting. ``update`` takes one 1-D sequence per field of
    ``FIELDS`` (``pred`` / ``pred_norm`` = -1 and ``ms`` = NaN where they do not apply)."""

    full_state_update = False
    uid: list[torch.Tensor] | torch.Tensor  # a state of ``FIELDS`` (each one like it): see ``compute``

    def __init__(self) -> None:
        super().__init__()
        for name in FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, **values: list[float]) -> None:
        missing = set(FIELDS) - set(values)
        if missing:
            raise ValueError(f"ItemOutcomes.update needs {sorted(missing)}")
        for name in FIELDS:
            getattr(self, name).append(torch.as_tensor(values[name], dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, np.ndarray]:
        # a list of per-batch tensors; after a DDP sync, one tensor of everything gathered
        if len(self.uid) == 0:
            return {name: np.zeros(0) for name in FIELDS}
        values = {name: dim_zero_cat(getattr(self, name)).cpu().numpy() for name in FIELDS}
        _, first = np.unique(values["uid"], return_index=True)  # sorted by uid, one entry per item
        out = {name: v[first] for name, v in values.items()}
        for name in ("uid", "task", "label", "pred", "pred_norm", "unparseable"):
            out[name] = out[name].astype(np.int64)
        return out

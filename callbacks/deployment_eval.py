"""Deployment-faithful validation and test, verified: the edge weights are bit-identical after each
evaluation epoch to what they were before it.

``LoRAGenModule`` itself evaluates the way LoRA-Gen is deployed: at the start of each validation/test
epoch it runs the generator once per distinct system prompt of the evaluation data (no batch runs the
cloud again), merges each LoRA into the edge weights for its task's items, answers without the system
prompt and restores the original weights. Which reference rows are evaluated (edge given the full
system prompt; plain zero-shot edge) is the model's own switch (``model.init_args.reference`` /
``zero_shot_reference``); this callback never changes it. It checks, at the end of each epoch, that
the edge weights are what they were (a failed restore stops the run rather than training on
corrupted weights) and that no LoRA is left merged.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class DeploymentEvaluation(Callback):
    """Args:
        verify_restore: compare every edge weight to its pre-evaluation value at epoch end.
    """

    def __init__(self, verify_restore: bool = True) -> None:
        self.verify_restore = verify_restore
        self._snapshot: dict[str, torch.Tensor] = {}

    def _start(self, pl_module: Any) -> None:
        if not hasattr(pl_module, "task_loras"):  # not a LoRA-Gen module (e.g. a baseline): nothing to check
            return
        if self.verify_restore:
            self._snapshot = {n: p.detach().clone() for n, p in pl_module.model.edge.named_parameters()}

    def _end(self, pl_module: Any) -> None:
        if not hasattr(pl_module, "task_loras"):
            return
        if pl_module.model.edge_lora.merged:
            pl_module.model.edge_lora.unmerge()
            raise RuntimeError("a generated LoRA was still merged into the edge after evaluation")
        if self.verify_restore and self._snapshot:
            for name, param in pl_module.model.edge.named_parameters():
                if not torch.equal(param, self._snapshot[name]):
                    raise RuntimeError(f"edge weight {name} changed during evaluation: the merge was not undone")
            self._snapshot = {}

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(pl_module)

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(pl_module)

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(pl_module)

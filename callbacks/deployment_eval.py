"""Deployment-faithful validation and test: one generator run per task, merged evaluation, exact restore.

``LoRAGenModule`` always evaluates the way LoRA-Gen is deployed — the generated LoRA merged into
the edge weights, the user input without the system prompt, the original weights restored after.
This callback makes the protocol explicit and task-level:

- at the start of each validation/test epoch it runs the generator **once per task** (once per
  distinct system prompt of the evaluation data) and hands the LoRAs to the module, so no batch
  runs the cloud again;
- which reference rows are evaluated (edge given the full system prompt; plain zero-shot edge) is
  the model's own switch (``model.init_args.reference`` / ``zero_shot_reference``); this callback
  never changes it;
- at the end of the epoch it checks that the edge weights are bit-identical to what they were
  before evaluation (a failed restore stops the run rather than training on corrupted weights).
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
        self.generated_tasks = 0
        self._snapshot: dict[str, torch.Tensor] = {}

    def _start(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not hasattr(pl_module, "task_loras"):  # not a LoRA-Gen module (e.g. a baseline): nothing to generate
            return
        if self.verify_restore:
            self._snapshot = {n: p.detach().clone() for n, p in pl_module.model.edge.named_parameters()}
        datamodule = trainer.datamodule
        examples = getattr(datamodule, "examples", {}).get(stage, [])
        prompts: dict[bytes, list[int]] = {}
        for example in examples:
            ids = example["system_ids"]
            prompts.setdefault(torch.tensor(ids).numpy().tobytes(), ids)
        pl_module.task_loras = {}
        if not prompts:
            return
        width = max(len(ids) for ids in prompts.values())
        pad = 0
        system_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in prompts.values()],
                                  device=pl_module.device)
        system_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in prompts.values()],
                                   device=pl_module.device)
        with torch.no_grad():
            loras = pl_module.model.generate(system_ids, system_mask)
        pl_module.task_loras = dict(zip(prompts, loras, strict=True))
        self.generated_tasks = len(loras)

    def _end(self, pl_module: Any) -> None:
        if not hasattr(pl_module, "task_loras"):
            return
        pl_module.task_loras = {}
        if pl_module.model.edge_lora.merged:
            pl_module.model.edge_lora.unmerge()
        if self.verify_restore and self._snapshot:
            for name, param in pl_module.model.edge.named_parameters():
                if not torch.equal(param, self._snapshot[name]):
                    raise RuntimeError(f"edge weight {name} changed during evaluation: the merge was not undone")
            self._snapshot = {}

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module, "val")

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(pl_module)

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module, "test")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(pl_module)

"""Router observability: which experts serve which task, how sharp the gates are, and collapse.

``RouterStatistics`` reads the gates of every training batch (``pl_module.last_routing``, set by
``LoRAGenModule.training_step``) and

- logs gate entropy (mean over samples and layers, in nats) and each expert's share of importance
  (``train/expert_share/e``) every ``log_every_n_steps``;
- accumulates per-task expert usage (layers × experts) over the epoch, saves one heatmap per task
  as PNG in ``<run dir>/router/`` at the end of each training epoch and logs it to W&B when a
  ``WandbLogger`` is attached;
- warns when an expert's share of importance stayed under ``collapse_threshold`` (1 %) for a
  whole epoch — the balance loss is too weak or the router collapsed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class RouterCollapseWarning(UserWarning):
    """An expert received (almost) no routing weight for a whole epoch."""


def gate_entropy(gates: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the gate distributions over the last dimension."""
    p = gates.float().clamp_min(1e-12)
    return -(gates.float() * p.log()).sum(-1).mean()


class RouterStatistics(Callback):
    """Expert-usage heatmaps, gate entropy, importance shares and a collapse warning.

    Args:
        collapse_threshold: an expert whose epoch share of importance is below this fraction is
            reported as collapsed.
        save_heatmaps: write per-task heatmaps (PNG) at the end of every training epoch.
        log_every_n_steps: how often to log entropy and shares (default: the trainer's setting).
    """

    def __init__(
        self, collapse_threshold: float = 0.01, save_heatmaps: bool = True, log_every_n_steps: int | None = None
    ) -> None:
        self.collapse_threshold = collapse_threshold
        self.save_heatmaps = save_heatmaps
        self.log_every_n_steps = log_every_n_steps
        self.usage: dict[str, torch.Tensor] = {}  # task -> (L, n) summed gates this epoch
        self.collapsed: list[int] = []
        self.heatmaps: list[Path] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.usage = {}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        routing = getattr(pl_module, "last_routing", None)
        if routing is None:
            return
        gates, tasks = routing
        gates = gates.float().cpu()
        for task in set(tasks):
            rows = [i for i, t in enumerate(tasks) if t == task]
            total = gates[rows].sum(0)
            self.usage[task] = self.usage[task] + total if task in self.usage else total
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        if trainer.global_step % every == 0:
            share = gates.sum((0, 1)) / gates.sum().clamp_min(1e-12)
            metrics = {"train/gate_entropy": gate_entropy(gates)}
            metrics.update({f"train/expert_share/{e}": float(v) for e, v in enumerate(share)})
            pl_module.log_dict(metrics, batch_size=gates.shape[0])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.usage:
            return
        total = sum(self.usage.values())
        share = total.sum(0) / total.sum().clamp_min(1e-12)
        self.collapsed = [e for e, s in enumerate(share.tolist()) if s < self.collapse_threshold]
        if self.collapsed:
            warnings.warn(
                f"router collapse: expert(s) {self.collapsed} received under {100 * self.collapse_threshold:g}% of "
                f"the routing weight in epoch {trainer.current_epoch} (shares {[round(float(s), 4) for s in share]}); "
                "raise model.pool.aux_coef or lower model.pool.num_experts",
                RouterCollapseWarning,
                stacklevel=2,
            )
        if self.save_heatmaps and trainer.is_global_zero:
            self.heatmaps = self._save_heatmaps(trainer)

    def _save_heatmaps(self, trainer: Any) -> list[Path]:
        from loragen.report import pyplot, save_figure

        plt = pyplot()
        directory = Path(trainer.log_dir or trainer.default_root_dir) / "router"
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for task, usage in sorted(self.usage.items()):
            share = usage / usage.sum(-1, keepdim=True).clamp_min(1e-12)
            fig, ax = plt.subplots(figsize=(1.2 + 0.5 * share.shape[1], 1.2 + 0.18 * share.shape[0]))
            image = ax.imshow(share.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xlabel("expert")
            ax.set_ylabel("edge layer")
            ax.set_title(f"{task}: gate share (epoch {trainer.current_epoch})", fontsize=9)
            fig.colorbar(image, ax=ax)
            paths.append(save_figure(fig, directory / f"expert_usage_{task}_epoch{trainer.current_epoch}.png", dpi=100))
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(
                    key="router/expert_usage", images=[str(p) for p in paths], caption=[p.stem for p in paths]
                )
        return paths

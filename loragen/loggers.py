"""Loggers as loragen's configs use them.

``WandbLogger`` is Lightning's, minus one key: Lightning passes ``anonymous=None`` to ``wandb.init`` on every run,
and wandb warns about that key whatever its value ("The anonymous setting has no effect ..."), a third-party
line in every log. The key is dropped when it says nothing; everything else is Lightning's logger unchanged.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` (same arguments), without passing ``anonymous=None`` to ``wandb.init``."""

    @property
    def experiment(self) -> Any:
        if "anonymous" in self._wandb_init and self._wandb_init["anonymous"] is None:
            del self._wandb_init["anonymous"]
        return super().experiment

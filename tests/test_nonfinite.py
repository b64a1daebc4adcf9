"""A non-finite training step never reaches the weights: skipped when isolated, the run stopped when repeated."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from loragen import LoRAGenError
from loragen.callbacks import NonFiniteGuard
from loragen.models.lora_gen_module import LoRAGenModule
from tests.conftest import TINY, _data, _trained, _trainer


def _poisoned(module: LoRAGenModule, batches: set[int]) -> list[dict[str, torch.Tensor]]:
    """Wrap training_step so the chosen batches give a NaN loss; record the trained weights after each step."""
    step, seen = module.training_step, []

    def training_step(batch, batch_idx):  # noqa: ANN001, ANN202
        seen.append(_trained(module))  # the weights this step starts from
        loss = step(batch, batch_idx)
        return loss * float("nan") if batch_idx in batches else loss

    module.training_step = training_step
    return seen


def test_an_isolated_nonfinite_step_is_skipped_and_counted(tmp_path):
    L.seed_everything(0)
    module = LoRAGenModule(**TINY)
    seen = _poisoned(module, {1})
    metrics = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            metrics[batch_idx] = float(trainer.callback_metrics["train/nonfinite_steps"])

    with pytest.warns(UserWarning, match=r"step 1: non-finite loss or gradients, step skipped"):
        _trainer(tmp_path, max_steps=4, callbacks=[Record()]).fit(module, _data())
    final = _trained(module)
    # the poisoned step changed nothing: batch 2 starts from the weights batch 1 started from
    assert all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])
    assert not all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])  # a healthy step does change them
    assert all(torch.isfinite(v).all() for v in final.values())
    assert metrics == {0: 0.0, 1: 1.0, 2: 1.0, 3: 1.0}
    optimizer = module.trainer.optimizers[0]
    assert all(torch.isfinite(s["exp_avg"]).all() for s in optimizer.state.values())


def test_consecutive_nonfinite_steps_stop_the_run_and_the_last_checkpoint_stays_valid(tmp_path):
    L.seed_everything(0)
    module = LoRAGenModule(**TINY)
    _poisoned(module, {2, 3})
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer = _trainer(
        tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[checkpoint, NonFiniteGuard(max_consecutive=2)]
    )
    with (
        pytest.warns(UserWarning, match="step 2: non-finite"),
        pytest.raises(LoRAGenError, match=r"stopped at step 3: 2 consecutive steps with a non-finite loss"),
    ):
        trainer.fit(module, _data())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] in (2, 3)  # written before or at the skipped step: never a poisoned weight
    weights = [v for k, v in saved["state_dict"].items() if k.startswith("model.")]
    assert weights and all(torch.isfinite(v).all() for v in weights)
    fresh = LoRAGenModule(**TINY)
    fresh.on_load_checkpoint(saved)
    fresh.load_state_dict(saved["state_dict"], strict=False)  # the checkpoint loads


def test_guard_limit_is_validated():
    with pytest.raises(LoRAGenError, match="max_consecutive=0 must be >= 1"):
        NonFiniteGuard(max_consecutive=0)

"""Offline sweeps and router observability (issue: sweeps, scale-out and router observability)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from loragen import LoRAGenError
from loragen.callbacks.router_stats import RouterCollapseWarning, RouterStatistics, gate_entropy
from loragen.models.lora_gen_module import LoRAGenModule
from loragen.sweep import parse_grid, sweep
from tests.conftest import TINY, _data, _trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_offline_sweep_writes_table_plot_and_resumes(tmp_path, capsys):
    grid = parse_grid(["model.init_args.pool.num_experts=2,4", "model.init_args.pool.aux_coef=0,0.01"])
    extra = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.init_args.limit_per_task", "2"]
    rows = sweep(str(ROOT / "configs" / "tiny.yaml"), grid, str(tmp_path), extra=extra)
    assert [(r["num_experts"], r["aux_coef"]) for r in rows] == [(2, 0), (2, 0.01), (4, 0), (4, 0.01)]
    for name in ("num_experts=2__aux_coef=0", "num_experts=4__aux_coef=0.01"):
        point = tmp_path / name
        assert (point / "point.json").is_file() and (point / "config.yaml").is_file()
        assert list(point.rglob("results.json")) and list((point / "checkpoints").glob("last*.ckpt"))
    with open(tmp_path / "sweep.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and {"acc_mean", "prompted_acc_mean", "zero_shot_acc_mean"} <= set(table[0])
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert (tmp_path / "sweep.md").read_text().startswith("| num_experts | aux_coef |")
    capsys.readouterr()
    again = sweep(str(ROOT / "configs" / "tiny.yaml"), grid, str(tmp_path), extra=extra)
    assert again == rows
    assert capsys.readouterr().out.count("done before, skipped") == 4


def test_sweep_rejects_invalid_points_before_starting(tmp_path):
    grid = parse_grid(["model.init_args.pool.num_experts=2,4", "model.init_args.pool.top_k=3"])
    with pytest.raises(LoRAGenError, match=r"num_experts=2__top_k=3 is invalid: pool.top_k=3"):
        sweep(str(ROOT / "configs" / "tiny.yaml"), grid, str(tmp_path))
    assert not any(tmp_path.iterdir())
    with pytest.raises(LoRAGenError, match="KEY=V1"):
        parse_grid(["num_experts"])


def _routed_module(layer_experts):
    """A frozen router whose layer l always picks the experts ``layer_experts[l]``."""
    module = LoRAGenModule(
        **{
            **TINY,
            "router_hidden": 0,
            "router_noise": "none",
            "optim": {"lr": 1e-12},
            "pool": {**TINY["pool"], "aux_coef": 0.0},
        }
    )
    router = module.model.router
    dim = router.mlp.in_features
    with torch.no_grad():
        router.mlp.weight.zero_()
        router.mlp.bias.zero_()
        for e in range(4):
            router.mlp.weight[e, e] = 1.0
        router.layer_embedding.weight.zero_()
        for layer, experts in enumerate(layer_experts):
            for e in experts:
                router.layer_embedding.weight[layer, e] = 50.0
    assert dim >= 4
    return module


def test_collapse_warning_fires_on_collapse_and_not_on_balanced_routing(tmp_path):
    stats = RouterStatistics()
    with pytest.warns(RouterCollapseWarning, match=r"expert\(s\) \[2, 3\]"):
        _trainer(tmp_path / "a", max_steps=2, callbacks=[stats]).fit(_routed_module([[0, 1], [0, 1]]), _data())
    assert stats.collapsed == [2, 3]
    heatmaps = sorted(p.name for p in stats.heatmaps)
    assert heatmaps and all(name.endswith("_epoch0.png") for name in heatmaps)
    assert all(p.stat().st_size > 1000 for p in stats.heatmaps)

    balanced = RouterStatistics(save_heatmaps=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RouterCollapseWarning)
        _trainer(tmp_path / "b", max_steps=2, callbacks=[balanced]).fit(_routed_module([[0, 1], [2, 3]]), _data())
    assert balanced.collapsed == []


def test_gate_entropy_is_zero_for_one_hot_and_log_k_for_uniform():
    one_hot = torch.zeros(2, 3, 4)
    one_hot[..., 1] = 1
    assert gate_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    two = torch.zeros(2, 3, 4)
    two[..., :2] = 0.5
    assert gate_entropy(two).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


@pytest.mark.heavy
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes × batch 2 == 1 process × batch 4, for the trained generator weights."""
    records = tmp_path / "equal.jsonl"
    import json

    with open(records, "w") as fh:  # equal answer lengths: per-rank token means average to the global mean
        for i in range(16):
            fh.write(
                json.dumps(
                    {"system": f"task {i % 2}", "input": f"question {i}", "output": f"ans{i % 10}", "task": f"t{i % 2}"}
                )
                + "\n"
            )
    settings = {**TINY, "router_noise": "none", "pool": {**TINY["pool"], "aux_coef": 0.0}}

    def train(devices, batch_size, root):
        L.seed_everything(0)
        module = LoRAGenModule(**settings)
        data = _data(train_files=str(records), val_files=None, test_files=None, batch_size=batch_size)
        strategy = "ddp_spawn" if devices > 1 else "auto"
        trainer = _trainer(root, max_steps=3, accelerator="cpu", devices=devices, strategy=strategy)
        trainer.fit(module, data)
        path = root / "final.ckpt"
        trainer.save_checkpoint(path)
        return torch.load(path, weights_only=False)["state_dict"]

    single = train(1, 4, tmp_path / "single")
    ddp = train(2, 2, tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    for key in single:  # Adam normalises tiny gradients, so all-reduce rounding shows up near 1e-5
        assert torch.allclose(single[key], ddp[key], atol=1e-4), key


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_precisions_train_with_finite_loss_and_clipping_and_accumulation(tmp_path, precision):
    module = LoRAGenModule(**TINY)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(
        tmp_path,
        max_steps=2,
        precision=precision,
        accumulate_grad_batches=2,
        gradient_clip_val=0.5,
        callbacks=[Record()],
    )
    trainer.fit(module, _data())
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))  # 2 steps x 2 accumulated batches
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert module.model.pool.B["self_attn__q_proj"].dtype == expected
    assert module.model.pool.B["self_attn__q_proj"].abs().sum() > 0  # it trained

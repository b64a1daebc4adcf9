"""The recipe-study pieces (issue: make the method win): a dev split carved from train (``holdout``),
varied few-shot prompts for training (``shot_draws``), the centred router input, and named sweep
points (``loragen sweep --points``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from loragen import LoRAGenError
from loragen.data.task_datamodule import TaskDataModule
from loragen.data.tasks import TaskLoader
from loragen.models.components.router import Router
from loragen.sweep import parse_grid, read_points, split_values, sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def piqa_dir(tmp_path):
    """40 PIQA rows in the hub-converted format (goal, sol1, sol2, label)."""
    (tmp_path / "piqa").mkdir()
    rows = [
        {"goal": f"How do I do thing {i}?", "sol1": f"Use tool {i}.", "sol2": f"Use gadget {i}.", "label": i % 2}
        for i in range(40)
    ]
    (tmp_path / "piqa" / "train.hf.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _inputs(records):
    return {r.input for r in records}


def test_holdout_is_a_seeded_dev_split_that_train_and_shots_never_touch(piqa_dir):
    loader = TaskLoader(piqa_dir, shots=2, seed=0, holdout=10)
    dev = loader.records("piqa", "holdout")
    train = loader.records("piqa", "train")
    shots = {s.input for s in loader.shot_items("piqa")}
    assert len(dev) == 10 and len(shots) == 2 and len(train) == 40 - 10 - 2
    assert not _inputs(dev) & _inputs(train) and not _inputs(dev) & shots and not shots & _inputs(train)
    assert len(_inputs(dev) | _inputs(train) | shots) == 40
    assert {r.meta["split"] for r in dev} == {"holdout"}
    assert _inputs(TaskLoader(piqa_dir, shots=2, seed=0, holdout=10).records("piqa", "holdout")) == _inputs(dev)
    assert _inputs(TaskLoader(piqa_dir, shots=2, seed=1, holdout=10).records("piqa", "holdout")) != _inputs(dev)
    # without holdout, train is the whole file again (minus the shots)
    assert len(TaskLoader(piqa_dir, shots=2, seed=0).records("piqa", "train")) == 38
    with pytest.raises(LoRAGenError, match="too few to hold out 39"):
        TaskLoader(piqa_dir, shots=2, holdout=39).records("piqa", "holdout")
    with pytest.raises(LoRAGenError, match="holdout > 0"):
        TaskLoader(piqa_dir, shots=2).check("piqa", "holdout")


def test_holdout_skip_draws_a_second_split_disjoint_from_the_first(piqa_dir):
    first = TaskLoader(piqa_dir, shots=2, seed=0, holdout=10).records("piqa", "holdout")
    loader = TaskLoader(piqa_dir, shots=2, seed=0, holdout=12, holdout_skip=10)
    second, train = loader.records("piqa", "holdout"), loader.records("piqa", "train")
    shots = {s.input for s in loader.shot_items("piqa")}
    assert len(second) == 12 and len(train) == 40 - 10 - 12 - 2
    assert not _inputs(second) & _inputs(first), "the report split reuses model-selection items"
    assert not (_inputs(first) | _inputs(second)) & (_inputs(train) | shots)
    assert len(_inputs(first) | _inputs(second) | _inputs(train) | shots) == 40
    again = TaskLoader(piqa_dir, shots=2, seed=0, holdout=12, holdout_skip=10).records("piqa", "holdout")
    assert _inputs(again) == _inputs(second)
    with pytest.raises(LoRAGenError, match="too few to hold out 29 after the 10 skipped"):
        TaskLoader(piqa_dir, shots=2, holdout=29, holdout_skip=10).records("piqa", "holdout")
    with pytest.raises(LoRAGenError, match="holdout_skip must be >= 0 and needs data.holdout > 0"):
        TaskLoader(piqa_dir, shots=2, holdout_skip=10)


def test_holdout_through_the_datamodule_and_its_config_check(piqa_dir):
    kw = {
        "data_dir": str(piqa_dir),
        "train_tasks": ["piqa"],
        "test_tasks": ["piqa:holdout"],
        "shots": 2,
        "cloud": "tiny:qwen2",
        "edge": "tiny:llama",
    }
    with pytest.raises(LoRAGenError, match="holdout > 0"):
        TaskDataModule.check_config(**kw)
    with pytest.raises(LoRAGenError, match="holdout must be >= 0"):
        TaskDataModule.check_config(**{**kw, "holdout": -1})
    TaskDataModule.check_config(**{**kw, "holdout": 8})
    data = TaskDataModule(**{**kw, "holdout": 8})
    train, test = data.read_records("train"), data.read_records("test")
    assert len(test) == 8 and len(train) == 30 and not _inputs(train) & _inputs(test)


def test_shot_draws_vary_training_prompts_and_never_show_an_item_its_own_answer(piqa_dir):
    loader = TaskLoader(piqa_dir, shots=2, seed=0, shot_draws=4)
    fixed = loader.system_prompt("piqa")
    train = loader.records("piqa", "train", vary_shots=True)
    systems = [r.system for r in train]
    assert len(set(systems)) == 4 and fixed in systems
    assert 6 <= systems.count(fixed) <= 12  # spread over the draws, not all on one
    for record in train:
        assert f"{record.input} {record.output}" not in record.system
    assert {r.system for r in loader.records("piqa", "train")} == {fixed}  # evaluation: the fixed prompt
    assert [r.input for r in train] == [r.input for r in loader.records("piqa", "train")]  # same items
    with pytest.raises(LoRAGenError, match="shot_draws must be >= 1"):
        TaskLoader(piqa_dir, shot_draws=0)
    data = TaskDataModule(
        data_dir=str(piqa_dir),
        train_tasks=["piqa"],
        test_tasks=["piqa"],
        shots=2,
        shot_draws=4,
        cloud="tiny:qwen2",
        edge="tiny:llama",
        files={"piqa": {"test": "piqa/train.hf.jsonl"}},
    )
    assert len({r.system for r in data.read_records("train")}) == 4
    assert {r.system for r in data.read_records("test")} == {fixed}


def _router(center: bool) -> Router:
    torch.manual_seed(0)
    return Router(16, 4, 2, 3, hidden=8, noise="none", center=center)


def test_centred_router_mean_is_the_training_mean_and_removes_a_shared_component():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 3, 16, generator=gen) for _ in range(3)]
    shared = 40.0 * torch.randn(16, generator=gen)  # the component every prompt's states share
    plain, shifted = _router(True), _router(True)
    plain.train()
    shifted.train()
    for batch in batches:
        plain(batch)
        shifted(batch + shared)
    expected = torch.stack([b.mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(plain.state_mean, expected)
    assert int(plain.state_batches) == 3
    plain.eval()
    shifted.eval()
    probe = torch.randn(2, 3, 16, generator=gen)
    before = plain.state_mean.clone()
    torch.testing.assert_close(shifted(probe + shared).logits, plain(probe).logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(plain.state_mean, before)  # evaluation never moves the buffer
    # without centring the shared component dominates what the router sees: the logits differ
    raw = _router(False).eval()
    assert not torch.allclose(raw(probe + shared).logits, raw(probe).logits, atol=1e-2)


def test_centred_router_buffer_travels_with_the_trained_weights():
    from loragen.models.lora_gen_module import LoRAGenModule
    from tests.conftest import TINY

    module = LoRAGenModule(**{**TINY, "router_center": True})
    state = module.model.trainable_state_dict()
    assert {"router.state_mean", "router.state_batches"} <= set(state)
    assert "router.state_mean" not in LoRAGenModule(**TINY).model.trainable_state_dict()


def test_split_values_keeps_bracketed_lists_whole():
    assert split_values("1,[a,b],{x: 1, y: 2}") == ["1", "[a,b]", "{x: 1, y: 2}"]
    grid = parse_grid(["model.init_args.pool.target_modules=[q_proj,v_proj],[gate_proj]"])
    assert grid == {"model.init_args.pool.target_modules": [["q_proj", "v_proj"], ["gate_proj"]]}


def test_points_file_is_validated(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, match in (
        ("[1, 2]", "mapping of point names"),
        ("'a b': {}", "point name"),
        ("x: 3", "dotted config keys"),
    ):
        bad.write_text(text)
        with pytest.raises(LoRAGenError, match=match):
            read_points(str(bad))
    with pytest.raises(LoRAGenError, match="does not exist"):
        read_points(str(tmp_path / "missing.yaml"))
    with pytest.raises(LoRAGenError, match="either --grid"):
        sweep(str(ROOT / "configs" / "tiny.yaml"), {"a": [1]}, str(tmp_path), points={"base": {}})


@pytest.mark.heavy
def test_named_points_run_with_a_table_bars_and_resume(tmp_path, capsys):
    points_file = tmp_path / "points.yaml"
    points_file.write_text(
        "base: {}\ntwo_experts: {model.init_args.pool.num_experts: 2, model.init_args.pool.aux_coef: 0.0}\n"
    )
    extra = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.init_args.limit_per_task", "2"]
    out = tmp_path / "study"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = sweep(
            str(ROOT / "configs" / "tiny.yaml"), None, str(out), extra=extra, points=read_points(str(points_file))
        )
    assert [r["point"] for r in rows] == ["base", "two_experts"]
    config = (out / "two_experts" / "config.yaml").read_text()
    assert "num_experts: 2" in config and "aux_coef: 0.0" in config
    assert {"acc_mean", "acc_mean_ci", "gate_distance", "rotated_acc_mean"} <= set(rows[0])
    assert any(k.startswith("acc_") and k not in ("acc_mean", "acc_mean_ci", "acc_hmean") for k in rows[0])
    assert (out / "sweep.md").read_text().startswith("| point |")
    assert (out / "sweep.png").stat().st_size > 1000
    capsys.readouterr()
    assert (
        sweep(str(ROOT / "configs" / "tiny.yaml"), None, str(out), extra=extra, points=read_points(str(points_file)))
        == rows
    )
    assert capsys.readouterr().out.count("done before, skipped") == 2


@pytest.mark.heavy
def test_a_checkpoint_point_is_tested_as_it_is_without_training(tmp_path):
    out = tmp_path / "card"
    points_file = tmp_path / "points.yaml"
    points_file.write_text(f"base: {{}}\nagain: {{ckpt_path: {out / 'base' / 'checkpoints' / 'last.ckpt'}}}\n")
    extra = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.init_args.limit_per_task", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = sweep(
            str(ROOT / "configs" / "tiny.yaml"), None, str(out), extra=extra, points=read_points(str(points_file))
        )
    base, again = rows
    assert not (out / "again" / "checkpoints").exists()  # no fit: nothing trained, nothing saved
    assert "[fit]" in (out / "base" / "run.log").read_text() and "[fit]" not in (out / "again" / "run.log").read_text()
    accuracies = {k: v for k, v in base.items() if k.startswith("acc_") or k.endswith("_acc_mean")}
    assert accuracies and {k: again[k] for k in accuracies} == accuracies  # the same weights, the same items
    assert again["gate_distance"] == base["gate_distance"]


def test_a_tested_checkpoint_is_identified_by_its_weights_not_its_path_or_training_options(tmp_path):
    from loragen.release import known_releases
    from loragen.runner import Plan

    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"weights one")
    config = {"model": {"x": 1}, "trainer": {"max_steps": 10, "default_root_dir": "r"}}

    def identity(path: Path, steps: int, extra: list[str]) -> str:
        plan_config = {**config, "trainer": {**config["trainer"], "max_steps": steps}}
        return Plan(
            "p", tmp_path, plan_config, ["--ckpt_path", str(path), *extra], fit=False, checkpoint=str(path)
        ).identity

    first = identity(ckpt, 10, ["--trainer.max_steps", "10"])
    moved = tmp_path / "b.ckpt"
    moved.write_bytes(b"weights one")
    assert identity(moved, 1500, ["--trainer.max_steps=1500"]) == first  # same weights, other path and budget
    assert identity(ckpt, 10, ["--data.init_args.limit_per_task", "5"]) != first  # the test itself changed
    ckpt.write_bytes(b"weights two")
    assert identity(ckpt, 10, ["--trainer.max_steps", "10"]) != first  # retrained: run it again
    release = known_releases()["smollm2-135m-lora-gen"]
    sha = json.loads((release / "release.json").read_text())["weights_sha256"]
    plan = Plan("r", tmp_path, config, [], fit=False, checkpoint="bundled:smollm2-135m-lora-gen")
    assert plan.identity != Plan("r", tmp_path, config, [], fit=False, checkpoint=str(ckpt)).identity
    from loragen.runner import weights_digest

    assert weights_digest("bundled:smollm2-135m-lora-gen") == sha
    fitted = Plan("f", tmp_path, config, ["--trainer.max_steps", "10"])  # a trained run keeps every option
    assert fitted.identity != Plan("f", tmp_path, config, ["--trainer.max_steps", "20"]).identity

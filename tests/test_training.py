"""LoRAGenModule + RecordDataModule under a real Lightning Trainer (tiny models)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from loragen import LoRAGenError
from loragen.data.datamodule import RecordDataModule
from loragen.data.records import load_records
from loragen.models.lora_gen_module import LoRAGenModule
from tests.conftest import TINY, _data, _trained, _trainer


def test_batches_mask_everything_but_the_answer(tiny):
    dm = _data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tok = tiny("llama").tokenizer
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        answer = tok.decode(ids[labels != -100])
        assert answer.endswith(tok.eos_token) and len(answer) < 200
        assert (labels[mask == 0] == -100).all()
    assert batch["system_ids"].shape[0] == batch["input_ids"].shape[0]


def test_loss_decreases_and_only_generator_weights_change(tmp_path, tiny):
    L.seed_everything(0)
    module = LoRAGenModule(**TINY)
    dm = _data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    frozen = {k: v.clone() for k, v in module.model.edge.state_dict().items()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = _loss(module, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(torch.equal(v, module.model.edge.state_dict()[k]) for k, v in frozen.items())


def _loss(module, batch):
    """The module's own training_step (answer loss + balance term), called outside a Trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        return module.training_step(batch, 0)


def test_resume_matches_uninterrupted_training(tmp_path):
    """N steps + resume + N steps == 2N steps: global step, optimizer state, trained weights."""

    class StopAt(L.Callback):  # an interruption after N steps, with the same schedule as the full run
        def __init__(self, step):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.step:
                trainer.should_stop = True

    def run(root, stop=None, ckpt=None, batches=3):
        L.seed_everything(0)
        module = LoRAGenModule(**TINY)
        ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)
        callbacks = [ckpt_cb] + ([StopAt(stop)] if stop else [])
        trainer = _trainer(
            root, max_steps=6, limit_train_batches=batches, enable_checkpointing=True, callbacks=callbacks
        )
        trainer.fit(module, _data(), ckpt_path=ckpt)
        return trainer, module

    # Interrupted mid-epoch (step 2 of a 3-batch epoch) and resumed: the data order, learning-rate
    # schedule and router noise continue as if nothing happened.
    straight_trainer, straight = run(tmp_path / "a")
    run(tmp_path / "b", stop=2)
    resumed_trainer, resumed = run(tmp_path / "b", ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert resumed_trainer.global_step == straight_trainer.global_step == 6
    a, b = _trained(straight), _trained(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    opt_a = straight_trainer.optimizers[0].state_dict()["state"]
    opt_b = resumed_trainer.optimizers[0].state_dict()["state"]
    for i in opt_a:
        assert torch.allclose(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"], atol=1e-6)
        assert float(opt_a[i]["step"]) == float(opt_b[i]["step"]) == 6


def test_checkpoint_holds_only_trained_weights_and_the_fingerprint(tmp_path):
    module = LoRAGenModule(**TINY)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, _data())
    path = tmp_path / "x.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    trained = {f"model.{k}" for k in module.model.trainable_state_dict()}
    assert set(ckpt["state_dict"]) - {"best_val_acc.value"} == trained
    assert not any(k.startswith(("model.edge.", "model.generator.cloud.")) for k in ckpt["state_dict"])
    assert ckpt["loragen"]["fingerprint"]["edge"] == "tiny:llama"
    loaded = LoRAGenModule.load_from_checkpoint(path)
    for k, v in module.model.trainable_state_dict().items():
        assert torch.equal(v, loaded.model.trainable_state_dict()[k])
    ckpt["hyper_parameters"]["edge"] = "tiny:gemma"
    torch.save(ckpt, path)
    with pytest.raises(LoRAGenError, match="edge_arch"):
        LoRAGenModule.load_from_checkpoint(path)


def test_interrupted_checkpoint_write_leaves_no_file(tmp_path, monkeypatch):
    module = LoRAGenModule(**TINY)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, _data())

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    import fsspec.implementations.local as local

    monkeypatch.setattr(local.LocalFileOpener, "write", broken_write)
    with pytest.raises(OSError):
        trainer.save_checkpoint(tmp_path / "partial.ckpt")
    assert not (tmp_path / "partial.ckpt").exists()


def test_merged_evaluation_equals_functional_and_restores_weights(tmp_path):
    L.seed_everything(0)
    module = LoRAGenModule(**TINY)
    from tests.conftest import randomize_pool

    randomize_pool(module.model.pool, std=0.2)
    before = {k: v.clone() for k, v in module.model.edge.state_dict().items()}
    results = {}
    for path in ("merged", "functional"):
        module.evaluation = dataclasses.replace(module.evaluation, path=path)
        _trainer(tmp_path).test(module, _data())
        results[path] = module.last_results
    for row_m, row_f in zip(results["merged"]["rows"], results["functional"]["rows"], strict=True):
        assert row_m["accuracy"] == row_f["accuracy"]
    assert all(torch.equal(v, module.model.edge.state_dict()[k]) for k, v in before.items())
    out = json.loads((Path(tmp_path) / "results.json").read_text())
    assert [r["key"] for r in out["rows"]] == ["loragen", "rotated", "generic", "prompted", "zero_shot"]
    assert out["compression_ratio"] > 1.5  # the system prompt is most of the prompted context
    assert (Path(tmp_path) / "results.md").read_text().startswith("| setting |")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "no usable records"),
        ('{"system": "s", "input": "i"}\n', "no usable records"),
        ('{"system": "s", "input": "i", "output": "o", "options": ["a", "b"], "label": 5}\n', "no usable"),
    ],
)
def test_bad_data_files_stop_with_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(LoRAGenError, match=fragment) as err:
        with pytest.warns(UserWarning) if content else _nullcontext():
            load_records(path)
    assert "\n" not in str(err.value)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_malformed_records_are_reported_by_line_or_stop_when_strict(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"system": "s", "input": "i", "output": "o"}\n{"system": "s"}\n\xff\xfe\n')
    with pytest.warns(UserWarning, match=r"skipped 2 malformed record\(s\).*mixed.jsonl:2.*'output'"):
        assert len(load_records(path)) == 1
    with pytest.raises(LoRAGenError, match=r"mixed.jsonl:2"):
        load_records(path, strict=True)
    dm = RecordDataModule(train_files=str(tmp_path / "missing.jsonl"))  # a test run reads no train file
    with pytest.raises(LoRAGenError, match="does not exist"):
        dm.setup("fit")  # before any tokenizer or model loads


def test_truncation_is_counted_in_a_warning_not_a_crash():
    dm = _data(max_input_tokens=8, max_output_tokens=2)
    with pytest.warns(UserWarning, match=r"\d+ truncation\(s\) over the configured limits"):
        dm.setup("fit")
    assert max(len(e["input_ids"]) for e in dm.examples["train"]) <= 8 + 3


def test_impossible_settings_fail_before_any_model_loads(monkeypatch):
    import loragen.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(LoRAGenError, match="pool.top_k=5 must be between 1 and pool.num_experts=4"):
        LoRAGenModule(**{**TINY, "pool": {**TINY["pool"], "top_k": 5}})
    with pytest.raises(LoRAGenError, match="unknown model source scheme"):
        LoRAGenModule(**{**TINY, "cloud": "hf://x"})
    with pytest.raises(LoRAGenError, match="eval.metric='f1' is unknown"):
        LoRAGenModule(**TINY, eval={"metric": "f1"})
    with pytest.raises(LoRAGenError, match="optim has no field 'learning_rate'"):
        LoRAGenModule(**{**TINY, "optim": {"learning_rate": 1e-3}})
    with pytest.raises(LoRAGenError, match="router_noise='loud' is unknown"):
        LoRAGenModule(**TINY, router_noise="loud")


def test_prompt_sensitivity_rows_serve_other_prompts_loras(tmp_path, monkeypatch):
    """The rotated row serves each task's items with the next task's LoRA, the generic row with the task-free
    prompt's; both are paired with LoRA-Gen's own row, and the gate distances are reported."""
    from tests.conftest import randomize_pool

    L.seed_everything(0)
    module = LoRAGenModule(**TINY, eval={"reference": False, "zero_shot_reference": False})
    randomize_pool(module.model.pool, std=0.2)
    served, current = [], {}
    grade, serve = LoRAGenModule._grade_items, LoRAGenModule._served

    def serving(self, lora):
        current["lora"] = lora
        return serve(self, lora)

    def spy(self, stage, setting, batch, prompt_key, items, extra_tokens=0):
        served.extend((setting, batch["task"][i], current.get("lora")) for i in items)
        return grade(self, stage, setting, batch, prompt_key, items, extra_tokens)

    monkeypatch.setattr(LoRAGenModule, "_served", serving)
    monkeypatch.setattr(LoRAGenModule, "_grade_items", spy)
    _trainer(tmp_path).test(module, _data())
    results = module.last_results
    assert [r["key"] for r in results["rows"]] == ["loragen", "rotated", "generic"]
    own = {task: lora for setting, task, lora in served if setting == "loragen"}
    assert len({id(lora) for lora in own.values()}) == 4  # one LoRA per task
    tasks = sorted(own)
    for setting, task, lora in served:
        if setting == "rotated":  # another task's LoRA
            assert lora is not own[task] and any(lora is other for other in own.values())
        if setting == "generic":  # the task-free prompt's: none of the tasks'
            assert lora is not None and all(lora is not other for other in own.values())
    assert {(d["setting"], d["versus"]) for d in results["differences"]} == {
        ("loragen", "rotated"),
        ("loragen", "generic"),
    }
    distance = results["gate_distance"]
    assert distance["prompts"] == len(tasks) and 0 < distance["between_prompts"] <= 1 and 0 < distance["to_generic"]
    assert "Router gate distance" in (Path(tmp_path) / "results.md").read_text()


def test_untrained_generator_scores_exactly_like_the_zero_shot_edge(tmp_path):
    """B starts at zero, so before training the merged model is the base model: same accuracy."""
    module = LoRAGenModule(**TINY)
    _trainer(tmp_path).test(module, _data())
    rows = {r["key"]: r for r in module.last_results["rows"]}
    assert rows["loragen"]["accuracy"] == rows["zero_shot"]["accuracy"]
    assert rows["loragen"]["tokens_per_request"] == rows["zero_shot"]["tokens_per_request"]


def test_mixed_choice_and_free_form_batches_and_generation_scoring(tmp_path, monkeypatch):
    """Multiple-choice items are scored by log-likelihood, free-form ones by generation (graded by the
    task's extractor when registered); unparseable generations count as wrong and are counted."""
    mixed = tmp_path / "mixed.jsonl"
    rows = [
        {
            "system": "Answer true or false.",
            "input": "Question: is water wet?\nAnswer:",
            "output": "true",
            "options": ["true", "false"],
            "label": 0,
            "task": "boolq",
        },
        {"system": "Solve.", "input": "Question: 2+2?\nAnswer:", "output": "4", "task": "free"},
    ]
    mixed.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    module = LoRAGenModule(**TINY, eval={"max_new_tokens": 4})
    _trainer(tmp_path).test(module, _data(test_files=str(mixed)))
    result = {r["key"]: r for r in module.last_results["rows"]}["loragen"]
    assert set(result["accuracy"]) == {"boolq", "free"} and module.last_results["items"] == 2

    answers = iter(["I am not sure", "false", "4"])
    monkeypatch.setattr(LoRAGenModule, "_generate_text", lambda self, prompt: next(answers))
    module.evaluation = dataclasses.replace(
        module.evaluation, scoring="generate", reference=False, zero_shot_reference=False
    )
    dm = _data(test_files=str(mixed))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    module.trainer.datamodule = dm  # the DataModule grades its tasks' answers (boolq: its extractor)
    verdict = lambda i: module._verdicts(batch, "prompt", [i])[i][2:]  # noqa: E731  (acc, acc_norm, unparseable)
    assert verdict(0) == (0, 0, 1)  # boolq extractor finds no true/false: unparseable (and wrong)
    assert verdict(0) == (0, 0, 0)  # "false" parsed, wrong
    assert verdict(1) == (1, 1, 0)  # free-form exact match


def test_init_from_loads_trained_weights_without_optimizer_state(tmp_path):
    module = LoRAGenModule(**TINY)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, _data())
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    started = LoRAGenModule(**TINY, init_from=str(path))
    for key, value in module.model.trainable_state_dict().items():
        assert torch.equal(value, started.model.trainable_state_dict()[key]), key
    trainer = _trainer(tmp_path / "b", max_steps=1)
    trainer.fit(started, _data())
    assert trainer.global_step == 1  # a fresh run (no step count or optimizer state carried over)
    with pytest.raises(LoRAGenError, match="edge_arch"):
        LoRAGenModule(**{**TINY, "edge": "tiny:gemma"}, init_from=str(path))


def test_evaluation_generates_once_per_task_and_verifies_the_restore(tmp_path, monkeypatch):
    """One generator run per epoch for every task's prompt (none per batch); the model's own switches decide
    the rows; and a merge that is not undone stops the evaluation (the base class checks every edge weight)."""
    from tests.conftest import randomize_pool

    L.seed_everything(0)
    module = LoRAGenModule(**TINY, eval={"reference": True, "zero_shot_reference": False})
    randomize_pool(module.model.pool, std=0.2)
    calls = []
    generate = module.model.generate
    module.model.generate = lambda ids, mask: calls.append(ids.shape[0]) or generate(ids, mask)
    _trainer(tmp_path).test(module, _data(eval_batch_size=3))
    assert calls == [4, 1]  # one generator run for the 4 tasks' prompts (+ the task-free prompt), none per batch
    assert [r["key"] for r in module.last_results["rows"]] == ["loragen", "rotated", "generic", "prompted"]
    first = module.last_results["rows"][0]["accuracy"]
    module.model.generate = generate
    _trainer(tmp_path / "b").test(module, _data(eval_batch_size=3))
    assert module.last_results["rows"][0]["accuracy"] == first

    release = LoRAGenModule.release_serving

    def corrupting(self):  # a restore that leaves one weight off by a bit
        release(self)
        with torch.no_grad():
            next(self.model.edge.parameters()).view(-1)[0] += 1e-3

    monkeypatch.setattr(LoRAGenModule, "release_serving", corrupting)
    with pytest.raises(RuntimeError, match="changed during evaluation"):
        _trainer(tmp_path / "c").test(module, _data(eval_batch_size=3))

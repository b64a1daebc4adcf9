"""LoRA-Gen's specificity signals (``model.init_args.specificity``) on tiny models: each term is zero when its
condition holds and positive when it does not, its gradient reaches the generator, and all three train in
a real Lightning run."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from loragen import LoRAGenError
from loragen.data.records import Record
from loragen.data.tokenize import Collator
from loragen.models.config import GENERIC_PROMPT, SpecificityConfig
from loragen.models.lora_gen_module import LoRAGenModule
from loragen.models.specificity import distillation_loss, margin_loss, other_task_rows
from tests.conftest import SHARED, TINY, _data, _trainer, needs_shared, randomize_pool


def _module(**specificity) -> LoRAGenModule:
    torch.manual_seed(0)
    return LoRAGenModule(**TINY, specificity=SpecificityConfig(**specificity))


def _batch(module: LoRAGenModule, records: list[Record], teacher: bool = False) -> dict:
    dm = _data()
    tok = dm._tokenizer()
    examples = [tok.train_example(r, teacher=teacher) for r in records]
    return Collator(tok.cloud.pad_token_id, tok.edge.pad_token_id)(examples)


def _quickstart_batch(module: LoRAGenModule) -> dict:
    dm = _data(batch_size=8)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        if len(set(batch["task"])) > 1:
            return batch
    raise AssertionError("no batch with two tasks")


def _terms(module: LoRAGenModule, batch: dict) -> dict[str, torch.Tensor]:
    hidden, _ = module.training_forward(batch)
    return {name: term for name, (_, term) in module.extra_losses(batch, hidden).items()}


def _grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_settings_are_checked_and_the_evaluation_probe_is_never_a_null_prompt():
    assert not SpecificityConfig().active and SpecificityConfig(margin_coef=1.0).active
    with pytest.raises(LoRAGenError, match="specificity.margin_coef=-1.0 must be >= 0"):
        SpecificityConfig(margin_coef=-1.0)
    with pytest.raises(LoRAGenError, match="evaluation's task-free probe"):
        SpecificityConfig(null_coef=1.0, null_prompts=["", GENERIC_PROMPT])
    with pytest.raises(LoRAGenError, match="needs at least one"):
        SpecificityConfig(null_coef=1.0, null_prompts=[])


def test_margin_term_is_zero_when_the_own_lora_wins_by_the_margin():
    own, other, valid = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-2.0, -2.2, -0.1]), torch.ones(3, dtype=bool)
    assert margin_loss(own, other, valid, margin=0.5).item() == pytest.approx((0 + 0.3 + 0.9) / 3)
    assert margin_loss(own, own - 0.5, valid, margin=0.5).item() == 0.0
    assert margin_loss(own, other, torch.zeros(3, dtype=bool), margin=0.5).item() == 0.0
    assert other_task_rows(["a", "a", "b", "c", "b"]).tolist() == [2, 2, 3, 0, 3]
    assert other_task_rows(["a", "a"]) is None


def test_margin_term_compares_the_own_and_another_tasks_lora_and_trains_both():
    module = _module(margin_coef=1.0, margin=0.5)
    batch = _quickstart_batch(module)
    untrained = _terms(module, batch)["margin"]  # B = 0: every prompt's LoRA is the untouched edge
    assert untrained.item() == pytest.approx(0.5, abs=1e-6)
    randomize_pool(module.model.pool, std=0.3)
    term = _terms(module, batch)["margin"]
    assert term.item() != pytest.approx(0.5, abs=1e-4)
    term.backward()
    assert _grad_norm(module.model.router.parameters()) > 0 and _grad_norm(module.model.pool.parameters()) > 0
    single = {k: v[:1] if hasattr(v, "shape") else v[:1] for k, v in batch.items()}
    assert _terms(module, single)["margin"].item() == 0.0  # one task: nothing to compare with


def test_sibling_prompts_come_from_the_same_dataset_in_another_form():
    from loragen.data.datamodule import sibling_prompts

    records = [
        Record("Answer yes if the passage supports it.", "q1", "yes", "boolq"),
        Record("Say yes when the passage backs the claim.", "q2", "no", "boolq"),
        Record("Answer no if the passage supports it.", "q1", "no", "boolq.swapped"),
        Record("Is the review positive?", "r1", "yes", "sst2"),  # one form only: no sibling
    ]
    drawn = sibling_prompts(records)
    assert drawn[id(records[0])] == drawn[id(records[1])] == "Answer no if the passage supports it."
    assert drawn[id(records[2])] in (records[0].system, records[1].system)
    assert id(records[3]) not in drawn
    assert sibling_prompts(records) == drawn  # a fixed draw


def _sibling_batch(module: LoRAGenModule, records: list[Record], siblings: list[str | None]) -> dict:
    dm = _data()
    tok = dm._tokenizer()
    examples = [tok.train_example(r) for r in records]
    for example, text in zip(examples, siblings, strict=True):
        example["sibling_system_ids"] = tok.system_ids(text) if text is not None else None
    return Collator(tok.cloud.pad_token_id, tok.edge.pad_token_id)(examples)


def test_sibling_margin_compares_the_own_lora_with_the_sibling_prompts_and_trains_the_generator():
    records = [
        Record("Answer yes if the passage supports it.", "Passage: sky is blue. Q: is the sky blue?", "yes", "boolq"),
        Record(
            "Answer no if the passage supports it.", "Passage: grass is red. Q: is grass red?", "yes", "boolq.swapped"
        ),
    ]
    same = _module(margin_coef=1.0, margin=0.0, margin_against="sibling")
    randomize_pool(same.model.pool, std=0.3)
    own_prompts = _sibling_batch(same, records, [r.system for r in records])
    assert _terms(same, own_prompts)["margin"].item() == pytest.approx(0.0, abs=1e-7)  # the sibling is the own LoRA
    module = _module(margin_coef=1.0, margin=0.5, margin_against="sibling")
    randomize_pool(module.model.pool, std=0.3)
    swapped = _sibling_batch(module, records, [records[1].system, records[0].system])
    term = _terms(module, swapped)["margin"]
    assert term.item() > 0 and term.item() != pytest.approx(0.5, abs=1e-4)  # the two LoRAs differ
    term.backward()
    assert _grad_norm(module.model.router.parameters()) > 0 and _grad_norm(module.model.pool.parameters()) > 0
    none = _sibling_batch(module, records, [None, None])
    assert none["sibling_valid"].tolist() == [False, False]
    assert _terms(module, none)["margin"].item() == 0.0  # no sibling: no counterfactual
    with pytest.raises(LoRAGenError, match="needs each training example's sibling system prompt"):
        _terms(module, _batch(module, records))
    with pytest.raises(LoRAGenError, match="margin_against='other' is unknown: choose one of batch, sibling"):
        SpecificityConfig(margin_against="other")


def test_the_datamodule_adds_sibling_prompts_when_the_model_asks(tmp_path):
    module = _module(margin_coef=0.5, margin_against="sibling")
    assert module.train_sibling_prompt and not _module(margin_coef=0.5).train_sibling_prompt
    dm = _data()
    trainer = _trainer(tmp_path, max_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    examples = dm.examples["train+sibling"]
    assert examples and all("sibling_system_ids" in e for e in examples)
    assert torch.isfinite(trainer.callback_metrics["train/margin"])


def test_delta_norm_equals_the_materialised_delta():
    module = _module()
    randomize_pool(module.model.pool, std=0.3)
    pool = module.model.pool
    gates = torch.zeros(pool.num_layers, pool.num_experts)
    gates[:, 1], gates[:, 3] = 0.7, 0.3
    lora = pool.assemble(gates)
    direct = sum(float(lora.delta_weight(s.path).detach().pow(2).sum()) for s in pool.sites) / len(pool.sites)
    assert float(pool.delta_sq_norm(lora.indices, lora.weights).detach()) == pytest.approx(direct, rel=1e-4)


def test_null_term_is_zero_for_an_untouched_edge_and_training_shrinks_it():
    module = _module(null_coef=1.0)
    batch = _quickstart_batch(module)
    assert _terms(module, batch)["null"].item() == 0.0  # B = 0: the null prompts' LoRA adds nothing
    randomize_pool(module.model.pool, std=0.3)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.05)
    before = _terms(module, batch)["null"]
    assert before.item() > 0
    for _ in range(3):
        opt.zero_grad()
        _terms(module, batch)["null"].backward()
        opt.step()
    assert _terms(module, batch)["null"].item() < 0.9 * before.item()


def test_distillation_is_zero_when_the_student_reads_what_the_teacher_reads():
    assert distillation_loss(torch.randn(3, 7), torch.randn(3, 7), 2.0).item() > 0
    same = torch.randn(3, 7)
    assert distillation_loss(same, same.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    module = _module(distill_coef=1.0)
    randomize_pool(module.model.pool, std=0.3)
    records = [
        Record("", "Question: What is 2 + 2?\nAnswer:", "4", "math"),
        Record("", "Question: Name a colour.\nAnswer:", "red", "colours"),
    ]
    with torch.no_grad():
        for p in module.model.pool.B.values():
            p.zero_()  # no LoRA and no system prompt: the student is exactly the teacher
    same = _terms(module, _batch(module, records, teacher=True))["distill"].item()
    assert same == pytest.approx(0.0, abs=1e-7)
    prompted = [Record("Always answer in French. " * 4, r.input, r.output, r.task) for r in records]
    apart = _terms(module, _batch(module, prompted, teacher=True))["distill"]
    assert apart.item() > 1e-6 and apart.item() > 100 * abs(same)  # reading the prompt changes the target
    randomize_pool(module.model.pool, std=0.3)
    _terms(module, _batch(module, prompted, teacher=True))["distill"].backward()
    assert _grad_norm(module.model.pool.parameters()) > 0  # the student's LoRA is what distillation trains


def test_distillation_without_teacher_sequences_says_how_to_get_them():
    module = _module(distill_coef=1.0)
    batch = _batch(module, [Record("Be brief.", "Hi?", "Hello", "t")])
    with pytest.raises(LoRAGenError, match="needs the training sequences with the system prompt"):
        _terms(module, batch)


def test_all_signals_train_in_a_lightning_run_and_are_logged(tmp_path):
    module = _module(margin_coef=0.5, null_coef=0.1, distill_coef=0.5)
    trainer = _trainer(tmp_path, max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=_data())
    logged = trainer.callback_metrics
    assert trainer.global_step == 2
    for name in ("train/margin", "train/null", "train/distill", "train/ce"):
        assert name in logged and torch.isfinite(logged[name]), name
    assert module.hparams["specificity"]["margin_coef"] == 0.5  # stored with the weights
    json.dumps(module.hparams["specificity"])


@needs_shared
def test_paraphrase_row_serves_the_prompt_read_with_the_held_out_description(tmp_path):
    from loragen.data.task_datamodule import TaskDataModule
    from loragen.models.config import EvalConfig

    torch.manual_seed(0)
    module = LoRAGenModule(**TINY, eval=EvalConfig(reference=False, zero_shot_reference=False))
    randomize_pool(module.model.pool, std=0.3)
    data = TaskDataModule(
        test_tasks=["rte:val", "rte.swapped:val", "arc_easy.letter:test"],
        data_dir=str(SHARED),
        cloud="tiny:qwen2",
        edge="tiny:llama",
        shots=1,
        limit_per_task=6,
        eval_batch_size=8,
        reference=False,
    )
    trainer = _trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(module, datamodule=data)
    results = module.last_results
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == ["loragen", "rotated", "generic", "paraphrase"] and rows["paraphrase"]["n"] == 18
    assert any(d["versus"] == "paraphrase" for d in results["differences"])
    record = next(r for r in data.load("test") if r.task == "rte")
    held = TaskDataModule(
        test_tasks=["rte:val"],
        data_dir=str(SHARED),
        cloud="tiny:qwen2",
        edge="tiny:llama",
        shots=1,
        eval_description="heldout",
    ).load("test")[0]
    assert record.meta["heldout_system"] == held.system != record.system  # the prompt the paraphrase row reads

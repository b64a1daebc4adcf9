"""Baselines in the LoRA-Gen harness and ``loragen compare`` (issue: baselines and the comparison table)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from loragen import LoRAGenError
from loragen.data.tokenize import Collator
from loragen.models.baselines import (
    BaseModel,
    EdgeBaselineModule,
    LoRABaseline,
    LoRAMoEBaseline,
    MixLoRABaseline,
    PromptTuningBaseline,
)
from tests.conftest import _data, _trainer

ROOT = Path(__file__).resolve().parents[1]
EDGE = {"edge": "tiny:llama", "cloud": "tiny:qwen2", "optim": {"lr": 0.01, "warmup_steps": 1}}
TRAINED = {
    "lora": (LoRABaseline, {}),
    "lora_prompted": (LoRABaseline, {"system_prompt": True}),
    "mixlora": (MixLoRABaseline, {"pool": {"num_experts": 4, "top_k": 2, "rank": 4}, "attention_rank": 4}),
    "loramoe": (LoRAMoEBaseline, {"pool": {"num_experts": 4, "rank": 4}}),
    "prompt_tuning": (PromptTuningBaseline, {"num_virtual_tokens": 16}),
}


def _fixed_batch(module, size=4):
    """One training batch as the DataModule builds it for this method (system prompt in context or not)."""
    dm = _data()
    dm.setup("fit")
    tok = dm._tokenizer()
    examples = [tok.train_example(r, with_system=module.train_with_system_prompt) for r in dm.load("train")[:size]]
    return Collator(tok.cloud.pad_token_id, tok.edge.pad_token_id)(examples)


def _loss(module, batch):
    """The method's own training_step (answer loss + its auxiliary term), called outside a Trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        return module.training_step(batch, 0)


@pytest.mark.parametrize("name", list(TRAINED))
def test_each_baseline_lowers_its_loss_on_a_fixed_batch(name):
    cls, kw = TRAINED[name]
    module = cls(**EDGE, **kw)
    with torch.no_grad():
        # The random tiny head (std 0.02 after the final RMSNorm) caps any logit change near 0.6, i.e. a CE drop
        # of ~12% even for perfect memorisation: scale it so the check measures the adapters, not the head.
        module.edge.lm_head.weight.mul_(5.0)
    batch = _fixed_batch(module)
    frozen = {n: p.detach().clone() for n, p in module.edge.named_parameters() if not p.requires_grad}
    optimizer = module.configure_optimizers()["optimizer"]  # the shared AdamW (+ schedule) of every method
    module.train()
    losses = []
    for _ in range(25):
        loss = _loss(module, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # a soft prompt only steers a tiny random model through attention (every layer re-normalises its
    # input), so its reachable drop is small; the adapters can fit the batch
    target = losses[0] - 0.1 if name == "prompt_tuning" else 0.9 * losses[0]
    assert losses[-1] < target, f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert all(torch.equal(p, frozen[n]) for n, p in module.edge.named_parameters() if n in frozen)


def test_lora_merged_and_unmerged_outputs_agree():
    module = LoRABaseline(**EDGE)
    with torch.no_grad():
        for name, param in module.edge.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    weights = {n: p.detach().clone() for n, p in module.edge.named_parameters() if "base_layer" in n}
    module.eval()
    with torch.no_grad():
        unmerged = module.edge(input_ids=ids).logits
        with module.deployed():
            merged = module.edge(input_ids=ids).logits
            changed = any(not torch.equal(p, weights[n]) for n, p in module.edge.named_parameters() if n in weights)
        after = module.edge(input_ids=ids).logits
        base = module._peft.get_base_model()
        with module._peft.disable_adapter():
            plain = base(input_ids=ids).logits
    assert changed, "deployed() did not merge the adapter into the dense weights"
    assert torch.allclose(merged, unmerged, atol=1e-4), (merged - unmerged).abs().max()
    assert torch.allclose(after, unmerged, atol=1e-5)
    assert all(torch.equal(p, weights[n]) for n, p in module.edge.named_parameters() if n in weights)  # exact
    assert (plain - unmerged).abs().max() > 1e-3  # the adapter matters, so the agreement above means something


def test_prompt_tuning_scoring_equals_a_full_forward_with_the_soft_prompt():
    from loragen.eval.scoring import score_requests

    module = PromptTuningBaseline(**EDGE, num_virtual_tokens=5)
    module.eval()
    prompt, options = [5, 17, 40, 9], [[33, 12], [7], [50, 51, 52]]
    requests = [(prompt, option) for option in options]
    with torch.no_grad():
        fast = torch.tensor(score_requests(module.edge, requests, prefix_embeds=module.prefix_embeds()))
        slow = []
        for option in options:
            ids = torch.tensor([prompt + option])
            hidden = module.hidden_states(ids, torch.ones_like(ids))
            logp = torch.log_softmax(module.edge.lm_head(hidden).float(), -1)[0]
            slow.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(option)))
        plain = torch.tensor(score_requests(module.edge, requests))
    assert torch.allclose(fast, torch.tensor(slow), atol=1e-4)
    assert (fast - plain).abs().max() > 1e-3  # the soft prompt is really read


def test_baseline_checkpoints_hold_only_trained_weights_and_refuse_other_methods(tmp_path):
    module = MixLoRABaseline(**EDGE, pool={"num_experts": 2, "top_k": 1, "rank": 2}, attention_rank=0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    checkpoint = {"state_dict": module.state_dict(), "global_step": 7}
    module.on_save_checkpoint(checkpoint)
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trained
    fresh = MixLoRABaseline(**EDGE, pool={"num_experts": 2, "top_k": 1, "rank": 2}, attention_rank=0)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    ids = torch.randint(3, 200, (1, 9))
    with torch.no_grad():
        assert torch.equal(fresh.edge(input_ids=ids).logits, module.edge(input_ids=ids).logits)
    assert fresh.trained_steps == 7
    other = {"state_dict": dict(checkpoint["state_dict"]), "loragen": checkpoint["loragen"]}
    with pytest.raises(LoRAGenError, match="method: checkpoint 'mixlora'"):
        LoRAMoEBaseline(**EDGE, pool={"num_experts": 2, "top_k": 1, "rank": 2}).on_load_checkpoint(other)
    with pytest.raises(LoRAGenError, match=r"has shape \(2, .*trained with other settings"):
        wider = MixLoRABaseline(**EDGE, pool={"num_experts": 2, "top_k": 1, "rank": 3}, attention_rank=0)
        wider.on_load_checkpoint(other)


def test_bad_baseline_settings_fail_in_one_line():
    """Each refused before the edge model loads (a typed group validates itself; a method checks its own)."""
    from loragen.models.edge_method import check_method_args

    baselines = "loragen.models.baselines."
    with pytest.raises(LoRAGenError, match="pool.top_k=3 must be between 1 and pool.num_experts=2"):
        MixLoRABaseline(**EDGE, pool={"num_experts": 2, "top_k": 3})
    with pytest.raises(LoRAGenError, match="num_virtual_tokens=0"):
        check_method_args(baselines + "PromptTuningBaseline", {"num_virtual_tokens": 0})
    with pytest.raises(LoRAGenError, match="scoring='vote' is unknown"):
        check_method_args(baselines + "LoRABaseline", {"eval": {"scoring": "vote"}})
    with pytest.raises(LoRAGenError, match="LoRABaseline has no argument 'num_virtual_tokens'"):
        check_method_args(baselines + "LoRABaseline", {"num_virtual_tokens": 4})
    with pytest.raises(LoRAGenError, match=r"lora_dropout=1.5 must be in \[0, 1\)"):
        LoRABaseline(**EDGE, lora_dropout=1.5)


def test_base_model_refuses_to_fit_and_few_shot_pays_for_the_system_prompt(tmp_path):
    results = {}
    for few_shot in (False, True):
        module = BaseModel(**EDGE, system_prompt=few_shot)
        trainer = _trainer(tmp_path, limit_test_batches=2)
        trainer.test(module, datamodule=_data(), verbose=False)
        results[few_shot] = module.last_results
    zero, few = results[False], results[True]
    assert zero["trainable_params"] == 0 and zero["mergeable"]
    assert few["rows"][0]["tokens_per_request"] > 2 * zero["rows"][0]["tokens_per_request"]
    assert few["rows"][0]["setting"] == "base model, few-shot system prompt"
    with pytest.raises(LoRAGenError, match="nothing to fit"):
        _trainer(tmp_path).fit(BaseModel(**EDGE), datamodule=_data())


@pytest.mark.heavy
def test_compare_runs_methods_through_the_cli_writes_the_table_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "-m",
        "loragen.cli",
        "compare",
        "--base",
        str(ROOT / "configs" / "tiny.yaml"),
        "--methods",
        "loragen,base,few_shot,lora_prompted,loramoe",
        "--set",
        "loramoe.pool.num_experts=2",
        "--out",
        str(out),
        "--trainer.max_steps",
        "2",
        "--data.init_args.limit_per_task",
        "2",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["loragen", "base", "few_shot", "lora_prompted", "loramoe"]
    by = {r["method"]: r for r in rows}
    assert [by[m]["mergeable"] for m in by] == ["True", "True", "True", "True", "False"]
    assert int(by["base"]["trainable_params"]) == 0 < int(by["lora_prompted"]["trainable_params"])
    assert float(by["few_shot"]["tokens_per_request"]) > 2 * float(by["base"]["tokens_per_request"])
    assert float(by["lora_prompted"]["tokens_per_request"]) == float(by["few_shot"]["tokens_per_request"])
    assert by["loragen"]["trained_steps"] == by["loramoe"]["trained_steps"] == "2"  # the same step budget
    assert by["base"]["trained_steps"] == ""
    table = json.loads((out / "comparison.json").read_text())
    assert "max_steps=2" in table["budget"] and table["rows"][0]["setting"].startswith("LoRA-Gen")
    assert "| trainable params | mergeable |" in (out / "comparison.md").read_text()
    for method in ("loragen", "lora_prompted", "loramoe"):  # what each trained method cost, measured per run
        assert float(by[method]["fit_seconds"]) > 0 and by[method]["resumed"] == "False"
        assert float(by[method]["peak_rss_mb"]) > 200 and float(by[method]["test_seconds"]) > 0
    assert by["base"]["fit_seconds"] == "" and float(by["base"]["peak_rss_mb"]) > 200
    assert "| fit time | peak RSS (GB) |" in (out / "comparison.md").read_text()
    diffs = {(d["method"], d["group"]): d for d in table["differences"]}  # every method − LoRA-Gen, item by item
    assert {m for m, _ in diffs} == {"base", "few_shot", "lora_prompted", "loramoe"}
    assert {g for _, g in diffs} == {"seen", "all"}  # tiny.yaml names no unseen dataset

    def own(method):  # (task, item) -> acc_norm of the method's own row; tiny.yaml's records have no source id
        lines = [json.loads(x) for x in next((out / method).rglob("items.jsonl")).read_text().splitlines()]
        first = lines[0]["setting"]
        return {(x["task"], x["source"] or x["uid"]): x["acc_norm"] for x in lines if x["setting"] == first}

    few, gen = own("few_shot"), own("loragen")
    tasks = sorted({t for t, _ in gen})
    expected = sum(sum(few[k] - gen[k] for k in gen if k[0] == t) / sum(k[0] == t for k in gen) for t in tasks)
    assert diffs[("few_shot", "all")]["diff"] == pytest.approx(expected / len(tasks), abs=1e-9)
    assert diffs[("few_shot", "all")]["n"] == len(gen)
    assert "| method | seen (4 tasks) | LoRA-Gen − method, seen |" in (out / "comparison.md").read_text()
    assert "- seen tasks" in (out / "comparison.md").read_text().split("Read in words")[1]  # and read in words
    assert (out / "comparison.png").stat().st_size > 1000
    assert "num_experts: 2" in (out / "loramoe" / "config.yaml").read_text()
    assert "activation_checkpointing: true" in (out / "lora_prompted" / "config.yaml").read_text()  # long prompts
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 5
    changed = subprocess.run(
        [*cmd[:-4], "--trainer.max_steps", "3", *cmd[-2:]], capture_output=True, text=True, cwd=ROOT, timeout=600
    )  # other options: the stored rows are not reused silently
    assert changed.returncode == 2 and "made with another configuration" in changed.stderr, changed.stderr[-2000:]
    assert "| trained steps |" in (out / "comparison.md").read_text()


@pytest.mark.heavy
def test_compare_reports_a_failed_method_and_still_tables_the_others(tmp_path):
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "-m",
        "loragen.cli",
        "compare",
        "--base",
        str(ROOT / "configs" / "tiny.yaml"),
        "--methods",
        "lora,base",
        "--set",
        "lora.pool.target_modules=[nope_proj]",
        "--out",
        str(out),
        "--data.init_args.limit_per_task",
        "1",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 2 and "1 method(s) failed: lora" in run.stderr, run.stderr[-2000:]
    assert "nope_proj" in (out / "lora" / "run.log").read_text()
    with open(out / "comparison.csv") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == ["base"]


@pytest.mark.heavy
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--methods", "loragen,dora"], "unknown method(s) ['dora']"),
        (
            ["--model.init_args.pool.rank", "2"],
            "--model.init_args.pool.rank would reach every method's model: use --set",
        ),
        (["--set", "mixlora.pool.rank=2", "--methods", "lora"], "names method 'mixlora', which is not compared"),
        (["--set", "lora.top_k=9", "--methods", "lora"], "LoRABaseline has no argument 'top_k'"),
        (["--set", "lora.pool.topk=9", "--methods", "lora"], "pool has no field 'topk'"),
        (["--set", "mixlora.pool.top_k=9", "--methods", "mixlora"], "mixlora: pool.top_k=9 must be between 1 and"),
    ],
)
def test_compare_rejects_bad_requests_before_running_anything(tmp_path, args, fragment):
    cmd = [
        sys.executable,
        "-m",
        "loragen.cli",
        "compare",
        "--base",
        str(ROOT / "configs" / "tiny.yaml"),
        "--out",
        str(tmp_path / "cmp"),
        *args,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and fragment in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("name", ["lora", "lora_prompted", "mixlora", "loramoe", "prompt_tuning", "base_few_shot"])
def test_baseline_configs_layer_on_a_loragen_config_and_keep_its_pair(name, capsys):
    from tests.conftest import _print_config

    printed = _print_config(capsys, "configs/tiny.yaml", f"configs/baselines/{name}.yaml")
    model = printed["model"]
    assert model["class_path"].startswith("loragen.models.baselines.")
    assert model["init_args"]["edge"] == "tiny:llama" and model["init_args"]["cloud"] == "tiny:qwen2"
    assert model["init_args"]["optim"]["lr"] == 0.01  # the optimizer group of the config below carries over
    if name in ("lora", "lora_prompted", "mixlora", "loramoe"):
        assert model["init_args"]["pool"]["num_experts"] == 4  # the same pool as the LoRA-Gen run


def test_lora_adapter_export_loads_in_peft_with_the_same_outputs(tmp_path):
    from peft import PeftModel

    from loragen.backbones import load_backbone

    module = LoRABaseline(**EDGE)
    with torch.no_grad():
        for name, param in module.edge.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    path = module.export_adapter(tmp_path / "adapter")
    assert (path / "adapter_config.json").is_file() and not list(tmp_path.glob(".adapter.tmp-*"))
    reloaded = PeftModel.from_pretrained(load_backbone("tiny:llama").model, str(path)).eval()
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(3))
    module.eval()
    with torch.no_grad():
        ours, theirs = module.edge(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_prompt_tuning_and_moe_baselines_run_on_a_bf16_edge():
    from loragen.eval.scoring import score_requests

    modules = (
        PromptTuningBaseline(**EDGE, num_virtual_tokens=4),
        MixLoRABaseline(**EDGE, pool={"num_experts": 2, "rank": 2}),
    )
    for module in modules:
        for param in module.edge.parameters():
            if not param.requires_grad:  # a bf16 edge, trained weights kept in float32 (as PEFT does)
                param.data = param.data.to(torch.bfloat16)
        if isinstance(module, PromptTuningBaseline):
            assert module.prefix_embeds().dtype == torch.bfloat16
        loss = _loss(module, _fixed_batch(module, size=2))
        loss.backward()
        trained = [p for p in module.parameters() if p.requires_grad]
        assert torch.isfinite(loss) and all(p.dtype == torch.float32 and p.grad is not None for p in trained)
        with torch.no_grad():
            scores = score_requests(
                module.edge, [([5, 6, 7], [8]), ([5, 6, 7], [9, 10])], prefix_embeds=module.prefix_embeds()
            )
        assert torch.isfinite(torch.tensor(scores)).all()


def test_compare_method_configs_instantiate_every_callback_of_a_real_config(tmp_path):
    """Each method's config keeps only callbacks that accept their arguments (the quickstart's included)."""
    import importlib

    import yaml

    from loragen.compare import METHODS, method_config

    base = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    for method in METHODS:
        config = method_config(base, method, {}, tmp_path / method)
        for callback in config["trainer"].get("callbacks") or []:
            module, _, name = callback["class_path"].rpartition(".")
            getattr(importlib.import_module(module), name)(**(callback.get("init_args") or {}))


class NormTuning(EdgeBaselineModule):
    """A method that is not shipped, written as a new one would be: train the edge's RMSNorm weights."""

    METHOD = "norm_tuning"
    LABEL = "norm tuning"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name, param in self.edge.named_parameters():
            param.requires_grad_("norm" in name)


def test_a_new_method_is_one_subclass_and_gets_training_evaluation_and_checkpoints(tmp_path):
    """The base owns the step, evaluation, results, the checkpoint filter and the identity check: a method
    that only installs what it trains fits, tests, saves only its weights and reloads them."""
    module = NormTuning(**EDGE)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=_data())
    trainer.test(module, datamodule=_data(), verbose=False)
    results = module.last_results
    assert [r["key"] for r in results["rows"]] == ["norm_tuning"] and results["items"] == 12
    assert results["trainable_params"] == sum(p.numel() for n, p in module.edge.named_parameters() if "norm" in n)
    path = tmp_path / "norm.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=True)
    assert set(stored["state_dict"]) == {n for n, p in module.named_parameters() if p.requires_grad}
    assert stored["hyper_parameters"]["optim"]["lr"] == 0.01
    assert stored["loragen"]["baseline"]["method"] == "norm_tuning"
    fresh = NormTuning.load_from_checkpoint(path, weights_only=True)
    trained = dict(module.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in fresh.named_parameters() if p.requires_grad)
    with pytest.raises(LoRAGenError, match="method: checkpoint 'norm_tuning'"):
        LoRABaseline(**EDGE).on_load_checkpoint(stored)


def test_an_exception_inside_an_evaluation_epoch_unmerges_the_adapter(tmp_path, monkeypatch):
    """Lightning reports an exception to callbacks only: the module's own callback still undoes the epoch's
    merge, so a module reused in the same process serves (and trains) on its original weights."""
    module = LoRABaseline(**EDGE)
    with torch.no_grad():
        for name, param in module.edge.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    before = {n: p.detach().clone() for n, p in module.edge.named_parameters()}

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(LoRABaseline, "_grade_items", fail)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path).test(module, datamodule=_data(), verbose=False)
    assert not module._serving and not module.edge.model.layers[0].self_attn.q_proj.merged
    assert all(torch.equal(p, before[n]) for n, p in module.edge.named_parameters())


def test_activation_checkpointing_keeps_gradients_and_stores_a_fraction_of_the_activations():
    from loragen.models.components import checkpointed
    from loragen.models.components.expert_pool import decoder_layers

    ids = torch.randint(3, 200, (2, 64), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)

    def step(checkpointing):
        module = LoRABaseline(**EDGE, system_prompt=True, activation_checkpointing=checkpointing)
        with torch.no_grad():
            for name, param in module.edge.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
        module.train()  # the frozen edge stays in eval mode, as in training
        stored = []

        def pack(tensor):
            stored.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = module.hidden_states(ids, mask).pow(2).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.edge.named_parameters() if p.grad is not None}
        return module, loss.detach(), grads, sum(stored)

    _, plain_loss, plain_grads, plain_bytes = step(False)
    module, loss, grads, saved = step(True)
    assert torch.allclose(loss, plain_loss, atol=1e-6) and grads.keys() == plain_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, plain_grads[name], atol=1e-6, rtol=1e-4), name
    assert saved < plain_bytes / 3, (saved, plain_bytes)  # only each layer's inputs are kept for backward
    layers = decoder_layers(module.edge)[1]
    assert all("forward" not in layer.__dict__ for layer in layers)  # the layers are as they were after the pass
    with torch.no_grad():  # outside a grad-enabled forward the patched layers compute exactly what they did
        with checkpointed(layers):
            inside = module.edge.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        outside = module.edge.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    assert torch.equal(inside, outside)

    class Hooked(torch.nn.Module):  # a layer whose instance holds its own forward (as some wrappers install)
        def forward(self, x):
            return x

    hooked = Hooked()
    own = hooked.forward = lambda x: 2 * x
    with checkpointed([hooked]):
        assert torch.equal(hooked(torch.ones(2, requires_grad=True)), torch.full((2,), 2.0))
    assert hooked.forward is own

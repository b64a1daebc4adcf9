"""Numeric claims of DESIGN.md §1.4-1.7: functional = merged = PEFT, exact unmerge, gradient flow."""

from __future__ import annotations

import json

import pytest
import torch

from loragen import LoRAGenError
from loragen.backbones import load_backbone
from loragen.models.components.edge_lora import save_peft_adapter
from loragen.models.components.expert_pool import ExpertPool
from loragen.models.components.lora_gen import LoRAGen
from tests.conftest import randomize_pool

PROMPTS = ["You are a math tutor.", "Answer yes or no.", "Translate to French.", "You are a math tutor."]
INPUTS = ["2+2?", "Is the sky blue today?", "good morning", "3 + 3 equals"]


def _model(tiny, cloud="qwen2", edge="llama", **kw):
    model = LoRAGen(tiny(cloud), tiny(edge), num_experts=4, top_k=2, rank=4, router_hidden=16, **kw)
    randomize_pool(model.pool)
    return model


def _enc(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def test_untrained_pool_leaves_edge_unchanged(tiny):
    model = LoRAGen(tiny("qwen2"), tiny("llama"), num_experts=4, top_k=2, rank=4)
    s_ids, s_mask = _enc(tiny("qwen2").tokenizer, PROMPTS)
    x_ids, x_mask = _enc(tiny("llama").tokenizer, INPUTS)
    out, _ = model(s_ids, s_mask, x_ids, x_mask)
    with torch.no_grad():
        base = model.edge(input_ids=x_ids, attention_mask=x_mask).logits
    assert torch.equal(out.logits.detach(), base)


def test_assemble_equals_the_gated_sum_of_experts(tiny):
    pool = ExpertPool(tiny("llama").model, num_experts=4, rank=3, lora_alpha=6.0)
    randomize_pool(pool)
    gates = torch.zeros(pool.num_layers, 4)
    gates[:, 1], gates[:, 3] = 0.7, 0.3
    lora = pool.assemble(gates)
    assert lora.rank == 6
    site = pool.sites[5]
    a, b = pool.factors(site)
    expected = 2.0 * (0.7 * b[1] @ a[1] + 0.3 * b[3] @ a[3])
    assert torch.allclose(lora.delta_weight(site.path), expected, atol=1e-6)


def test_unknown_target_lists_the_linears_the_edge_has(tiny):
    with pytest.raises(LoRAGenError, match=r"match no linear.*down_proj.*q_proj"):
        ExpertPool(tiny("llama").model, ["qkv_proj"])


@pytest.mark.parametrize("cloud, edge", [("qwen2", "llama"), ("llama", "gemma"), ("gemma", "qwen2")])
def test_functional_path_matches_merged_path_for_several_prompts(tiny, cloud, edge):
    model = _model(tiny, cloud, edge).eval()
    s_ids, s_mask = _enc(tiny(cloud).tokenizer, PROMPTS)
    x_ids, x_mask = _enc(tiny(edge).tokenizer, INPUTS)
    originals = {n: p.clone() for n, p in model.edge.named_parameters()}
    with torch.no_grad():
        functional, routing = model(s_ids, s_mask, x_ids, x_mask)
        loras = model.generate(s_ids, s_mask)
        base = model.edge(input_ids=x_ids, attention_mask=x_mask).logits
        for i, lora in enumerate(loras):
            assert torch.equal(lora.gates, routing.gates[i])
            with model.edge_lora.merged_lora(lora):
                merged = model.edge(input_ids=x_ids[i : i + 1], attention_mask=x_mask[i : i + 1]).logits
            assert (merged - functional.logits[i : i + 1]).abs().max().item() <= 1e-4
            assert (merged - base[i : i + 1]).abs().max().item() > 1e-3  # the LoRA does something
    for name, p in model.edge.named_parameters():
        assert torch.equal(p, originals[name]), f"{name} not restored bit-identically"


def test_double_merge_is_refused_and_unmerge_is_exact(tiny):
    model = _model(tiny).eval()
    s_ids, s_mask = _enc(tiny("qwen2").tokenizer, PROMPTS[:2])
    lora_a, lora_b = model.generate(s_ids, s_mask)
    weight = model.edge.model.layers[0].self_attn.q_proj.weight
    before = weight.clone()
    model.edge_lora.merge(lora_a)
    assert not torch.equal(weight, before)
    with pytest.raises(LoRAGenError, match="already merged"):
        model.edge_lora.merge(lora_b)
    with pytest.raises(LoRAGenError, match="unmerge"):
        with model.edge_lora.routing(torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2)):
            pass
    model.edge_lora.unmerge()
    assert torch.equal(weight, before)
    model.edge_lora.merge(lora_b)  # merge → unmerge → merge again works
    model.edge_lora.unmerge()
    assert torch.equal(weight, before)


def test_non_finite_merge_is_refused_and_changes_nothing(tiny):
    model = _model(tiny).eval()
    s_ids, s_mask = _enc(tiny("qwen2").tokenizer, PROMPTS[:1])
    (lora,) = model.generate(s_ids, s_mask)
    last = sorted(lora.factors)[-1]
    a, b = lora.factors[last]
    lora.factors[last] = (a, torch.full_like(b, float("inf")))
    snapshot = {n: p.clone() for n, p in model.edge.named_parameters()}
    with pytest.raises(LoRAGenError, match="non-finite"):
        model.edge_lora.merge(lora)
    assert not model.edge_lora.merged
    assert all(torch.equal(p, snapshot[n]) for n, p in model.edge.named_parameters())


@pytest.mark.parametrize("train_meta_tokens", [False, True])
def test_gradients_reach_router_experts_and_meta_tokens_never_backbones(tiny, train_meta_tokens):
    model = _model(tiny, train_meta_tokens=train_meta_tokens).train()
    s_ids, s_mask = _enc(tiny("qwen2").tokenizer, PROMPTS)
    x_ids, x_mask = _enc(tiny("llama").tokenizer, INPUTS)
    out, routing = model(s_ids, s_mask, x_ids, x_mask)
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), x_ids[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("router.mlp") for n in grads)
    assert all(grads[f"pool.{w}.self_attn__q_proj"].abs().sum() > 0 for w in ("A", "B"))
    assert ("generator.meta_tokens" in grads) == train_meta_tokens
    assert not any(n.startswith(("edge.", "generator.cloud.")) for n in grads)


def test_peft_export_reproduces_merged_logits(tiny, tmp_path):
    from peft import PeftModel

    model = _model(tiny).eval()
    s_ids, s_mask = _enc(tiny("qwen2").tokenizer, PROMPTS[:1])
    x_ids, x_mask = _enc(tiny("llama").tokenizer, INPUTS[:1])
    (lora,) = model.generate(s_ids, s_mask)
    with torch.no_grad(), model.edge_lora.merged_lora(lora):
        merged = model.edge(input_ids=x_ids, attention_mask=x_mask).logits
    out = save_peft_adapter(lora, tmp_path / "adapter", base_model_name_or_path="tiny:llama")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2 * 4 and config["lora_alpha"] == pytest.approx(model.pool.scale * 8)
    untouched = load_backbone("tiny:llama").model
    peft_model = PeftModel.from_pretrained(untouched, str(out)).eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=x_ids, attention_mask=x_mask).logits
    assert (peft_logits - merged).abs().max().item() <= 1e-4
    with pytest.raises(LoRAGenError, match="not empty"):
        save_peft_adapter(lora, out)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary directories left


@pytest.mark.slow
def test_bundled_model_functional_merged_and_peft_agree(bundled, tmp_path):
    """The numeric claims on the real SmolLM2 pair (cloud = edge, 30 layers, 7 targets)."""
    from peft import PeftModel

    torch.manual_seed(0)  # router init: the fp32 rounding gap depends on which experts are picked
    model = LoRAGen(bundled, bundled, num_experts=4, top_k=2, rank=4, router_hidden=32).eval()
    randomize_pool(model.pool, std=0.02)
    tok = bundled.tokenizer
    s = tok(PROMPTS[:2], padding=True, return_tensors="pt")
    x = tok(INPUTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        functional, _ = model(s.input_ids, s.attention_mask, x.input_ids, x.attention_mask)
        loras = model.generate(s.input_ids, s.attention_mask)
        for i, lora in enumerate(loras):
            valid = x.attention_mask[i].bool()  # padded positions carry no prediction
            with model.edge_lora.merged_lora(lora):
                merged = model.edge(input_ids=x.input_ids[i : i + 1], attention_mask=x.attention_mask[i : i + 1]).logits
            assert (merged[0][valid] - functional.logits[i][valid]).abs().max().item() <= 1e-4
    out = save_peft_adapter(loras[0], tmp_path / "adapter")
    fresh = load_backbone("bundled:smollm2-135m-instruct").model
    with torch.no_grad():
        peft_logits = (
            PeftModel.from_pretrained(fresh, str(out))
            .eval()(input_ids=x.input_ids[:1], attention_mask=x.attention_mask[:1])
            .logits
        )
    valid = x.attention_mask[0].bool()
    with torch.no_grad(), model.edge_lora.merged_lora(loras[0]):
        merged = model.edge(input_ids=x.input_ids[:1], attention_mask=x.attention_mask[:1]).logits
    assert (peft_logits[0][valid] - merged[0][valid]).abs().max().item() <= 1e-4

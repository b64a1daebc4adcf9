"""Text-to-LoRA as a method of the framework (issue: the main comparison with Text-to-LoRA): the hypernetwork
starts as a fresh LoRA, learns, makes prompt-dependent adapters, serves them merged exactly as trained, exports
them as PEFT adapters, and runs through the Trainer, the checkpoint filter and ``loragen compare``."""

from __future__ import annotations

import pytest
import torch

from loragen import LoRAGenError
from loragen.backbones import load_backbone
from loragen.compare import method_config
from loragen.models.baselines import TextToLoRAModule
from loragen.models.components.edge_lora import save_peft_adapter
from loragen.models.lora_gen_module import LoRAGenModule
from tests.conftest import INPUT, PROMPT, TINY_POOL, _data, _trainer

TINY_T2L = {
    "cloud": "tiny:qwen2",
    "edge": "tiny:llama",
    "pool": TINY_POOL,
    "latent": 32,
    "head_in": 16,
    "optim": {"lr": 0.01, "warmup_steps": 1},
}
OTHER = "Reply in French, in one word."


def _enc(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def _perturb(module, std=0.05):
    """Trained-like head weights: the generated LoRA depends on the prompt and changes the edge."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in module.model.hyper.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)


def test_untrained_hypernetwork_emits_a_fresh_lora_that_leaves_the_edge_unchanged():
    module = TextToLoRAModule(**TINY_T2L).eval()
    model = module.model
    ids, mask = _enc(model.cloud_backbone.tokenizer, [PROMPT, OTHER])
    loras = model.generate(ids, mask)
    assert loras[0].rank == TINY_POOL["top_k"] * TINY_POOL["rank"] == 8  # LoRA-Gen's merged rank and scale
    assert loras[0].scale == pytest.approx(16.0 / 4)
    for path, (a, b) in loras[0].factors.items():
        assert torch.equal(b, torch.zeros_like(b)) and a.abs().max() > 0  # B = 0, A = a PEFT-style init
        assert torch.equal(a, loras[1].factors[path][0])  # the input does not matter before training
    trained = set(model.trainable_state_dict())
    assert trained and all(n.startswith("hyper.") for n in trained)
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {f"model.{n}" for n in trained}


def test_prompt_dependent_factors_merge_exactly_as_the_functional_path_and_export_to_peft(tmp_path):
    from peft import PeftModel

    module = TextToLoRAModule(**TINY_T2L).eval()
    _perturb(module)
    model = module.model
    s_ids, s_mask = _enc(model.cloud_backbone.tokenizer, [PROMPT, OTHER, PROMPT])
    x_ids, x_mask = _enc(model.edge_backbone.tokenizer, [INPUT, INPUT, INPUT])
    loras = model.generate(s_ids, s_mask)
    path = next(iter(loras[0].factors))
    assert not torch.allclose(loras[0].factors[path][1], loras[1].factors[path][1])  # prompts differ
    assert all(torch.equal(loras[0].factors[p][1], loras[2].factors[p][1]) for p in loras[0].factors)
    before = {n: p.detach().clone() for n, p in model.edge.named_parameters()}
    with torch.no_grad():
        plain = model.edge(input_ids=x_ids[:1], attention_mask=x_mask[:1]).logits
        functional = model.edge.lm_head(model.hidden_states(s_ids, s_mask, x_ids, x_mask))
        for i, lora in enumerate(loras):
            with model.edge_lora.merged_lora(lora):
                merged = model.edge(input_ids=x_ids[i : i + 1], attention_mask=x_mask[i : i + 1]).logits
            assert (merged[0] - functional[i]).abs().max().item() <= 1e-4
            with model.functional(lora):
                hooked = model.edge(input_ids=x_ids[i : i + 1], attention_mask=x_mask[i : i + 1]).logits
            assert (hooked - merged).abs().max().item() <= 1e-4
    assert (functional[0] - plain[0]).abs().max().item() > 1e-3  # the generated LoRA changes the edge
    assert all(torch.equal(p, before[n]) for n, p in model.edge.named_parameters())  # unmerged bit for bit
    out = save_peft_adapter(loras[0], tmp_path / "adapter", base_model_name_or_path="tiny:llama")
    with torch.no_grad():
        peft_logits = (
            PeftModel.from_pretrained(load_backbone("tiny:llama").model, str(out))
            .eval()(input_ids=x_ids[:1], attention_mask=x_mask[:1])
            .logits
        )
    assert (peft_logits[0] - functional[0]).abs().max().item() <= 1e-4


def test_fits_tests_with_the_sensitivity_rows_and_checkpoints_only_the_hypernetwork(tmp_path):
    module = TextToLoRAModule(**TINY_T2L)
    start = {k: v.clone() for k, v in module.model.trainable_state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=_data())
    moved = [k for k, v in module.model.trainable_state_dict().items() if not torch.equal(v, start[k])]
    assert any(".heads." in k for k in moved) and any("task_encoder" in k for k in moved)
    trainer.test(module, datamodule=_data(), verbose=False)
    results = module.last_results
    assert [r["key"] for r in results["rows"]] == ["text_to_lora", "rotated", "generic", "prompted", "zero_shot"]
    assert results["rows"][0]["setting"].startswith("Text-to-LoRA") and results["method"] == "text_to_lora"
    own, prompted = results["rows"][0], results["rows"][3]
    assert own["tokens_per_request"] < prompted["tokens_per_request"]  # served without the system prompt
    path = tmp_path / "t2l.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=True)
    assert set(stored["state_dict"]) == {f"model.{k}" for k in module.model.trainable_state_dict()}
    fresh = TextToLoRAModule.load_from_checkpoint(path, weights_only=True)
    assert all(
        torch.equal(v, module.model.trainable_state_dict()[k]) for k, v in fresh.model.trainable_state_dict().items()
    )
    assert stored["loragen"]["method"] == "text_to_lora"
    with pytest.raises(LoRAGenError, match="checkpoint 'text_to_lora' was written by another method"):
        LoRAGenModule(cloud="tiny:qwen2", edge="tiny:llama", pool=TINY_POOL, router_hidden=8).on_load_checkpoint(stored)
    from loragen.checkpoint import read_checkpoint

    with pytest.raises(LoRAGenError, match="is a text_to_lora checkpoint: generate / apply / serve deploy LoRA-Gen"):
        read_checkpoint(path)
    again = TextToLoRAModule(**TINY_T2L, init_from=str(path))
    assert all(
        torch.equal(v, module.model.trainable_state_dict()[k]) for k, v in again.model.trainable_state_dict().items()
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"latent": 30}, "latent=30 must be a multiple of 4"),
        ({"head_in": 0}, "head_in=0 must be >= 1"),
        ({"dropout": 1.0}, "dropout=1.0 must be in"),
    ],
)
def test_bad_settings_fail_in_one_line_before_any_model_loads(args, fragment):
    with pytest.raises(LoRAGenError, match=fragment):
        TextToLoRAModule.check_args(args)


def test_compare_builds_text_to_lora_from_a_loragen_config_with_its_pool_and_no_duplicate_references(tmp_path):
    base = {
        "model": {
            "class_path": "loragen.models.lora_gen_module.LoRAGenModule",
            "init_args": {
                "cloud": "tiny:qwen2",
                "edge": "tiny:llama",
                "pool": TINY_POOL,
                "router_hidden": 8,
                "eval": {"metric": "harness"},
            },
        },
        "trainer": {"callbacks": []},
    }
    config = method_config(base, "text_to_lora", {"head_in": 8}, tmp_path)
    init = config["model"]["init_args"]
    assert config["model"]["class_path"].endswith("TextToLoRAModule") and "router_hidden" not in init
    assert init["pool"] == TINY_POOL and init["head_in"] == 8
    assert init["eval"] == {"metric": "harness", "reference": False, "zero_shot_reference": False}

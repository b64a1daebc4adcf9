from __future__ import annotations

import torch

from loragen.models.components.generator import CloudGenerator


def _batch(tok, prompts):
    enc = tok(prompts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def test_padding_does_not_change_meta_token_states(tiny):
    cloud = tiny("qwen2")
    gen = CloudGenerator(cloud.model, num_meta=3, cache_states=False)
    short = "Answer briefly."
    batch = [short, "You are a careful assistant who explains every step of the arithmetic.", "Be terse."]
    for side in ("right", "left"):
        cloud.tokenizer.padding_side = side
        alone = gen(*_batch(cloud.tokenizer, [short]))
        padded = gen(*_batch(cloud.tokenizer, batch))
        assert alone.shape == (1, 3, cloud.hidden_size)
        assert (alone[0] - padded[0]).abs().max().item() <= 1e-5
    cloud.tokenizer.padding_side = "right"


def test_identical_prompts_run_once_and_frozen_states_are_cached(tiny):
    cloud = tiny("qwen2")
    gen = CloudGenerator(cloud.model, num_meta=2)
    ids, mask = _batch(cloud.tokenizer, ["task A", "task B", "task A", "task A"])
    out = gen(ids, mask)
    assert gen.cloud_passes == 2
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
    gen(ids, mask)
    assert gen.cloud_passes == 2  # cached: frozen cloud and frozen meta tokens
    uncached = CloudGenerator(cloud.model, num_meta=2, cache_states=False)
    assert torch.allclose(uncached(ids, mask), out, atol=1e-6)


def test_trainable_meta_tokens_get_gradients_and_bypass_the_cache(tiny):
    cloud = tiny("qwen2")
    gen = CloudGenerator(cloud.model, num_meta=2, train_meta_tokens=True)
    ids, mask = _batch(cloud.tokenizer, ["task A", "task A"])
    gen(ids, mask).sum().backward()
    gen(ids, mask)
    assert gen.cloud_passes == 2  # one per call (deduplicated within the batch), never cached
    assert gen.meta_tokens.grad is not None and gen.meta_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in cloud.model.parameters())


def test_cloud_lora_trains_only_lora_parameters(tiny):
    from loragen.backbones import load_backbone

    cloud = load_backbone("tiny:llama")  # private copy: PEFT injects layers in place
    gen = CloudGenerator(cloud.model, num_meta=2, cloud_lora_rank=4)
    ids, mask = _batch(cloud.tokenizer, ["task A"])
    with torch.no_grad():  # make the zero-initialised lora_B matter
        for name, p in gen.cloud.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    gen(ids, mask).pow(2).sum().backward()
    trained = {n for n, p in gen.cloud.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all("lora_" in n for n in trained)
    assert any("lora_A" in n for n in trained)


def test_loading_meta_tokens_invalidates_cached_states(tiny):
    cloud = tiny("qwen2")
    gen = CloudGenerator(cloud.model, num_meta=2)
    ids, mask = _batch(cloud.tokenizer, ["task A"])
    before = gen(ids, mask)
    gen.load_state_dict({"meta_tokens": torch.randn_like(gen.meta_tokens)}, strict=False)
    assert not torch.allclose(gen(ids, mask), before)

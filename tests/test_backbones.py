from __future__ import annotations

import shutil
import time

import pytest
import torch

from loragen import LoRAGenError, backbones
from loragen.backbones import load_backbone, load_tokenizer


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_tiny_backbones_are_frozen_deterministic_and_tokenize_offline(tiny, arch):
    bb = tiny(arch)
    assert bb.model.config.model_type == arch
    assert all(not p.requires_grad for p in bb.model.parameters())
    assert not bb.model.training
    ids = bb.tokenizer("héllo wörld")["input_ids"]
    assert bb.tokenizer.decode(ids) == "héllo wörld"
    assert bb.tokenizer.pad_token is not None
    again = load_backbone(f"tiny:{arch}")
    for (n1, p1), (_, p2) in zip(bb.model.named_parameters(), again.model.named_parameters(), strict=True):
        assert torch.equal(p1, p2), n1
    assert len(load_tokenizer(f"tiny:{arch}")) == len(bb.tokenizer) == bb.model.config.vocab_size


def test_tiny_architectures_differ_in_shape_and_vocab(tiny):
    shapes = {(tiny(a).hidden_size, tiny(a).num_layers, len(tiny(a).tokenizer)) for a in ("llama", "qwen2", "gemma")}
    assert len(shapes) == 3


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("bundled:nope", "known bundled models"),
        ("tiny:gpt9", "choose one of"),
        ("s3://bucket/x", "scheme"),
        ("./no/such/dir", "does not exist"),
        ("missing.gguf", "does not exist"),
        ("", "empty"),
    ],
)
def test_bad_sources_fail_with_one_line_naming_the_fix(source, fragment):
    with pytest.raises(LoRAGenError, match=fragment) as err:
        backbones.validate_source(source)
        load_backbone(source)
    assert "\n" not in str(err.value)


def test_local_directory_source_round_trips(tiny, tmp_path):
    bb = tiny("qwen2")
    bb.model.save_pretrained(tmp_path)
    bb.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    ids = torch.tensor([bb.tokenizer("a local model")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, bb.model(ids).logits, atol=1e-6)
    assert loaded.tokenizer("x")["input_ids"] == bb.tokenizer("x")["input_ids"]


@pytest.mark.slow
def test_bundled_model_answers_and_cache_is_verified(bundled, tmp_path, monkeypatch):
    model, tok = bundled.model, bundled.tokenizer
    assert (bundled.num_layers, bundled.hidden_size) == (30, 576)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1] :])

    # A cache entry whose safetensors bytes were altered (same size) is detected and rebuilt.
    entry = backbones._bundled_cache_dir("smollm2-135m-instruct")
    gguf = backbones._bundled_gguf_path("smollm2-135m-instruct")
    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path))
    copy = tmp_path / "models" / entry.name
    shutil.copytree(entry, copy)
    assert backbones._cache_entry_valid(copy, gguf)
    weights = next(copy.glob("*.safetensors"))
    with open(weights, "r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert not backbones._cache_entry_valid(copy, gguf)
    (copy / "config.json").unlink()
    assert not backbones._cache_entry_valid(copy, gguf)
    start = time.perf_counter()
    rebuilt = backbones._bundled_cache_dir("smollm2-135m-instruct")
    assert rebuilt == copy and backbones._cache_entry_valid(rebuilt, gguf)
    assert time.perf_counter() - start > 0  # rebuilt through the GGUF path, not skipped
    assert not list((tmp_path / "models").glob(".*"))  # no temporary directories left behind

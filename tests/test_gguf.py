"""GGUF outputs for llama.cpp (``--format gguf | gguf-lora``): the file layout on tiny models, exactness
against the bundled source GGUF, and parity in the real runtime (llama-cpp-python) on the bundled model
with the released generator."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loragen.deploy.artifacts import sha256_text
from loragen.deploy.cli import main
from loragen.deploy.deployment import Deployment
from loragen.deploy.generate import generate
from tests.conftest import HAS_BUNDLED, PROMPT, SHARED, _save_checkpoint, needs_shared

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (.[edge] extra)")
RELEASE = "bundled:smollm2-135m-lora-gen"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "cache"))


def _cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv), stdin=io.StringIO(""), stdout=io.StringIO())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loragen: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face row order from llama.cpp's rotary order (the inverse of the converter's permute)."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


# ----------------------------------------------------------------------------- tiny models, no runtime


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("gguf") / "gen.ckpt", "tiny:qwen2", "tiny:llama")


def test_gguf_lora_holds_the_generated_lora_in_llama_cpp_layout(tiny_ckpt, tmp_path):
    import gguf

    generate(tiny_ckpt, PROMPT, tmp_path / "out", "gguf-lora", gguf_type="f32", out=io.StringIO())
    dep = Deployment(tiny_ckpt, cache=False)
    record, _ = dep.gates(PROMPT)
    lora, config = dep.lora(record), dep.edge_side.backbone.model.config
    reader = gguf.GGUFReader(str(tmp_path / "out" / "lora-f32.gguf"))
    field = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert field["general.type"] == "adapter" and field["adapter.type"] == "lora"
    assert field["general.architecture"] == "llama"
    assert field["loragen.system_prompt_sha256"] == sha256_text(PROMPT)
    assert field["loragen.checkpoint_sha256"] == dep.info.sha256
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert len(tensors) == 2 * len(dep.edge_side.pool.sites)
    kinds = {
        "q_proj": ("attn_q", config.num_attention_heads),
        "k_proj": ("attn_k", config.num_key_value_heads),
        "v_proj": ("attn_v", None),
        "o_proj": ("attn_output", None),
        "gate_proj": ("ffn_gate", None),
        "up_proj": ("ffn_up", None),
        "down_proj": ("ffn_down", None),
    }
    for site in dep.edge_side.pool.sites:
        kind, heads = kinds[site.path.rsplit(".", 1)[-1]]
        a, b = tensors[f"blk.{site.layer}.{kind}.weight.lora_a"], tensors[f"blk.{site.layer}.{kind}.weight.lora_b"]
        assert a.shape == (lora.rank, site.in_features) and b.shape == (site.out_features, lora.rank)
        delta = field["adapter.lora.alpha"] / a.shape[0] * (b.astype(np.float64) @ a.astype(np.float64))
        if heads:
            delta = _unpermute(delta, heads)
        expected = lora.delta_weight(site.path).double().numpy()
        np.testing.assert_allclose(delta, expected, rtol=1e-5, atol=1e-6)
        assert np.abs(expected).max() > 1e-3  # a real LoRA, not zeros


def test_gguf_exports_an_edge_or_architecture_llama_cpp_cannot_take_fail_in_one_line(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    err = _cli_error(
        capsys,
        "generate",
        "--ckpt_path",
        str(tiny_ckpt),
        "--system_prompt",
        PROMPT,
        "--output",
        str(out),
        "--format",
        "gguf",
    )
    assert "copies the tokenizer and chat template from the edge's GGUF file" in err and "--edge FILE.gguf" in err
    assert list(tmp_path.iterdir()) == []  # no output, no temporary directory, no cloud pass (no cache entry)
    qwen = _save_checkpoint(tmp_path / "qwen-edge.ckpt", "tiny:llama", "tiny:qwen2")
    err = _cli_error(
        capsys,
        "generate",
        "--ckpt_path",
        str(qwen),
        "--system_prompt",
        PROMPT,
        "--output",
        str(out),
        "--format",
        "gguf-lora",
    )
    assert "architecture 'qwen2' has no llama.cpp export" in err and not out.exists()


# ----------------------------------------------------------------------------- bundled model


def _release_or_skip() -> Deployment:
    from loragen.release import known_releases

    if not HAS_BUNDLED or RELEASE.split(":", 1)[1] not in known_releases():
        pytest.skip("the bundled model or the released generator is not installed")
    return Deployment(RELEASE, cache=False)


@pytest.fixture(scope="module")
def arc_prompt() -> str:
    return _quickstart("arc_easy.test.jsonl")[0].system


def _quickstart(name: str) -> list:
    from loragen.data.datamodule import PACKAGED
    from loragen.data.records import load_records

    return load_records(PACKAGED / "quickstart" / name)


@pytest.fixture(scope="module")
def release(arc_prompt):
    """The released generator (edge side loaded once), its gates and LoRA for the ARC-Easy prompt."""
    dep = _release_or_skip()
    record, _ = dep.gates(arc_prompt)
    return dep, record, dep.lora(record)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, release) -> dict[str, Path]:
    """The released generator's LoRA for the ARC-Easy prompt in every GGUF form, plus the base edge."""
    from loragen.deploy import gguf_export
    from loragen.deploy.export import gguf_keys

    dep, record, lora = release
    side = dep.edge_side
    root = tmp_path_factory.mktemp("gguf-bundled")
    files = {}
    for name, fmt, kind in (
        ("f32", "gguf", "f32"),
        ("f16", "gguf", "f16"),
        ("q8_0", "gguf", "q8_0"),
        ("lora", "gguf-lora", "f16"),
    ):
        files[name] = root / gguf_export.file_name(fmt, kind)
        write = gguf_export.write_model if fmt == "gguf" else gguf_export.write_lora
        write(side, lora, files[name], kind, gguf_keys(side, record))
    files["base_f16"] = root / "base-f16.gguf"
    gguf_export.write_model(side, None, files["base_f16"], "f16", {})
    files["base_f32"] = root / "base-f32.gguf"
    gguf_export.write_model(side, None, files["base_f32"], "f32", {})
    return files


@pytest.mark.slow
def test_the_base_edge_exports_to_exactly_the_source_ggufs_weights(exported):
    """loragen's dequantized copy, re-permuted and renamed, is bit for bit the bundled GGUF's weights:
    names, rotary row order and shapes of all 272 tensors; metadata (tokenizer, chat template) copied."""
    import gguf

    from loragen.backbones import gguf_file

    source = gguf.GGUFReader(str(gguf_file("bundled:smollm2-135m-instruct")))
    written = gguf.GGUFReader(str(exported["base_f32"]))
    assert [t.name for t in written.tensors] == [t.name for t in source.tensors]
    for src, new in zip(source.tensors, written.tensors, strict=True):
        np.testing.assert_array_equal(
            np.asarray(new.data), gguf.quants.dequantize(src.data, src.tensor_type), err_msg=src.name
        )
    for key in ("tokenizer.chat_template", "tokenizer.ggml.pre", "llama.rope.freq_base", "tokenizer.ggml.merges"):
        assert written.get_field(key).contents() == source.get_field(key).contents()
    sizes = {name: path.stat().st_size for name, path in exported.items()}
    assert sizes["lora"] < sizes["q8_0"] / 10 < sizes["f16"] / 10 < sizes["f32"] / 10


# ----------------------------------------------------------------------------- the runtime: llama.cpp


INPUTS = 10
F32_LOGIT_TOL = 0.05  # llama.cpp f32 vs PyTorch fp32: summation order only (logits span about ±30)
F16_LOGIT_TOL = 0.15  # f16 weights and activations (ggml's f16 matmul rounds the activations to f16)
Q4_1_LOGIT_TOL = 1.0  # the original Q4_1 base + adapter: ggml quantizes the activations to 8 bits (Q8_1)


@pytest.fixture(scope="module")
def reference(exported, release):
    """loragen's merged fp32 edge (PyTorch): inputs, their tokens, last-position logits, greedy answers."""
    dep, _, lora = release
    side = dep.edge_side
    model, tok = side.backbone.model, side.backbone.tokenizer
    texts = [r.input for r in _quickstart("arc_easy.val.jsonl")[:INPUTS]]
    out = {"texts": texts, "tokens": [], "logits": [], "greedy": [], "base_logits": []}
    with torch.no_grad():
        for text in texts:
            ids = tok(text)["input_ids"]
            out["tokens"].append(ids)
            out["base_logits"].append(model(input_ids=torch.tensor([ids])).logits[0, -1].numpy())
        with side.edge_lora.merged_lora(lora):
            for ids in out["tokens"]:
                out["logits"].append(model(input_ids=torch.tensor([ids])).logits[0, -1].numpy())
                generated = model.generate(
                    input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=8, pad_token_id=tok.eos_token_id
                )[0, len(ids) :].tolist()
                out["greedy"].append([t for t in generated if t != tok.eos_token_id])
    changed = max(np.abs(a - b).max() for a, b in zip(out["logits"], out["base_logits"], strict=True))
    assert changed > 1.0, "the generated LoRA should measurably change the edge's logits"
    return out


def _runtime(path: Path, lora: Path | None = None):
    from loragen.deploy import llamacpp

    return llamacpp.load(path, lora_path=lora, n_ctx=512, logits_all=True)


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("kind, tol", [("f32", F32_LOGIT_TOL), ("f16", F16_LOGIT_TOL)])
def test_specialized_gguf_in_llama_cpp_matches_loragens_merged_model(exported, reference, kind, tol):
    from loragen.deploy import llamacpp

    llm = _runtime(exported[kind])
    worst = 0.0
    for text, ids, logits, greedy in zip(
        reference["texts"], reference["tokens"], reference["logits"], reference["greedy"], strict=True
    ):
        assert llamacpp.tokenize(llm, text) == ids  # the GGUF's tokenizer is the edge's
        worst = max(worst, float(np.abs(llamacpp.logits(llm, ids)[-1] - logits).max()))
        assert llamacpp.greedy(llm, ids, 8) == greedy, text
    print(f"{kind}: max |logit difference| at the answer position over {INPUTS} inputs = {worst:.4f}")
    assert worst < tol


@pytest.mark.slow
@needs_llama_cpp
def test_base_gguf_with_the_adapter_answers_as_the_specialized_gguf(exported, reference):
    from loragen.deploy import llamacpp

    specialized, adapted = _runtime(exported["f16"]), _runtime(exported["base_f16"], exported["lora"])
    for ids in reference["tokens"]:
        assert llamacpp.greedy(adapted, ids, 8) == llamacpp.greedy(specialized, ids, 8)
    # the adapter really acts: without it the base answers the plain edge's logits
    plain = _runtime(exported["base_f16"])
    base_logits = llamacpp.logits(plain, reference["tokens"][0])[-1]
    assert np.abs(base_logits - reference["base_logits"][0]).max() < F16_LOGIT_TOL


@pytest.mark.slow
@needs_llama_cpp
def test_the_adapter_on_the_original_q4_1_base_stays_within_the_stated_tolerance(exported, reference):
    """The bundled base is Q4_1: llama.cpp multiplies its 4-bit weights with 8-bit-quantized activations,
    so logits move by up to Q4_1_LOGIT_TOL from loragen's fp32 computation on the same dequantized weights."""
    from loragen.backbones import gguf_file
    from loragen.deploy import llamacpp

    llm = _runtime(gguf_file("bundled:smollm2-135m-instruct"), exported["lora"])
    worst, agree = 0.0, 0
    for ids, logits, greedy in zip(reference["tokens"], reference["logits"], reference["greedy"], strict=True):
        worst = max(worst, float(np.abs(llamacpp.logits(llm, ids)[-1] - logits).max()))
        agree += llamacpp.greedy(llm, ids, 8) == greedy
    print(f"Q4_1 base + adapter: max |logit difference| {worst:.4f}; greedy answers equal on {agree}/{INPUTS}")
    assert worst < Q4_1_LOGIT_TOL and agree >= INPUTS - 3  # measured: 0.69 and 8/10 (1 thread)


@pytest.mark.slow
@needs_llama_cpp
def test_an_adapter_for_another_base_and_a_specialized_base_are_refused(exported, tmp_path, capsys):
    from loragen.backbones import gguf_file

    other = bytearray(gguf_file("bundled:smollm2-135m-instruct").read_bytes())
    other[-4096] ^= 0x01  # another model of the same shape: llama.cpp alone would load the adapter on it
    (tmp_path / "other-edge.gguf").write_bytes(other)
    err = _cli_error(capsys, "chat", "--gguf", str(tmp_path / "other-edge.gguf"), "--lora", str(exported["lora"]))
    assert "was written for another edge GGUF" in err
    err = _cli_error(capsys, "chat", "--gguf", str(exported["f16"]), "--lora", str(exported["lora"]))
    assert "already a specialized GGUF" in err
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(exported["lora"].read_bytes()[:1000])
    err = _cli_error(capsys, "chat", "--gguf", str(truncated))
    assert "not a readable GGUF" in err


@pytest.mark.slow
@needs_llama_cpp
def test_chat_gguf_streams_the_specialized_answer(exported, release):
    """`loragen chat --gguf` answers a line in llama.cpp as loragen's merged model answers it (greedy)."""
    dep, _, lora = release
    model, tok = dep.edge_side.backbone.model, dep.edge_side.backbone.tokenizer
    line = "Question: Which gas do plants take in from the air to make food? Answer:"
    ids = tok(line)["input_ids"]
    with torch.no_grad(), dep.edge_side.edge_lora.merged_lora(lora):
        answer = model.generate(
            input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=8, pad_token_id=tok.eos_token_id
        )[0, len(ids) :]
    expected = tok.decode(answer, skip_special_tokens=True).strip()
    out = io.StringIO()
    main(["chat", "--gguf", str(exported["f16"]), "--max_new_tokens", "8"], stdin=io.StringIO(line + "\n"), stdout=out)
    text = out.getvalue()
    assert "[specialized]" in text and f"prompt {len(ids)} tokens" in text
    assert expected and expected in text


@pytest.mark.slow
@needs_llama_cpp
@needs_shared
def test_q8_0_option_scoring_accuracy_is_within_two_points_of_f32(exported, release):
    """200 ARC-Easy test items scored by option log-likelihood (acc_norm) in llama.cpp: q8_0 vs f32. The bound
    depends on ggml's kernels: measured 1.0 point or less with a native build, 1.5 (66.5 vs 65.0, 3 of 200
    items) with the portable AVX2 build setup.sh makes."""
    from loragen.data.tasks import TaskLoader
    from loragen.data.tokenize import Limits, RecordTokenizer
    from loragen.deploy import llamacpp

    loader = TaskLoader(SHARED, shots=0)
    records = loader.records("arc_easy", "test")[:200]
    edge = release[0].edge_side.backbone.tokenizer
    tok = RecordTokenizer(edge, edge, Limits())
    requests = [tok.requests(r, with_system=False) for r in records]
    accuracy = {}
    for kind in ("f32", "q8_0"):
        llm = _runtime(exported[kind])
        correct = 0
        for record, reqs in zip(records, requests, strict=True):
            scores = [s / len(o) for s, o in zip(llamacpp.option_logliks(llm, reqs), record.options, strict=True)]
            correct += int(np.argmax(scores)) == record.label
        accuracy[kind] = 100 * correct / len(records)
    print(json.dumps({"items": len(records), "acc_norm": accuracy}))
    assert abs(accuracy["q8_0"] - accuracy["f32"]) <= 2.0

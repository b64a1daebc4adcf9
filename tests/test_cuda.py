"""On a CUDA device: the merge, a bf16 fit and a GPU-trained checkpoint served on the CPU.

Skipped without CUDA (CI has none); ``scripts/device_check.sh`` runs them with ``pytest -m cuda``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import PROMPT, TINY_POOL, randomize_pool

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ROOT = Path(__file__).resolve().parents[1]


def _prompt_ids(tokenizer, device):
    enc = tokenizer([PROMPT], return_tensors="pt")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def test_merge_unmerge_is_bit_exact_on_cuda_and_equals_the_functional_path():
    from loragen.backbones import load_backbone
    from loragen.models.components.lora_gen import LoRAGen

    torch.manual_seed(0)  # own backbones: the session's tiny ones stay on the CPU for the other tests
    model = LoRAGen(load_backbone("tiny:qwen2"), load_backbone("tiny:llama"), **TINY_POOL, router_hidden=16)
    randomize_pool(model.pool, std=0.2)
    model = model.to("cuda").eval()
    s_ids, s_mask = _prompt_ids(model.cloud_backbone.tokenizer, "cuda")
    x = model.edge_backbone.tokenizer(["What is 12 + 30?"], return_tensors="pt").to("cuda")
    before = {n: p.detach().clone() for n, p in model.edge.named_parameters()}
    with torch.no_grad():
        (lora,) = model.generate(s_ids, s_mask)
        with model.functional(lora):
            functional = model.edge(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
        with model.edge_lora.merged_lora(lora):
            merged = model.edge(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
        bare = model.edge(input_ids=x.input_ids, attention_mask=x.attention_mask).logits
    assert all(torch.equal(p, before[n]) for n, p in model.edge.named_parameters()), "unmerge is not bit-exact"
    assert (merged - functional).abs().max().item() < 1e-4
    assert (merged - bare).abs().max().item() > 1e-3, "the generated LoRA changed nothing: the check is void"


def test_bf16_gpu_fit_writes_a_checkpoint_that_serves_the_same_lora_on_the_cpu(tmp_path):
    from loragen.checkpoint import read_checkpoint
    from loragen.cli import run
    from loragen.deploy.checkpoint import load_module

    cli = run(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--trainer.accelerator",
            "gpu",
            "--trainer.devices",
            "1",
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert cli.trainer.global_step == 4
    assert all(torch.isfinite(v).all() for v in cli.model.model.trainable_state_dict().values())
    module = load_module(read_checkpoint(tmp_path / "checkpoints" / "last.ckpt"))
    loras = {}
    for device in ("cpu", "cuda"):
        model = module.model.to(device)
        (loras[device],) = model.generate(*_prompt_ids(model.cloud_backbone.tokenizer, device))
    assert loras["cpu"].targets == loras["cuda"].targets
    for path, (a_cpu, b_cpu) in loras["cpu"].factors.items():
        a_gpu, b_gpu = loras["cuda"].factors[path]
        torch.testing.assert_close(a_gpu.cpu(), a_cpu, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(b_gpu.cpu(), b_cpu, atol=1e-4, rtol=1e-3)


def test_fsdp_fit_clips_gradients_by_norm_and_trains(tmp_path):
    """configs/strategies/fsdp.yaml clips by norm (gradient_clip_val 1.0), which Lightning's FSDP precision plugin
    refuses: loragen clips through the wrapped model's own clip_grad_norm_."""
    from loragen.cli import run

    cli = run(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--config",
            str(ROOT / "configs" / "strategies" / "fsdp.yaml"),
            "--trainer.devices",
            "1",
            "--trainer.accumulate_grad_batches",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert cli.trainer.global_step == 4
    assert cli.trainer.gradient_clip_val == 1.0
    state = cli.model.model.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.startswith("pool.B")), "the expert pool never trained"

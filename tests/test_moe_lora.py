"""MixLoRA / LoRAMoE baselines: exactness at init, naive-reference equality, routing, gradients, balance loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loragen import LoRAGenError
from loragen.backbones import load_backbone
from loragen.models.components.moe_lora import (
    LoRALinear,
    LoRAMoELinear,
    MixLoRAFFN,
    install_loramoe,
    install_mixlora,
    moe_aux_loss,
)

ARCHS = ("llama", "qwen2", "gemma")
E, K, R, ALPHA = 4, 2, 4, 8.0


def _fresh(arch: str = "llama", **kw):
    """A new tiny model per test: installation mutates it, so the session-cached ``tiny`` fixture is not used."""
    return load_backbone(f"tiny:{arch}", **kw).model


def _ids(model, batch: int = 2, seq: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)


def _randomize(model: nn.Module, name: str = "lora_B", std: float = 0.1, seed: int = 0) -> None:
    """Fill every parameter whose name contains ``name`` with Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if name in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _install(kind: str, model: nn.Module) -> list[nn.Module]:
    if kind == "mixlora":
        return install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=2)
    return install_loramoe(model, num_experts=E, rank=R, lora_alpha=ALPHA, attention_rank=2)


class _Gated(nn.Module):
    """Stand-in MoE layer with hand-made gates for ``moe_aux_loss``."""

    def __init__(self, gates: torch.Tensor, probs: torch.Tensor | None = None) -> None:
        super().__init__()
        self.last_gates = gates
        self.last_probs = gates if probs is None else probs


# ----------------------------------------------------------------------------- 1. exact at init


@pytest.mark.parametrize("kind", ["mixlora", "loramoe"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_install_matches_base_model(arch, kind):
    model = _fresh(arch)
    ids = _ids(model)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        layers = _install(kind, model)
        after = model(input_ids=ids).logits
    expected = MixLoRAFFN if kind == "mixlora" else LoRAMoELinear
    assert layers and all(isinstance(m, expected) for m in layers)
    n_layers = model.config.num_hidden_layers
    assert len(layers) == (n_layers if kind == "mixlora" else 3 * n_layers)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4 * n_layers
    assert (after - before).abs().max().item() <= 1e-5
    # ... and the adapters are live: non-zero B changes the logits.
    _randomize(model)
    with torch.no_grad():
        changed = model(input_ids=ids).logits
    assert (changed - before).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- 2. naive references


def _naive_mixlora(moe: MixLoRAFFN, x: torch.Tensor) -> torch.Tensor:
    """Per token: softmax router, top-k, renormalise; each expert's FFN with explicit W + s·B@A weights."""
    base, s = moe.base, moe.scale
    out = torch.zeros(x.shape[0], x.shape[1], base.down_proj.out_features, dtype=x.dtype)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            xt = x[b, t]
            probs = torch.softmax(moe.router.weight @ xt, dim=-1)
            top = torch.argsort(probs, descending=True)[: moe.top_k]
            total = probs[top].sum()
            for e in top.tolist():
                w = {
                    name: getattr(base, name).weight + s * moe.lora_B[name][e] @ moe.lora_A[name][e]
                    for name in ("gate_proj", "up_proj", "down_proj")
                }
                hidden = base.act_fn(w["gate_proj"] @ xt) * (w["up_proj"] @ xt)
                out[b, t] += probs[e] / total * (w["down_proj"] @ hidden)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_mixlora_matches_naive_reference(arch):
    model = _fresh(arch)
    layers = install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=0)
    _randomize(model, "lora_B", std=0.2)
    moe = layers[-1]
    with torch.no_grad():
        moe.router.weight.mul_(5.0)  # sharper routing, so different tokens pick different experts
        x = torch.randn(2, 9, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
        got = moe(x)
        ref = _naive_mixlora(moe, x)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert (moe.last_gates > 0).any(dim=(0, 1)).sum() >= 2  # more than one expert is actually used
    assert (got - ref).abs().max().item() <= 1e-5
    assert (ref - moe.base(x)).abs().max().item() > 1e-3  # the LoRA deltas matter


@pytest.mark.parametrize("arch", ARCHS)
def test_loramoe_matches_naive_reference(arch):
    model = _fresh(arch)
    layers = install_loramoe(model, num_experts=E, rank=R, lora_alpha=ALPHA)
    _randomize(model, "lora_B", std=0.2)
    for moe in (layers[0], layers[2]):  # gate_proj (hidden → inter) and down_proj (inter → hidden)
        x = torch.randn(2, 5, moe.base.in_features, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            got = moe(x)
            ref = torch.empty_like(got)
            for b in range(x.shape[0]):
                for t in range(x.shape[1]):
                    xt = x[b, t]
                    g = torch.softmax(moe.router.weight @ xt, dim=-1)
                    delta = sum(
                        g[e] * (xt @ moe.lora_A[e * R : (e + 1) * R].T @ moe.lora_B[:, e * R : (e + 1) * R].T)
                        for e in range(E)
                    )
                    ref[b, t] = moe.base.weight @ xt + moe.scale * delta
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-5
        assert (ref - moe.base(x)).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- 3. routing


def test_topk_gates_and_dense_gates():
    model = _fresh("qwen2")
    mix = install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=0)
    with torch.no_grad():
        model(input_ids=_ids(model, 3, 6))
    for moe in mix:
        gates, probs = moe.last_gates, moe.last_probs
        assert gates.shape == probs.shape == (3, 6, E)
        assert torch.equal((gates > 0).sum(-1), torch.full((3, 6), K))
        assert torch.allclose(gates.sum(-1), torch.ones(3, 6), atol=1e-6)
        assert torch.allclose(probs.sum(-1), torch.ones(3, 6), atol=1e-6)
        # the kept experts are the most probable ones
        assert torch.equal((gates > 0), probs >= probs.topk(K, dim=-1).values[..., -1:])

    model = _fresh("qwen2")
    dense = install_loramoe(model, num_experts=E, rank=R, lora_alpha=ALPHA, targets=("up_proj",))
    with torch.no_grad():
        model(input_ids=_ids(model, 3, 6))
    for moe in dense:
        assert moe.last_gates.shape == (3, 6, E)
        assert torch.allclose(moe.last_gates.sum(-1), torch.ones(3, 6), atol=1e-6)
        assert (moe.last_gates > 0).all()


# ----------------------------------------------------------------------------- 4. gradients


@pytest.mark.parametrize("kind", ["mixlora", "loramoe"])
def test_gradients_reach_router_and_factors_only(kind):
    model = _fresh("llama", frozen=False)  # base starts trainable: installing must freeze it
    base_params = list(model.parameters())
    assert all(p.requires_grad for p in base_params)
    layers = _install(kind, model)
    assert not any(p.requires_grad for p in base_params)
    base_ids = {id(p) for p in base_params}
    new_params = [p for p in model.parameters() if id(p) not in base_ids]
    assert new_params and all(p.requires_grad for p in new_params)
    ids = _ids(model)

    def grads(moe):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        return {name: p.grad for name, p in moe.named_parameters() if p.requires_grad}

    moe = layers[0]
    at_init = grads(moe)
    assert all(g.abs().sum() > 0 for n, g in at_init.items() if "lora_B" in n)
    assert all(torch.count_nonzero(g) == 0 for n, g in at_init.items() if "lora_A" in n)  # B = 0 ⇒ dA = 0
    assert all(p.grad is None for p in base_params)

    _randomize(model, "lora_B", std=0.1)
    trained = grads(moe)
    for prefix in ("router", "lora_A", "lora_B"):
        hits = [g for n, g in trained.items() if n.startswith(prefix)]
        assert hits and all(g.abs().sum() > 0 for g in hits), prefix

    # The balance loss alone reaches the router, even at B = 0.
    model.zero_grad(set_to_none=True)
    model(input_ids=ids)
    moe_aux_loss(layers, "cv2").backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- 5. balance loss


def _balanced_gates(batch: int = 2, seq: int = 4) -> torch.Tensor:
    """Token i picks experts (i, i+1) mod E with 0.5 each: every expert gets the same importance."""
    gates = torch.zeros(batch * seq, E)
    for i in range(batch * seq):
        gates[i, i % E] = gates[i, (i + 1) % E] = 0.5
    return gates.reshape(batch, seq, E)


def test_aux_loss_cv2_balanced_skewed_and_padding():
    balanced = _balanced_gates()
    assert moe_aux_loss([_Gated(balanced)], "cv2").item() == pytest.approx(0.0, abs=1e-6)

    skewed = torch.zeros(2, 4, E)
    skewed[..., 0] = skewed[..., 1] = 0.5
    assert moe_aux_loss([_Gated(skewed)], "cv2").item() > 0.5
    # averaged over layers
    both = moe_aux_loss([_Gated(balanced), _Gated(skewed)], "cv2").item()
    assert both == pytest.approx(moe_aux_loss([_Gated(skewed)], "cv2").item() / 2, rel=1e-5)

    # Two padded positions per row with all mass on expert 0: masked out, the loss is unchanged.
    padded = torch.zeros(2, 6, E)
    padded[:, :4] = balanced
    padded[:, 4:, 0] = 1.0
    mask = torch.ones(2, 6)
    mask[:, 4:] = 0
    assert moe_aux_loss([_Gated(padded)], "cv2").item() > 0.1  # the padding would skew it
    assert moe_aux_loss([_Gated(padded)], "cv2", token_mask=mask).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(LoRAGenError):
        moe_aux_loss([_Gated(padded)], "cv2", token_mask=torch.ones(2, 5))


def test_aux_loss_switch_none_and_errors():
    gates = _balanced_gates()
    probs = torch.full((2, 4, E), 1.0 / E)
    assert moe_aux_loss([_Gated(gates, probs)], "switch").item() == pytest.approx(1.0, abs=1e-6)

    # All assignments to experts 0/1 and probabilities concentrated there: E · Σ f P = 4 · (0.5·0.45·2) = 1.8.
    skew_gates = torch.zeros(2, 4, E)
    skew_gates[..., :2] = 0.5
    skew_probs = torch.tensor([0.45, 0.45, 0.05, 0.05]).expand(2, 4, E)
    assert moe_aux_loss([_Gated(skew_gates, skew_probs)], "switch").item() == pytest.approx(1.8, abs=1e-5)

    padded_gates = torch.zeros(2, 6, E)
    padded_gates[:, :4] = gates
    padded_gates[:, 4:, 3] = 1.0
    padded_probs = torch.zeros(2, 6, E)
    padded_probs[:, :4] = probs
    padded_probs[:, 4:, 3] = 1.0
    mask = torch.ones(2, 6)
    mask[:, 4:] = 0
    assert moe_aux_loss([_Gated(padded_gates, padded_probs)], "switch").item() > 1.05
    assert moe_aux_loss([_Gated(padded_gates, padded_probs)], "switch", mask).item() == pytest.approx(1.0, abs=1e-6)

    assert moe_aux_loss([_Gated(gates)], "none").item() == 0.0
    with pytest.raises(LoRAGenError, match="unknown"):
        moe_aux_loss([_Gated(gates)], "entropy")
    model = _fresh("llama")
    layers = install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=0)
    with pytest.raises(LoRAGenError, match="forward pass first"):
        moe_aux_loss(layers, "cv2")


# ----------------------------------------------------------------------------- 6. training


@pytest.mark.parametrize("kind", ["mixlora", "loramoe"])
def test_short_training_lowers_loss(kind):
    torch.manual_seed(0)
    model = _fresh("llama")
    # The random tiny head (std 0.02 after a final RMSNorm) caps any logit change near 0.6, i.e. a CE drop of
    # about 12% even for perfect memorisation; scale it so the check measures the adapters, not the head.
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)
    layers = _install(kind, model)
    model.train()
    ids = _ids(model, batch=2, seq=12, seed=3)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0  # some padding, excluded from both losses
    labels = ids.masked_fill(mask == 0, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        (ce + 0.01 * moe_aux_loss(layers, "cv2", token_mask=mask)).backward()
        opt.step()
        losses.append(ce.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


# ----------------------------------------------------------------------------- 7. configuration errors


def test_bad_configs_raise_and_leave_model_untouched():
    model = _fresh("llama")
    with pytest.raises(LoRAGenError, match="top_k"):
        install_mixlora(model, num_experts=2, top_k=3, rank=R, lora_alpha=ALPHA, attention_rank=0)
    with pytest.raises(LoRAGenError, match="rank"):
        install_mixlora(model, num_experts=E, top_k=K, rank=0, lora_alpha=ALPHA, attention_rank=0)
    with pytest.raises(LoRAGenError, match="num_experts"):
        install_loramoe(model, num_experts=0, rank=R, lora_alpha=ALPHA)
    with pytest.raises(LoRAGenError, match="rank"):
        install_loramoe(model, num_experts=E, rank=0, lora_alpha=ALPHA)
    with pytest.raises(LoRAGenError, match=r"self_attn\.qkv_proj.*q_proj"):
        install_mixlora(
            model,
            num_experts=E,
            top_k=K,
            rank=R,
            lora_alpha=ALPHA,
            attention_rank=2,
            attention_targets=("q_proj", "qkv_proj"),
        )
    with pytest.raises(LoRAGenError, match=r"mlp\.fc1.*gate_proj"):
        install_loramoe(model, num_experts=E, rank=R, lora_alpha=ALPHA, targets=("fc1",))
    # nothing was installed by the failed calls
    assert not any(isinstance(m, (LoRALinear, LoRAMoELinear, MixLoRAFFN)) for m in model.modules())
    install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=0)
    with pytest.raises(LoRAGenError, match="already"):
        install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=0)


def test_low_precision_model_keeps_dtype():
    model = _fresh("gemma", dtype="bfloat16")
    layers = install_mixlora(model, num_experts=E, top_k=K, rank=R, lora_alpha=ALPHA, attention_rank=2)
    # frozen weights stay bf16; trained adapter weights are float32 (AdamW on bf16 would lose small updates)
    assert all(p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16) for p in model.parameters())
    assert any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        logits = model(input_ids=_ids(model)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert layers[0].last_gates.dtype == torch.float32

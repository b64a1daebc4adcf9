"""Mixture-of-LoRA-experts baselines installed inside a frozen decoder-only causal LM.

Two per-token MoE adapters, the baselines LoRA-Gen is compared with. Their gates depend on each
token, so unlike a generated LoRA they can never be merged into dense weights.

- **MixLoRA** (``MixLoRAFFN``, sparse): a router on each token's MLP input gives ``p = softmax(W_r x)``;
  the top-k experts are kept with weights ``w = p_TopK / Σ p_TopK``. Expert ``e`` is the frozen FFN with its
  own LoRA on ``gate_proj``, ``up_proj`` and ``down_proj``:
  ``FFN_e(x) = (W_d + s B_d^e A_d^e) · [act((W_g + s B_g^e A_g^e) x) ⊙ (W_u + s B_u^e A_u^e) x]``,
  and the layer returns ``Σ_{e∈TopK} w_e FFN_e(x)``. Attention linears optionally get plain LoRA.
- **LoRAMoE** (``LoRAMoELinear``, dense): around one frozen linear, ``g = softmax(W_r x)`` over all experts
  and ``y = W x + s Σ_e g_e B_e A_e x``.

``s = lora_alpha / rank`` everywhere; every ``B`` starts at zero, so a freshly installed model computes
exactly what the base model computes. ``moe_aux_loss`` turns the gates of the last forward into a
load-balancing loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from loragen import LoRAGenError
from loragen.models.components.router import cv_squared
from loragen.models.config import AUX_KINDS

MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _init_lora_A_(tensor: torch.Tensor, fan_in: int) -> None:
    """PEFT's ``kaiming_uniform_(a=√5)`` on an (r, in) factor: ``U(-1/√in, 1/√in)`` (any leading dims)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


def _new_param(*shape: int, like: torch.Tensor, fan_in: int | None = None) -> nn.Parameter:
    """A float32 parameter on ``like``'s device (trained weights stay float32 on a bf16/fp16 edge, as in
    PEFT; forwards cast them to the activations' dtype): LoRA-A init when ``fan_in`` is given, else zeros."""
    tensor = torch.zeros(*shape, device=like.device, dtype=torch.float32)
    if fan_in is not None:
        _init_lora_A_(tensor, fan_in)
    return nn.Parameter(tensor)


def _new_router(in_features: int, num_experts: int, like: torch.Tensor) -> nn.Linear:
    return nn.Linear(in_features, num_experts, bias=False, device=like.device, dtype=torch.float32)


def _check_config(num_experts: int, rank: int, top_k: int | None = None) -> None:
    if num_experts < 1:
        raise LoRAGenError(f"num_experts={num_experts} must be at least 1")
    if top_k is not None and not 1 <= top_k <= num_experts:
        raise LoRAGenError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
    if rank < 1:
        raise LoRAGenError(f"LoRA rank={rank} must be at least 1")


class LoRALinear(nn.Module):
    """Plain LoRA around a frozen ``nn.Linear``: ``y = base(x) + (alpha/rank) · B(A x)``.

    ``A`` (rank, in) is random (PEFT's kaiming-uniform), ``B`` (out, rank) is zero, so the wrapped layer
    initially equals ``base``. The base weights are not copied; only ``lora_A`` and ``lora_B`` are new.
    """

    def __init__(self, base: nn.Linear, rank: int, lora_alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise LoRAGenError(f"LoRA rank={rank} must be at least 1")
        self.base = base
        self.rank = rank
        self.scale = lora_alpha / rank
        weight = base.weight
        self.lora_A = _new_param(rank, base.in_features, like=weight, fan_in=base.in_features)
        self.lora_B = _new_param(base.out_features, rank, like=weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T.to(x.dtype)) @ self.lora_B.T.to(x.dtype))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"


class MixLoRAFFN(nn.Module):
    """MixLoRA-style sparse MoE FFN built on a frozen gated MLP (shared by all experts).

    Per token ``x``: ``p = softmax(router(x))`` over ``E`` experts, keep the top-k with weights
    ``w_e = p_e / Σ_{TopK} p``, and return ``Σ_{e∈TopK} w_e FFN_e(x)`` where ``FFN_e`` is the base FFN
    ``down(act(gate(x)) ⊙ up(x))`` with expert ``e``'s LoRA ``s B^e A^e`` added to each of the three linears.

    The base projections ``gate(x)`` and ``up(x)`` are computed once for all tokens; each expert then only
    adds its LoRA deltas on the tokens routed to it, applies ``act ⊙``, ``down`` plus its down delta, and
    scatters ``w_e · FFN_e(x)`` back with ``index_add``.

    Parameters: ``router`` (Linear hidden→E, no bias) and the stacked factors ``lora_A[name]`` (E, r, in)
    and ``lora_B[name]`` (E, out, r) for ``name`` in gate_proj/up_proj/down_proj; ``base`` is the frozen MLP.
    After each forward, ``last_gates`` (b, s, E) holds the renormalised top-k weights (zeros elsewhere) and
    ``last_probs`` (b, s, E) the full softmax, both float32 and still attached to the autograd graph.
    """

    base: Any  # the model's own gated MLP, whatever its class (gate_proj / up_proj / down_proj / act_fn)

    def __init__(self, base_mlp: nn.Module, num_experts: int, top_k: int, rank: int, lora_alpha: float) -> None:
        super().__init__()
        _check_config(num_experts, rank, top_k)
        missing = [name for name in (*MLP_LINEARS, "act_fn") if not hasattr(base_mlp, name)]
        if missing:
            raise LoRAGenError(
                f"MixLoRA needs a gated MLP with gate_proj/up_proj/down_proj/act_fn; "
                f"{type(base_mlp).__name__} lacks {missing}"
            )
        self.base = base_mlp
        self.num_experts, self.top_k, self.rank = num_experts, top_k, rank
        self.scale = lora_alpha / rank
        gate_proj = cast(nn.Linear, base_mlp.gate_proj)
        weight = gate_proj.weight
        self.router = _new_router(gate_proj.in_features, num_experts, weight)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in MLP_LINEARS:
            linear: nn.Linear = getattr(base_mlp, name)
            self.lora_A[name] = _new_param(
                num_experts, rank, linear.in_features, like=weight, fan_in=linear.in_features
            )
            self.lora_B[name] = _new_param(num_experts, linear.out_features, rank, like=weight)
        self.last_gates: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None

    def _delta(self, name: str, e: int, x: torch.Tensor) -> torch.Tensor:
        """``s · B^e (A^e x)`` for one linear of expert ``e`` on rows ``x``."""
        return self.scale * ((x @ self.lora_A[name][e].T.to(x.dtype)) @ self.lora_B[name][e].T.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, dim = x.shape[:-1], x.shape[-1]
        h = x.reshape(-1, dim)
        probs = self.router(h.float()).softmax(dim=-1)  # (N, E), routed in float32
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_w)

        base = self.base
        gate_all, up_all = base.gate_proj(h), base.up_proj(h)  # base projections, once for every token
        out: torch.Tensor | None = None
        for e in range(self.num_experts):
            tokens, slots = (top_i == e).nonzero(as_tuple=True)
            if tokens.numel() == 0:
                continue
            xe = h[tokens]
            mid = base.act_fn(gate_all[tokens] + self._delta("gate_proj", e, xe)) * (
                up_all[tokens] + self._delta("up_proj", e, xe)
            )
            ye = base.down_proj(mid) + self._delta("down_proj", e, mid)
            ye = ye * top_w[tokens, slots].unsqueeze(-1).to(ye.dtype)
            if out is None:
                out = ye.new_zeros(h.shape[0], ye.shape[-1])
            out = out.index_add(0, tokens, ye)
        if out is None:  # no tokens at all
            out = h.new_zeros(0, base.down_proj.out_features)
        self.last_gates = gates.reshape(*lead, self.num_experts)
        self.last_probs = probs.reshape(*lead, self.num_experts)
        return out.reshape(*lead, out.shape[-1]).to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, rank={self.rank}, scale={self.scale:g}"


class LoRAMoELinear(nn.Module):
    """LoRAMoE-style dense (soft) routing around a frozen ``nn.Linear``.

    ``g = softmax(router(x))`` over all ``E`` experts and ``y = base(x) + s Σ_e g_e B_e A_e x``, computed with
    the stacked factors ``lora_A`` = [A_1; …; A_E] (E·r, in) and ``lora_B`` = [B_1 … B_E] (out, E·r):
    ``u = x A_allᵀ`` reshaped to (…, E, r), scaled by ``g[..., None]``, flattened, then ``u B_allᵀ``.
    No per-token ``ΔW`` is ever built. After each forward ``last_gates`` and ``last_probs`` both hold ``g``
    (b, s, E), float32, attached to the graph.
    """

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, lora_alpha: float) -> None:
        super().__init__()
        _check_config(num_experts, rank)
        self.base = base
        self.num_experts, self.rank = num_experts, rank
        self.scale = lora_alpha / rank
        weight = base.weight
        self.router = _new_router(base.in_features, num_experts, weight)
        self.lora_A = _new_param(num_experts * rank, base.in_features, like=weight, fan_in=base.in_features)
        self.lora_B = _new_param(base.out_features, num_experts * rank, like=weight)
        self.last_gates: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.router(x.float()).softmax(dim=-1)  # (..., E), routed in float32
        u = (x @ self.lora_A.T.to(x.dtype)).unflatten(-1, (self.num_experts, self.rank))
        u = (u * gates.unsqueeze(-1).to(u.dtype)).flatten(-2)
        self.last_gates = self.last_probs = gates
        return self.base(x) + self.scale * (u @ self.lora_B.T.to(x.dtype))

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, scale={self.scale:g}"


# ----------------------------------------------------------------------------- installation


def _decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    hf_model: Any = model  # a Hugging Face causal LM (``get_decoder``), or a module holding ``model.layers``
    decoder = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else getattr(hf_model, "model", hf_model)
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0:
        raise LoRAGenError(f"{type(model).__name__} has no decoder layers (expected model.get_decoder().layers)")
    return layers


def _linear_names(layer: nn.Module) -> list[str]:
    return [name for name, mod in layer.named_modules() if isinstance(mod, nn.Linear)]


def _target_linear(layer: nn.Module, parent_name: str, name: str) -> nn.Linear:
    """``layer.<parent_name>.<name>`` if it is a plain ``nn.Linear``, else a LoRAGenError naming the options."""
    parent = getattr(layer, parent_name, None)
    module = getattr(parent, name, None) if parent is not None else None
    if isinstance(module, (LoRALinear, LoRAMoELinear, MixLoRAFFN)) or isinstance(parent, MixLoRAFFN):
        raise LoRAGenError(f"{parent_name}.{name} already has a LoRA adapter installed: load a fresh model")
    if not isinstance(module, nn.Linear):
        raise LoRAGenError(f"no linear {parent_name}.{name} in a decoder layer; its linears are {_linear_names(layer)}")
    return module


def _freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def _install_attention(
    layer: nn.Module, linears: dict[str, nn.Linear], attention_rank: int, lora_alpha: float, rank: int, training: bool
) -> None:
    """Plain LoRA on attention linears with the MoE's scale: alpha' = alpha·r_att/r, so alpha'/r_att = alpha/r."""
    for name, linear in linears.items():
        lora = LoRALinear(linear, attention_rank, lora_alpha * attention_rank / rank).train(training)
        setattr(layer.self_attn, name, lora)


def install_mixlora(
    model: nn.Module,
    num_experts: int,
    top_k: int,
    rank: int,
    lora_alpha: float,
    attention_rank: int,
    attention_targets: Sequence[str] = ATTENTION_LINEARS,
) -> list[nn.Module]:
    """Replace every decoder layer's ``mlp`` by a ``MixLoRAFFN`` (and attention targets by ``LoRALinear``).

    Every pre-existing parameter of ``model`` is frozen first; only the new router and LoRA factors train.
    Attention LoRA (when ``attention_rank > 0``) uses the same scale ``lora_alpha / rank`` as the experts.
    Everything is validated before the model is changed. Returns the ``MixLoRAFFN`` modules in depth order.
    """
    _check_config(num_experts, rank, top_k)
    if attention_rank < 0:
        raise LoRAGenError(f"attention_rank={attention_rank} must be 0 (no attention LoRA) or positive")
    layers = _decoder_layers(model)
    plan = []
    for layer in layers:
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, MixLoRAFFN):
            raise LoRAGenError("the model already has MixLoRA installed: load a fresh model")
        for name in MLP_LINEARS:
            _target_linear(layer, "mlp", name)
        if mlp is None or not hasattr(mlp, "act_fn"):
            raise LoRAGenError(f"MixLoRA needs mlp.act_fn; {type(mlp).__name__} has none")
        attn = {name: _target_linear(layer, "self_attn", name) for name in attention_targets} if attention_rank else {}
        plan.append((layer, mlp, attn))
    _freeze(model)
    moe_layers: list[nn.Module] = []
    for layer, mlp, attn in plan:
        moe = MixLoRAFFN(mlp, num_experts, top_k, rank, lora_alpha).train(model.training)
        layer.mlp = moe
        moe_layers.append(moe)
        _install_attention(layer, attn, attention_rank, lora_alpha, rank, model.training)
    return moe_layers


def install_loramoe(
    model: nn.Module,
    num_experts: int,
    rank: int,
    lora_alpha: float,
    targets: Sequence[str] = MLP_LINEARS,
    attention_rank: int = 0,
    attention_targets: Sequence[str] = ATTENTION_LINEARS,
) -> list[nn.Module]:
    """Replace each decoder layer's MLP linears named in ``targets`` by ``LoRAMoELinear``.

    Attention targets get plain ``LoRALinear`` (scale ``lora_alpha / rank``) when ``attention_rank > 0``.
    Pre-existing parameters are frozen; everything is validated before the model is changed.
    Returns the ``LoRAMoELinear`` modules, in depth order (and ``targets`` order within a layer).
    """
    _check_config(num_experts, rank)
    if attention_rank < 0:
        raise LoRAGenError(f"attention_rank={attention_rank} must be 0 (no attention LoRA) or positive")
    if not targets:
        raise LoRAGenError("install_loramoe needs at least one MLP target, e.g. gate_proj, up_proj, down_proj")
    layers = _decoder_layers(model)
    plan = []
    for layer in layers:
        mlp_linears = {name: _target_linear(layer, "mlp", name) for name in targets}
        attn = {name: _target_linear(layer, "self_attn", name) for name in attention_targets} if attention_rank else {}
        plan.append((layer, mlp_linears, attn))
    _freeze(model)
    moe_layers: list[nn.Module] = []
    for layer, mlp_linears, attn in plan:
        for name, linear in mlp_linears.items():
            moe = LoRAMoELinear(linear, num_experts, rank, lora_alpha).train(model.training)
            setattr(layer.mlp, name, moe)
            moe_layers.append(moe)
        _install_attention(layer, attn, attention_rank, lora_alpha, rank, model.training)
    return moe_layers


# ----------------------------------------------------------------------------- balance loss


def _real_rows(tensor: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """(b, s, E) → (N_real, E): the rows of real tokens (all rows without a mask)."""
    rows = tensor.reshape(-1, tensor.shape[-1])
    if token_mask is None:
        return rows
    if token_mask.shape != tensor.shape[:-1]:
        raise LoRAGenError(
            f"token_mask shape {tuple(token_mask.shape)} does not match the last forward's "
            f"tokens {tuple(tensor.shape[:-1])}"
        )
    return rows[token_mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]


def moe_aux_loss(
    layers: Sequence[nn.Module], kind: str = "cv2", token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Load-balancing loss over the real tokens of the last forward, averaged over layers.

    - ``cv2``: ``CV(I)^2 = Var(I) / mean(I)^2`` of the importance ``I_e = Σ_tokens g_e`` (``last_gates``);
      0 when every expert gets the same total gate.
    - ``switch``: ``E · Σ_e f_e P_e`` with ``f_e`` the fraction of (token, selected slot) assignments that go to
      ``e`` (``last_gates > 0``) and ``P_e`` the mean of ``last_probs``; 1 when balanced. (With LoRAMoE's dense
      gates ``f`` is uniform, so this is constantly 1 and gives no gradient.)
    - ``none``: 0.

    ``token_mask`` (b, s) is 1 for real tokens and 0 for padding; padded positions are dropped entirely.
    Layers without gates (never run) are skipped; raises LoRAGenError if none has gates or for an unknown kind.
    """
    if kind not in AUX_KINDS:
        raise LoRAGenError(f"auxiliary loss {kind!r} is unknown: choose one of {list(AUX_KINDS)}")
    active: list[Any] = [layer for layer in layers if getattr(layer, "last_gates", None) is not None]  # MoE layers
    if not active:
        raise LoRAGenError("no MoE layer has gates yet: run a forward pass first")
    if kind == "none":
        return active[0].last_gates.new_zeros(())
    losses = []
    for layer in active:
        gates = _real_rows(layer.last_gates, token_mask).float()
        if kind == "cv2":
            losses.append(cv_squared(gates.sum(dim=0)))
        else:
            probs = _real_rows(layer.last_probs, token_mask).float()
            counts = (gates > 0).float().sum(dim=0)
            frac = counts / counts.sum().clamp_min(1)
            mean_probs = probs.mean(dim=0) if probs.shape[0] else probs.new_zeros(probs.shape[-1])
            losses.append(gates.shape[-1] * (frac * mean_probs).sum())
    return torch.stack(losses).mean()

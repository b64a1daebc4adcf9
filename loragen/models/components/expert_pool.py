"""The expert pool: LoRA factors for every (edge layer, target module, expert).

``A[l,m,e] ∈ R^{r×in}`` (random init), ``B[l,m,e] ∈ R^{out×r}`` (zero init, so an untrained pool
leaves the edge model unchanged). For one system prompt with gates ``g[l]`` (k non-zeros per layer)
the generated LoRA is ``ΔW[l,m] = s · Σ_{e∈TopK} g[l,e] · B[l,m,e] · A[l,m,e]`` with
``s = lora_alpha / r`` — itself a rank-``k·r`` LoRA ``A' = concat_e A_e``, ``B' = concat_e g_e·B_e``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from loragen import LoRAGenError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TargetSite:
    """One target linear: its layer, its path inside the layer and the full path in the edge model."""

    layer: int
    name: str  # path inside the decoder layer, e.g. "self_attn.q_proj"
    path: str  # full module path in the edge model, e.g. "model.layers.3.self_attn.q_proj"
    out_features: int
    in_features: int


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (path, ModuleList) of the decoder layers of a Hugging Face causal LM."""
    layers = cast(Any, model).get_decoder().layers  # a Hugging Face model's API, not nn.Module's
    for name, module in model.named_modules():
        if module is layers:
            return name, layers
    raise LoRAGenError("could not locate the decoder layers of the edge model: is it a causal LM?")


def find_target_sites(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[TargetSite]:
    """All linears of each decoder layer whose last name component is in ``targets``."""
    prefix, layers = decoder_layers(model)
    sites: list[TargetSite] = []
    available: set[str] = set()
    for idx, layer in enumerate(layers):
        for name, module in layer.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            short = name.rsplit(".", 1)[-1]
            available.add(short)
            if short in targets:
                sites.append(TargetSite(idx, name, f"{prefix}.{idx}.{name}", module.out_features, module.in_features))
    missing = [t for t in targets if t not in available]
    if missing:
        raise LoRAGenError(
            f"target module(s) {missing} match no linear layer of the edge model: choose from {sorted(available)}"
        )
    return sites


class ExpertPool(nn.Module):
    """LoRA experts for every target site of an edge model.

    Args:
        edge: the edge causal LM (only read, to find target linears and their shapes).
        target_modules: short names of target linears (default: all attention and MLP projections).
        num_experts: experts per (layer, module).
        rank: LoRA rank ``r`` of each expert.
        lora_alpha: LoRA alpha; the scale is ``s = lora_alpha / rank``.
        top_k: experts per layer in an assembled LoRA (the router's k); None infers it from the gates.
        seed: seed for the ``A`` initialisation.
    """

    def __init__(
        self,
        edge: nn.Module,
        target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
        *,
        num_experts: int = 8,
        rank: int = 8,
        lora_alpha: float = 16.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_experts < 1 or rank < 1:
            raise ValueError(f"num_experts ({num_experts}) and rank ({rank}) must be >= 1")
        self.sites = find_target_sites(edge, tuple(target_modules))
        self.num_layers = len(decoder_layers(edge)[1])
        self.num_experts, self.rank, self.lora_alpha = num_experts, rank, float(lora_alpha)
        self.top_k = top_k
        self.scale = self.lora_alpha / rank
        shapes: dict[str, tuple[int, int]] = {}
        for site in self.sites:
            shape = (site.out_features, site.in_features)
            if shapes.setdefault(site.name, shape) != shape:
                raise LoRAGenError(f"target {site.name} changes shape across layers; pick uniform targets")
        self.module_shapes = shapes
        gen = torch.Generator().manual_seed(seed)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for name, (out_f, in_f) in shapes.items():
            bound = 1.0 / math.sqrt(in_f)  # PEFT's kaiming_uniform(a=sqrt(5)) bound
            a = (torch.rand(self.num_layers, num_experts, rank, in_f, generator=gen) * 2 - 1) * bound
            self.A[self.key(name)] = nn.Parameter(a)
            self.B[self.key(name)] = nn.Parameter(torch.zeros(self.num_layers, num_experts, out_f, rank))

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "__")

    def factors(self, site: TargetSite) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` (n, r, in) and ``B`` (n, out, r) of every expert at one site."""
        k = self.key(site.name)
        return self.A[k][site.layer], self.B[k][site.layer]

    def delta_sq_norm(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mean over target linears of ``‖ΔW‖²_F`` for one prompt's selected experts ``indices`` and gates
        ``weights`` (both (L, k)), from the factors: with ``ΔW = s·B'A'`` (rank ``k·r``),
        ``‖ΔW‖² = s²·Σ (B'ᵀB') ⊙ (A'A'ᵀ)`` -- two (k·r)² matrices per linear, never ``ΔW`` itself.
        Differentiable in the gates and the factors."""
        total = weights.new_zeros((), dtype=torch.float32)
        for site in self.sites:
            a, b = self.factors(site)
            idx, w = indices[site.layer], weights[site.layer]
            k = idx.shape[0]
            a_cat = a[idx].reshape(k * self.rank, -1).float()  # (k·r, in)
            b_cat = (b[idx] * w.to(b.dtype)[:, None, None]).permute(1, 0, 2).reshape(b.shape[1], -1).float()
            total = total + ((b_cat.T @ b_cat) * (a_cat @ a_cat.T)).sum()
        return self.scale**2 * total / len(self.sites)

    def assemble(self, gates: torch.Tensor) -> GeneratedLoRA:
        """The LoRA for one prompt from its gates ``(L, n)`` (k non-zeros per layer)."""
        if gates.dim() != 2 or gates.shape != (self.num_layers, self.num_experts):
            raise ValueError(f"gates must have shape ({self.num_layers}, {self.num_experts}), got {tuple(gates.shape)}")
        # k is fixed by the router, not read off the gates: a gate that underflows to 0 must not change
        # the rank of the exported adapter.
        k = self.top_k or int((gates != 0).sum(-1).max())
        weights, indices = gates.topk(k, dim=-1)
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for site in self.sites:
            a, b = self.factors(site)
            idx, w = indices[site.layer], weights[site.layer]
            a_cat = a[idx].reshape(k * self.rank, -1)  # (k·r, in)
            b_cat = (b[idx] * w.to(b.dtype)[:, None, None]).permute(1, 0, 2).reshape(b.shape[1], -1)  # (out, k·r)
            factors[site.path] = (a_cat, b_cat)
        targets = sorted({s.name.rsplit(".", 1)[-1] for s in self.sites})
        return GeneratedLoRA(
            factors=factors,
            scale=self.scale,
            rank=k * self.rank,
            gates=gates.detach().clone(),
            targets=targets,
            indices=indices,
            weights=weights,
        )


@dataclass
class GeneratedLoRA:
    """The LoRA generated for one system prompt: rank ``k·r`` factors per target path."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # path -> (A' (k·r, in), B' (out, k·r))
    scale: float
    rank: int
    gates: torch.Tensor  # (L, n)
    targets: list[str]
    indices: torch.Tensor | None = None  # (L, k) selected experts
    weights: torch.Tensor | None = None  # (L, k) their gates

    def delta_weight(self, path: str) -> torch.Tensor:
        a, b = self.factors[path]
        return self.scale * (b.float() @ a.float())

    def detach(self) -> GeneratedLoRA:
        factors = {p: (a.detach(), b.detach()) for p, (a, b) in self.factors.items()}
        return GeneratedLoRA(
            factors,
            self.scale,
            self.rank,
            self.gates.detach(),
            list(self.targets),
            None if self.indices is None else self.indices.detach(),
            None if self.weights is None else self.weights.detach(),
        )

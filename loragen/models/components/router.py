"""The router: meta-token states ``H[l]`` → sparse top-k gates over the expert pool.

``z[l] = MLP(LN(H[l] (− μ[l])) (+ layer embedding))``; in training, noise is added before top-k
(noisy top-k: ``z + ε·softplus(W_noise h)``, ε Gaussian or Gumbel); gates are a softmax over the
k selected logits and zero elsewhere. Evaluation is noise-free, so a prompt's LoRA is deterministic.

``center=True`` subtracts ``μ[l]``, the mean meta-token state of layer ``l`` over the training rows
(a running buffer: the exact mean over the first 100 training batches, then an exponential average
with momentum 0.01), before the LayerNorm. The cloud's states at the meta tokens share a large
component whatever the prompt (cosine 0.9+ between tasks on the bundled pair); removing it leaves
the router the part that differs between prompts. Evaluation uses the buffer as trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loragen.models.config import AUX_KINDS, NOISE_KINDS


@dataclass
class Routing:
    """Gates for a batch: ``gates`` (b, L, n) dense with zeros; ``indices``/``weights`` (b, L, k)."""

    gates: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor  # clean logits (b, L, n), before noise

    def select(self, rows: torch.Tensor | slice) -> Routing:
        return Routing(self.gates[rows], self.indices[rows], self.weights[rows], self.logits[rows])


class Router(nn.Module):
    """Shared MLP router over meta-token states.

    Args:
        in_features: cloud hidden size.
        num_experts: experts per (layer, module) in the pool.
        top_k: experts mixed per layer.
        num_layers: edge layers (= meta tokens); used by the optional layer embedding.
        hidden: MLP hidden width (0 = a single linear layer).
        layer_embedding: add a learned per-layer embedding to ``H[l]`` before the MLP.
        noise: training noise, ``none | gaussian | gumbel``.
        center: subtract the running mean meta-token state of each layer first (see the module docstring).
    """

    CENTER_EXACT_BATCHES = 100
    CENTER_MOMENTUM = 0.01

    mlp: nn.Sequential | nn.Linear
    state_mean: torch.Tensor  # buffers, registered only with ``center``
    state_batches: torch.Tensor

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        top_k: int,
        num_layers: int,
        *,
        hidden: int = 256,
        layer_embedding: bool = True,
        noise: str = "gaussian",
        center: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        if noise not in NOISE_KINDS:
            raise ValueError(f"router noise {noise!r} is unknown: choose one of {list(NOISE_KINDS)}")
        self.num_experts, self.top_k, self.noise = num_experts, top_k, noise
        self.norm = nn.LayerNorm(in_features)
        self.center = center
        if center:
            self.register_buffer("state_mean", torch.zeros(num_layers, in_features))
            self.register_buffer("state_batches", torch.zeros((), dtype=torch.long))
        self.layer_embedding = nn.Embedding(num_layers, in_features) if layer_embedding else None
        if self.layer_embedding is not None:
            nn.init.zeros_(self.layer_embedding.weight)
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, num_experts))
        else:
            self.mlp = nn.Linear(in_features, num_experts)
        self.noise_proj = nn.Linear(in_features, num_experts) if noise != "none" else None
        if self.noise_proj is not None:
            nn.init.zeros_(self.noise_proj.weight)
            nn.init.zeros_(self.noise_proj.bias)

    def forward(self, states: torch.Tensor) -> Routing:
        h = states.to(self.norm.weight.dtype)
        if self.center:
            if self.training:
                self._update_mean(h.detach())
            h = h - self.state_mean[: h.shape[1]].to(h.dtype)
        h = self.norm(h)
        if self.layer_embedding is not None:
            h = h + self.layer_embedding.weight[: h.shape[1]]
        logits = self.mlp(h)
        noisy = logits
        if self.training and self.noise_proj is not None:
            scale = F.softplus(self.noise_proj(h))
            if self.noise == "gaussian":
                eps = torch.randn_like(logits)
            else:
                u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
                eps = -torch.log(-torch.log(u))
            noisy = logits + eps * scale
        top_vals, top_idx = noisy.topk(self.top_k, dim=-1)
        weights = top_vals.softmax(dim=-1)
        gates = torch.zeros_like(noisy).scatter(-1, top_idx, weights)
        return Routing(gates=gates, indices=top_idx, weights=weights, logits=logits)

    @torch.no_grad()
    def _update_mean(self, states: torch.Tensor) -> None:
        batches = int(self.state_batches)
        momentum = 1.0 / (batches + 1) if batches < self.CENTER_EXACT_BATCHES else self.CENTER_MOMENTUM
        layers = states.shape[1]
        mean = states.float().mean(0)
        self.state_mean[:layers] += momentum * (mean - self.state_mean[:layers])
        self.state_batches += 1


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``(std/mean)^2`` (0 for a single value)."""
    values = values.float()
    if values.numel() <= 1:
        return values.new_zeros(())
    return values.var(unbiased=False) / (values.mean() ** 2 + eps)


def importance_loss(gates: torch.Tensor) -> torch.Tensor:
    """``CV(I)^2`` with ``I_e = Σ_{batch, layer} g[·, l, e]`` — the paper's balance loss."""
    return cv_squared(gates.reshape(-1, gates.shape[-1]).sum(0))


def switch_load_loss(routing: Routing) -> torch.Tensor:
    """Switch-Transformer load loss ``n · Σ_e f_e · P_e`` (1 when perfectly balanced)."""
    n = routing.logits.shape[-1]
    probs = routing.logits.float().softmax(-1).reshape(-1, n).mean(0)
    counts = F.one_hot(routing.indices, n).float().reshape(-1, n).sum(0)
    frac = counts / counts.sum().clamp_min(1)
    return n * (frac * probs).sum()


def auxiliary_loss(routing: Routing, kind: str = "cv2") -> torch.Tensor:
    if kind == "cv2":
        return importance_loss(routing.gates)
    if kind == "switch":
        return switch_load_loss(routing)
    if kind == "none":
        return routing.gates.new_zeros(())
    raise ValueError(f"auxiliary loss {kind!r} is unknown: choose one of {list(AUX_KINDS)}")

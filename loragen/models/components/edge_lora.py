"""Putting generated LoRA into the edge model: functionally in training, merged in deployment.

Training (``EdgeLoRA.routing``): every sample in a batch carries its own gates. A forward hook on each
target linear adds ``s · Σ_{e∈TopK} g_e · B_e (A_e x)`` computed with the selected experts gathered per
sample — ``u = x·A_selᵀ`` (b×t×k·r), scaled by the gates, then ``B_sel`` — so no per-sample ``ΔW``
(b×out×in) is ever built. Hooks keep the edge model's module names and state dict untouched, so the
same edge object can be merged, saved, or wrapped by PEFT.

Deployment (``EdgeLoRA.merge``): one prompt's ``ΔW`` is materialized once and added to the weights.
The original tensors are kept, so ``unmerge`` restores them bit for bit; a merge whose result is not
finite is refused before any weight changes, and merging twice is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from loragen import LoRAGenError
from loragen.files import atomic_directory
from loragen.models.components.expert_pool import ExpertPool, GeneratedLoRA, TargetSite


class EdgeLoRA:
    """Hooks generated LoRA into an edge model. Not an ``nn.Module``: it owns no parameters.

    Two functional paths: ``routing`` (an ``ExpertPool``'s experts selected and gated per sample: LoRA-Gen)
    and ``applied`` (explicit factors per sample: a hypernetwork's output). The hooks hold references to
    the tensors they apply, so gradients reach their source; the edge model itself stays frozen. Without a
    pool, ``sites`` names the target linears.
    """

    def __init__(
        self, edge: nn.Module, pool: ExpertPool | None = None, *, sites: list[TargetSite] | None = None
    ) -> None:
        self.edge, self.pool = edge, pool
        sites = pool.sites if pool is not None else sites
        if not sites:
            raise ValueError("EdgeLoRA needs an expert pool or the target sites")
        modules = dict(edge.named_modules())
        self._modules: dict[str, nn.Linear] = {site.path: modules[site.path] for site in sites}
        self._routing: tuple[torch.Tensor, torch.Tensor] | None = None
        self._factors: tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float] | None = None
        self._originals: dict[str, torch.Tensor] | None = None
        self._buffers: dict[str, torch.Tensor] = {}  # reusable storage for merged weights
        self._bounds: dict[str, float] = {}  # max |W| of each original weight (safe-merge bound)
        self._handles = [self._modules[site.path].register_forward_hook(_SiteHook(self, site)) for site in sites]

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ functional (training) path

    def routing(self, indices: torch.Tensor, weights: torch.Tensor) -> contextlib.AbstractContextManager[None]:
        """Within this context the edge forward adds each sample's generated LoRA.

        ``indices`` and ``weights`` have shape (batch, L, k): the selected experts and their gates;
        a batch of 1 applies to every row of the forward.
        """
        return self._functional("_routing", (indices, weights))

    def applied(
        self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float
    ) -> contextlib.AbstractContextManager[None]:
        """Within this context the edge forward adds each sample's own LoRA ``s · B (A x)``.

        ``factors`` maps each target path to ``A`` (batch, R, in) and ``B`` (batch, out, R); a batch of 1
        applies to every row of the forward.
        """
        return self._functional("_factors", (factors, scale))

    @contextlib.contextmanager
    def _functional(self, slot: str, value: object) -> Iterator[None]:
        """The hooks read ``slot`` while the context is open (refused while a LoRA is merged)."""
        if self._originals is not None:
            raise LoRAGenError("the edge model has a merged LoRA: unmerge it before a functional forward")
        setattr(self, slot, value)
        try:
            yield
        finally:
            setattr(self, slot, None)

    # ------------------------------------------------------------------ merge / unmerge (deployment)

    @property
    def merged(self) -> bool:
        return self._originals is not None

    @torch.no_grad()
    def merge(self, lora: GeneratedLoRA) -> None:
        """Add ``ΔW`` of one generated LoRA into the edge weights (refuses double or non-finite merges).

        Safety without a pass over every merged weight: the factors must be finite and
        ``max|W| + s·(k·r)·max|B'|·max|A'|`` (a bound on every merged entry) must stay far below the
        dtype's largest value, so no entry can become inf or NaN. Merged weights are written into
        buffers kept across merges (no fresh allocation per task).
        """
        if self._originals is not None:
            raise LoRAGenError("a generated LoRA is already merged into the edge model: call unmerge() first")
        for path, module in self._modules.items():
            a, b = lora.factors[path]
            limit = torch.finfo(module.weight.dtype).max / 4
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise LoRAGenError(
                    f"the generated LoRA for {path} is non-finite: the generator state is corrupt "
                    "or diverged; nothing was merged"
                )
            bound = self._weight_bound(path) + abs(lora.scale) * a.shape[0] * float(a.abs().max() * b.abs().max())
            if not bound < limit:
                raise LoRAGenError(
                    f"merging the generated LoRA could make {path} non-finite (bound {bound:.3g}): "
                    "the generator state is corrupt or diverged; nothing was merged"
                )
        self._originals = {}
        for path, module in self._modules.items():
            weight = module.weight.data
            a, b = lora.factors[path]
            buffer = self._buffers.get(path)
            if buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype:
                buffer = self._buffers[path] = torch.empty_like(weight)
            if weight.dtype == torch.float32:
                torch.addmm(weight, b.to(weight), a.to(weight), alpha=lora.scale, out=buffer)
            else:  # low precision: add in fp32, round once
                buffer.copy_(
                    torch.addmm(
                        weight.float(), b.float().to(weight.device), a.float().to(weight.device), alpha=lora.scale
                    )
                )
            # Swap storages: the original tensor is kept untouched, so unmerge restores it bit for bit.
            self._originals[path] = weight
            module.weight.data = buffer

    def _weight_bound(self, path: str) -> float:
        if path not in self._bounds:
            bound = float(self._modules[path].weight.detach().abs().max())
            if not bound < float("inf"):
                raise LoRAGenError(f"the edge weight {path} is non-finite: the edge model is corrupt")
            self._bounds[path] = bound
        return self._bounds[path]

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact original weight tensors (swapped back, never subtracted)."""
        if self._originals is None:
            return
        for path, module in self._modules.items():
            self._buffers[path] = module.weight.data
            module.weight.data = self._originals[path]
        self._originals = None

    @contextlib.contextmanager
    def merged_lora(self, lora: GeneratedLoRA) -> Iterator[None]:
        self.merge(lora)
        try:
            yield
        finally:
            self.unmerge()


class _SiteHook:
    """Forward hook of one target linear (a class, not a closure, so models can be pickled for
    multi-process strategies such as ``ddp_spawn``)."""

    def __init__(self, owner: EdgeLoRA, site: TargetSite) -> None:
        self.owner, self.site = owner, site

    def __call__(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if self.owner._factors is not None:
            return self._applied(inputs[0], output)
        if self.owner._routing is None:
            return output
        indices, weights = self.owner._routing
        pool, site = self.owner.pool, self.site
        assert pool is not None  # routing selects experts of the pool
        a_all, b_all = pool.factors(site)  # (n, r, in), (n, out, r)
        idx, w = indices[:, site.layer], weights[:, site.layer]  # (b, k)
        batch, k = inputs[0].shape[0], idx.shape[1]
        if idx.shape[0] != batch:  # one routing for the whole batch (e.g. options of one item)
            idx, w = idx.expand(batch, -1), w.expand(batch, -1)
        r = pool.rank
        x = inputs[0].to(a_all.dtype)
        a_sel = a_all[idx].reshape(batch, k * r, -1)  # (b, k·r, in)
        b_sel = b_all[idx].transpose(-1, -2).reshape(batch, k * r, -1)  # (b, k·r, out)
        scale = (w.to(a_all.dtype) * pool.scale).repeat_interleave(r, dim=-1)  # (b, k·r)
        u = torch.bmm(x.reshape(batch, -1, x.shape[-1]), a_sel.transpose(1, 2)) * scale[:, None, :]
        delta = torch.bmm(u, b_sel).reshape(output.shape)
        return output + delta.to(output.dtype)

    def _applied(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        assert self.owner._factors is not None  # checked by ``__call__``
        factors, scale = self.owner._factors
        a, b = factors[self.site.path]  # (b, R, in), (b, out, R)
        batch = x.shape[0]
        if a.shape[0] != batch:
            a, b = a.expand(batch, -1, -1), b.expand(batch, -1, -1)
        u = torch.bmm(x.to(a.dtype).reshape(batch, -1, x.shape[-1]), a.transpose(1, 2))  # (b, t, R)
        delta = torch.bmm(u, b.transpose(1, 2)).reshape(output.shape) * scale
        return output + delta.to(output.dtype)


def save_peft_adapter(
    lora: GeneratedLoRA,
    directory: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``lora`` as a standard PEFT LoRA adapter (rank k·r, ``lora_alpha = s·k·r``).

    Written to a temporary directory beside ``directory`` and moved into place only when complete.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    target = Path(directory)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise LoRAGenError(f"output directory {target} exists and is not empty: choose another or pass overwrite")
    with atomic_directory(target) as tmp:
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.scale * lora.rank,  # type: ignore[arg-type]  # PEFT annotates int; floats work
            lora_dropout=0.0,
            bias="none",
            target_modules=list(lora.targets),
            task_type="CAUSAL_LM",
            base_model_name_or_path=base_model_name_or_path,
        )
        config.save_pretrained(str(tmp))
        tensors = {}
        for path, (a, b) in lora.factors.items():
            tensors[f"base_model.model.{path}.lora_A.weight"] = a.detach().float().contiguous().cpu()
            tensors[f"base_model.model.{path}.lora_B.weight"] = b.detach().float().contiguous().cpu()
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "loragen_gates.json").write_text(json.dumps({"gates": lora.gates.float().cpu().tolist()}))
    return target

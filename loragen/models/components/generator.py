"""The cloud side of LoRA-Gen: a (frozen) cloud LM reading ``[system prompt ; meta tokens]``.

One learnable meta token per edge layer is appended after each tokenized system prompt; the cloud's
final hidden states at those positions, ``H ∈ R^{L×d_cloud}``, are what the router turns into gates.

Sequences are right-padded: the prompt sits at positions ``0..n-1``, its meta tokens at ``n..n+L-1``
and padding after them. Under causal attention padding can then never influence a meta position, so
a prompt alone and inside a padded batch give the same states.

Identical system prompts in a batch run through the cloud once. When nothing on the cloud side is
trainable (frozen cloud, frozen meta tokens), a prompt's states are constant: they are computed
without autograd and cached by token ids, so training costs one cloud pass per distinct prompt.

Those constant states can also come from a states file (``loragen encode``; ``cloud_states.CloudStates``): then
the cloud runs for no prompt the file holds, and need not be loaded at all (``cloud=None``): the meta tokens are
the file's, and a prompt the file lacks is a one-line error naming it (with a cloud, it runs there instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from loragen import LoRAGenError
from loragen.models.components.cloud_states import CloudStates


class CloudGenerator(nn.Module):
    """Cloud LM + meta tokens → ``H`` of shape ``(batch, num_meta, d_cloud)``.

    Args:
        cloud: a Hugging Face causal LM (frozen by the caller).
        num_meta: number of meta tokens (= number of edge layers).
        train_meta_tokens: learn the meta-token embeddings (gradients flow through the frozen cloud).
        cloud_lora_rank: if > 0, wrap the cloud with a PEFT LoRA of this rank and train it.
        cloud_lora_targets: module names for the cloud LoRA.
        cache_states: cache constant meta-token states across steps when nothing cloud-side trains.
        seed: seed for the meta-token initialisation.
        pooling: ``meta`` (the states at the meta tokens, ``(batch, num_meta, d)``) or ``mean`` (no meta
            tokens: the mean of the prompt's final hidden states, ``(batch, 1, d)``: a prompt embedding, as
            Text-to-LoRA feeds its hypernetwork).
        states: precomputed states (a ``loragen encode`` file); its meta tokens replace the seeded ones.
        describe: token ids -> text, to name a prompt the states lack.
    """

    cloud: Any  # the Hugging Face causal LM (PEFT-wrapped with a cloud LoRA) or None: its API is not nn.Module's

    def __init__(
        self,
        cloud: nn.Module | None,
        num_meta: int,
        *,
        train_meta_tokens: bool = False,
        cloud_lora_rank: int = 0,
        cloud_lora_targets: tuple[str, ...] = ("q_proj", "v_proj"),
        cache_states: bool = True,
        seed: int = 0,
        pooling: str = "meta",
        states: CloudStates | None = None,
        describe: Callable[[list[int]], str] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("meta", "mean"):
            raise ValueError(f"pooling={pooling!r} is unknown: choose meta or mean")
        self.pooling = pooling
        num_meta = num_meta if pooling == "meta" else 0
        if states is not None:
            if states.pooling != pooling or states.meta_tokens.shape[0] != num_meta:
                raise LoRAGenError(
                    f"cloud states {states.path} hold {states.meta_tokens.shape[0]} {states.pooling}-pooled meta "
                    f"states per prompt; this model needs {num_meta} {pooling}-pooled: encode them for this pair"
                )
            init = states.meta_tokens.clone()
        elif cloud is None:
            raise ValueError("CloudGenerator needs a cloud model or precomputed states")
        else:
            embed = cast(Any, cloud).get_input_embeddings()  # a Hugging Face model's API, not nn.Module's
            std = float(embed.weight.detach().float().std())
            gen = torch.Generator().manual_seed(seed)
            init = (torch.randn(num_meta, embed.embedding_dim, generator=gen) * std).to(embed.weight.dtype)
        self.meta_tokens = nn.Parameter(init, requires_grad=train_meta_tokens)
        self.states, self.describe = states, describe
        self.num_meta = num_meta
        self.cloud_lora_rank = cloud_lora_rank
        if cloud_lora_rank > 0 and cloud is not None:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=cloud_lora_rank,
                lora_alpha=2 * cloud_lora_rank,
                lora_dropout=0.0,
                target_modules=list(cloud_lora_targets),
            )
            cloud = get_peft_model(cloud, config)
        self.cloud = cloud
        self.cache_states = cache_states
        self._cache: dict[bytes, torch.Tensor] = {}
        self.cloud_passes = 0  # rows actually run through the cloud (for tests and efficiency logs)
        # Loaded meta tokens make cached states stale.
        self.register_load_state_dict_post_hook(_clear_cache_after_load)

    @property
    def trains_cloud_side(self) -> bool:
        return self.meta_tokens.requires_grad or self.cloud_lora_rank > 0

    @property
    def hidden_size(self) -> int:
        return int(self.meta_tokens.shape[-1])

    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, system_ids: torch.Tensor, system_mask: torch.Tensor) -> torch.Tensor:
        """Meta-token states for each row of a (right- or left-) padded batch of system prompts."""
        rows = [ids[mask.bool()] for ids, mask in zip(system_ids, system_mask, strict=True)]
        keys = [r.cpu().numpy().tobytes() for r in rows]
        first: dict[bytes, torch.Tensor] = {}  # distinct prompts, in order of first appearance
        for key, row in zip(keys, rows, strict=True):
            first.setdefault(key, row)
        slot = {key: i for i, key in enumerate(first)}
        index = torch.tensor([slot[k] for k in keys], device=system_ids.device)
        if self.cache_states and not self.trains_cloud_side:
            missing = [k for k in first if k not in self._cache]
            if missing and self.states is not None:
                self._cache.update(self._from_states(missing, first))
                missing = [k for k in missing if k not in self._cache]
            if missing:
                with torch.no_grad():
                    states = self.run_cloud([first[k] for k in missing])
                self._cache.update({k: s.detach() for k, s in zip(missing, states, strict=True)})
            out = torch.stack([self._cache[k] for k in first]).to(self.meta_tokens.device)
        else:
            out = self.run_cloud(list(first.values()))
        return out[index]

    def _from_states(self, keys: list[bytes], rows: dict[bytes, torch.Tensor]) -> dict[bytes, torch.Tensor]:
        """The file's states of these prompts; without a cloud to fall back on, a prompt it lacks is an error."""
        assert self.states is not None
        found = {k: s for k in keys if (s := self.states.lookup(rows[k])) is not None}
        lacking = [k for k in keys if k not in found]
        if lacking and self.cloud is None:
            ids = rows[lacking[0]].tolist()
            text = self.describe(ids) if self.describe else f"{len(ids)} tokens"
            raise LoRAGenError(
                f"cloud states {self.states.path} hold no states for the system prompt {text[:80]!r} "
                f"({len(lacking)} prompt(s) missing): run `loragen encode` over data that includes it, or leave out "
                "model.init_args.cloud_states so the cloud reads it"
            )
        return found

    def run_cloud(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Run ``[prompt ; meta]`` for each row (right-padded) and gather the meta positions (no cache, no states
        file: what ``loragen encode`` writes)."""
        embed = self.cloud.get_input_embeddings()
        lengths = [int(r.numel()) for r in rows]
        total = max(lengths) + self.num_meta
        batch, dim = len(rows), self.meta_tokens.shape[-1]
        meta = self.meta_tokens.to(embed.weight.dtype)
        inputs = meta.new_zeros(batch, total, dim)
        mask = torch.zeros(batch, total, dtype=torch.long, device=meta.device)
        positions = torch.empty(batch, self.num_meta, dtype=torch.long, device=meta.device)
        for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            if n:
                inputs[b, :n] = embed(row.to(meta.device))
            inputs[b, n : n + self.num_meta] = meta
            mask[b, : n + self.num_meta] = 1
            positions[b] = torch.arange(n, n + self.num_meta, device=meta.device)
        self.cloud_passes += batch
        hidden = self._decoder()(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).unsqueeze(1)
        return torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    def _decoder(self) -> Any:
        model = self.cloud
        if hasattr(model, "get_base_model"):  # PEFT wrapper: LoRA layers are injected in place
            model = model.get_base_model()
        return model.get_decoder()


def _clear_cache_after_load(module: CloudGenerator, _incompatible_keys: object) -> None:
    module.clear_cache()  # a module-level function, so the generator stays picklable (ddp_spawn)
    if module.states is not None:  # loaded meta tokens (a checkpoint's) must be those the states were computed with
        module.states.check_meta_tokens(module.meta_tokens, "the loaded weights")

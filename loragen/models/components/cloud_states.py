"""Cloud states computed apart from training: the frozen cloud's meta-token states per system prompt, in a file.

With a frozen cloud and frozen meta tokens, what the cloud gives the router for a prompt is a constant.
``loragen encode`` computes it once per distinct prompt (a Lightning predict loop, on any devices) and writes a
states file; ``--model.init_args.cloud_states FILE`` then trains, tests, generates and serves without loading
the cloud for the prompts the file holds.

The file is safetensors:

- one tensor per prompt, ``states.<sha256>`` of shape ``(num_meta, d_cloud)``, where ``sha256`` is that of the
  prompt's cloud token ids as little-endian int64 (what the generator reads, after truncation);
- ``meta_tokens``: the meta-token embeddings the states were computed with (a cloud-less model starts from
  them, so a fresh fit with the file equals one with the cloud);
- metadata: the format, the cloud's fingerprint (source, architecture, layers, width, vocabulary), the meta
  tokens' sha256, the states' dtype and pooling, and each prompt's text where it is known.

A file computed for another cloud, or with other meta tokens (another seed, a checkpoint's trained ones), is
refused in one line naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loragen import LoRAGenError

FORMAT = "loragen-cloud-states/1"
CLOUD_FIELDS = ("cloud", "cloud_arch", "cloud_layers", "cloud_hidden", "cloud_vocab")  # of PairFingerprint


def prompt_sha(ids: Any) -> str:
    """The states-file key of one tokenized system prompt (token ids, a list or a 1-D tensor without padding)."""
    data = torch.as_tensor(ids, dtype=torch.long).cpu().numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def tensor_sha(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's values as float32 (the meta tokens' identity, whatever dtype they are held in)."""
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def cloud_fingerprint(backbone: Any) -> dict[str, Any]:
    """The cloud's part of the pair fingerprint, from a loaded backbone."""
    return {
        "cloud": backbone.source,
        "cloud_arch": str(backbone.model.config.model_type),
        "cloud_layers": backbone.num_layers,
        "cloud_hidden": backbone.hidden_size,
        "cloud_vocab": len(backbone.tokenizer),
    }


class StaleStatesError(LoRAGenError):
    """A states file computed for another cloud or other meta tokens."""


@dataclass
class CloudStates:
    """The states of a file, by prompt sha256, with what they were computed from."""

    states: dict[str, torch.Tensor]
    meta_tokens: torch.Tensor
    cloud: dict[str, Any]
    pooling: str = "meta"
    prompts: dict[str, str] = field(default_factory=dict)  # sha256 -> text, where known
    path: str = ""

    @property
    def meta_sha(self) -> str:
        return tensor_sha(self.meta_tokens)

    @property
    def dtype(self) -> str:
        first = next(iter(self.states.values()), self.meta_tokens)
        return str(first.dtype).removeprefix("torch.")

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (a failed write leaves no half-written file)."""
        from safetensors.torch import save

        from loragen.files import atomic_write_bytes

        tensors = {f"states.{k}": v.detach().cpu().contiguous() for k, v in self.states.items()}
        tensors["meta_tokens"] = self.meta_tokens.detach().cpu().contiguous()
        metadata = {
            "format": FORMAT,
            "cloud": json.dumps(self.cloud, sort_keys=True),
            "meta_tokens_sha256": self.meta_sha,
            "dtype": self.dtype,
            "pooling": self.pooling,
            "prompts": json.dumps(self.prompts, sort_keys=True),
        }
        return atomic_write_bytes(path, save(tensors, metadata=metadata))

    @staticmethod
    def check_file(path: str | Path) -> dict[str, str]:
        """A states file's metadata, read from its header alone (no tensor loaded); anything else fails in one
        line naming the fix. What ``load`` checks first, and what commands check before any model loads."""
        return _read(path, tensors=False)[0]

    @classmethod
    def load(cls, path: str | Path) -> CloudStates:
        """Read a states file; anything else fails in one line naming the fix."""
        metadata, tensors = _read(path, tensors=True)
        path = Path(path).expanduser()
        states = cls(
            states={k.removeprefix("states."): v for k, v in tensors.items() if k.startswith("states.")},
            meta_tokens=tensors["meta_tokens"],
            cloud=json.loads(metadata["cloud"]),
            pooling=metadata.get("pooling", "meta"),
            prompts=json.loads(metadata.get("prompts", "{}")),
            path=str(path),
        )
        if states.meta_sha != metadata.get("meta_tokens_sha256"):
            raise LoRAGenError(f"{path} is damaged: its meta tokens do not match their recorded sha256; {_FIX}")
        return states

    # ------------------------------------------------------------------ staleness

    def check_cloud(self, cloud: dict[str, Any]) -> None:
        """Refuse the file if ``cloud`` (fields of ``CLOUD_FIELDS``; those given are compared) is another cloud."""
        diffs = [f"{k}: file {self.cloud.get(k)!r} vs. given {v!r}" for k, v in cloud.items() if self.cloud.get(k) != v]
        if diffs:
            raise StaleStatesError(
                f"cloud states {self.path or 'file'} were computed for another cloud ({'; '.join(diffs)}): "
                "re-run `loragen encode` with this cloud, or give the cloud they were computed with"
            )

    def check_meta_tokens(self, meta_tokens: torch.Tensor, origin: str) -> None:
        """Refuse the file if ``meta_tokens`` (from ``origin``, e.g. a checkpoint) are not the file's."""
        if tuple(meta_tokens.shape) != tuple(self.meta_tokens.shape) or tensor_sha(meta_tokens) != self.meta_sha:
            raise StaleStatesError(
                f"cloud states {self.path or 'file'} were computed with other meta tokens than {origin}'s "
                f"(sha256 {self.meta_sha[:12]} vs. {tensor_sha(meta_tokens)[:12]}): re-run `loragen encode` with "
                "the same --ckpt_path (or model.init_from / seed) as this run"
            )

    def lookup(self, ids: torch.Tensor) -> torch.Tensor | None:
        return self.states.get(prompt_sha(ids))


_FIX = "write one with `loragen encode --config CONFIG --out FILE`"


def _read(path: str | Path, tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise LoRAGenError(f"cloud states file {path} does not exist: {_FIX}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise LoRAGenError(f"{path} is not a loragen cloud states file (format {metadata.get('format')!r})")
            found = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}  # noqa: SIM118 - no __iter__
    except LoRAGenError as err:
        raise LoRAGenError(f"{err}: {_FIX}") from None
    except Exception as err:  # not safetensors at all
        raise LoRAGenError(f"{path} is not a loragen cloud states file ({type(err).__name__}): {_FIX}") from None
    return metadata, found

"""Generated gates cached on disk by (checkpoint hash, system-prompt hash).

The gates determine the LoRA exactly (given the checkpoint), so caching them — a few kilobytes per
prompt — is enough for a repeated request to skip the cloud pass; adapters are re-assembled from
them in milliseconds. Default location: ``cache_root() / "generated"`` (``LORAGEN_CACHE`` moves it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loragen import LoRAGenError
from loragen.deploy.gates import GatesRecord
from loragen.files import atomic_write_text


def default_cache_dir() -> Path:
    from loragen.backbones import cache_root

    return cache_root() / "generated"


class GatesCache:
    """``get`` / ``put`` of ``GatesRecord`` files at ``DIR/<checkpoint sha256>/<prompt sha256>.json``."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, checkpoint_sha256: str, prompt_sha256: str) -> Path:
        return self.directory / checkpoint_sha256 / f"{prompt_sha256}.json"

    def get(self, checkpoint_sha256: str, prompt_sha256: str) -> GatesRecord | None:
        """The cached record, or None (a missing, unreadable or inconsistent entry is a miss)."""
        path = self.path(checkpoint_sha256, prompt_sha256)
        try:
            record = GatesRecord.from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
        except (OSError, ValueError, LoRAGenError):
            return None
        if (record.checkpoint_sha256, record.system_prompt_sha256) != (checkpoint_sha256, prompt_sha256):
            return None
        return record

    def put(self, record: GatesRecord) -> Path:
        """Write atomically (temporary file + rename), so readers never see a partial entry; of two
        processes writing the same entry the last rename wins, and both wrote a valid entry."""
        path = self.path(record.checkpoint_sha256, record.system_prompt_sha256)
        return atomic_write_text(path, json.dumps(record.to_dict()))

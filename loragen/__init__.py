"""loragen: LoRA-Gen — a cloud LM turns a task's system prompt into a LoRA for an edge LM.

Heavy libraries (torch, transformers, lightning) are imported by the submodules that need them,
so ``import loragen`` and ``loragen --help`` stay fast.
"""

__version__ = "0.1.0"


class LoRAGenError(Exception):
    """An error a user can cause and fix (bad config, missing file, wrong model pair)."""

"""Baselines in the LoRA-Gen harness: same DataModules, metrics, optimizer schedule and results files.

Select one with ``model.class_path`` (``loragen fit`` / ``loragen test``) or compare several with
``loragen compare``.
"""

from loragen.models.baselines.base import BaseModel, EdgeBaselineModule
from loragen.models.baselines.lora import LoRABaseline
from loragen.models.baselines.moe import LoRAMoEBaseline, MixLoRABaseline
from loragen.models.baselines.prompt_tuning import PromptTuningBaseline
from loragen.models.baselines.text_to_lora import TextToLoRAModule

__all__ = [
    "BaseModel",
    "EdgeBaselineModule",
    "LoRABaseline",
    "LoRAMoEBaseline",
    "MixLoRABaseline",
    "PromptTuningBaseline",
    "TextToLoRAModule",
]

"""Task formats a user can declare from a config, without code (see ``registry.task_from_config``).

- ``format: choice`` -- multiple choice from JSON/JSONL rows: ``question_field``, the options either
  as a list (``options_field``) or as separate keys (``option_fields``), ``label_field`` with
  ``label_base`` 0 or 1 (or letters A, B, ... when the label is a letter); LLM-Adapters rows also work.
- ``format: llm_adapters`` -- LLM-Adapters multiple-choice JSON (``answerN`` / ``solutionN`` / ...).
- ``format: free`` -- free-form ``input_field`` -> ``output_field`` (optional ``answer_field``),
  formatted with ``input_template`` (default ``Question: {input}\\nAnswer:``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loragen.data.tasks.base import Item, Malformed, TaskSpec, choice_item, get_str, parse_index
from loragen.data.tasks.llm_adapters import is_llm_adapters, parse_choice


@dataclass
class ChoiceTask(TaskSpec):
    question_field: str = "question"
    options_field: str | None = "options"
    option_fields: list[str] = field(default_factory=list)
    label_field: str = "label"
    label_base: int = 0

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            return parse_choice(row, self.answer_prefix)
        question = get_str(row, self.question_field)
        if self.option_fields:
            options = [get_str(row, key) for key in self.option_fields]
        else:
            listed = row.get(self.options_field) if isinstance(row, dict) and self.options_field is not None else None
            if not isinstance(listed, list) or not all(isinstance(o, str) for o in listed):
                raise Malformed(f"field {self.options_field!r} must be a list of strings")
            options = listed
        raw = row.get(self.label_field, label) if isinstance(row, dict) else label
        if isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().isalpha():
            raw = ord(raw.strip().upper()) - ord("A") + self.label_base
        if raw is None:
            raise Malformed(f"missing field {self.label_field!r}")
        return choice_item(question, options, parse_index(raw, len(options), self.label_base), self.answer_prefix)


@dataclass
class LLMAdaptersTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        return parse_choice(row, self.answer_prefix)


@dataclass
class FreeTask(TaskSpec):
    input_field: str = "input"
    output_field: str = "output"
    answer_field: str | None = None
    input_template: str = "Question: {input}\nAnswer:"

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        text, output = get_str(row, self.input_field), row.get(self.output_field) if isinstance(row, dict) else None
        if not isinstance(output, str) or not output.strip():
            raise Malformed(f"missing or empty field {self.output_field!r}")
        answer = str(row[self.answer_field]) if self.answer_field and row.get(self.answer_field) is not None else None
        return Item(self.input_template.format(input=text), output.strip(), answer=answer)


FORMATS: dict[str, type[TaskSpec]] = {"choice": ChoiceTask, "llm_adapters": LLMAdaptersTask, "free": FreeTask}

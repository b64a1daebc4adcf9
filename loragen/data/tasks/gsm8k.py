"""GSM8K (Cobbe et al. 2021; MIT, Copyright (c) 2021 OpenAI -- keep the notice), and LLM-Adapters' ``math``
word problems in the same form (``llm-adapters/math_data/train.json``).

Local files: the official ``gsm8k/{train,test}.jsonl`` (question, answer = rationale with
``<<calc>>`` annotations and a final ``#### N``) and the LLM-Adapters ``llm-adapters/gsm8k/test.json``
(instruction = question, output "A: ... The answer is N.", answer "N.0"). Hub: ``openai/gsm8k`` (main).

Records: input ``Question: ...\\nAnswer:``, output the rationale without calculator annotations ending
"The answer is N.", ``meta['answer']`` the number (generation scoring, kind ``number``). There are no
options, so evaluation by option log-likelihood does not apply (answer loss only).
"""

from __future__ import annotations

import re
from typing import Any

from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec, get_str
from loragen.data.tasks.llm_adapters import is_llm_adapters
from loragen.eval.extraction import normalize_number

_CALC = re.compile(r"<<[^<>]*>>")


def gsm8k_item(question: str, rationale: str, number: str) -> Item:
    answer = normalize_number(number)
    if answer is None:
        raise Malformed(f"final answer {number!r} is not a number")
    rationale = "\n".join(line.strip() for line in _CALC.sub("", rationale).strip().splitlines() if line.strip())
    output = f"{rationale}\nThe answer is {answer}." if rationale else f"The answer is {answer}."
    return Item(f"Question: {question}\nAnswer:", output, answer=answer)


class Gsm8kTask(TaskSpec):
    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if is_llm_adapters(row):
            question = get_str(row, "instruction")
            output = str(row.get("output") or "").strip()
            output = re.sub(r"\AA:\s*", "", output)
            output = re.sub(r"\s*The answer is\s*[^\n]*\Z", "", output)
            return gsm8k_item(question, output, str(row.get("answer")))
        question, solution = get_str(row, "question"), row.get("answer")
        if not isinstance(solution, str) or "####" not in solution:
            raise Malformed("field 'answer' must be a solution ending in '#### N'")
        rationale, _, number = solution.rpartition("####")
        return gsm8k_item(question, rationale, number.strip())


GSM8K = Gsm8kTask(
    name="gsm8k",
    description="Solve the grade-school math word problem step by step and end with 'The answer is N.'",
    files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    hub=HubSource("openai/gsm8k", "main", {"train": "train", "test": "test"}),
    answer_kind="number",
    license="License: MIT (Copyright (c) 2021 OpenAI; keep the notice).",
    notes="The LLM-Adapters copy of the test split (llm-adapters/gsm8k/test.json) reads the same; point "
    "files.gsm8k.test at it to use it.",
)
TASKS = [GSM8K]
MATH = Gsm8kTask(
    name="math",
    description="Solve the math word problem step by step and end with 'The answer is N.'",
    files={"train": "llm-adapters/math_data/train.json"},
    carve=300,
    license="LLM-Adapters compilation ODC-By 1.0 (credit Hu et al., EMNLP 2023); the rationales are LLM-generated.",
    notes="LLM-Adapters' math_data (arithmetic word problems with worked solutions), a train split only: val/test "
    "are 300 items carved from it, train is the rest.",
)
TASKS.append(MATH)

#!/usr/bin/env python
"""Build the small multi-task quickstart dataset shipped in ``loragen/data/quickstart/``.

The source is the LLM-Adapters compilation (Hu et al., EMNLP 2023) of ARC-Easy, ARC-Challenge,
OpenBookQA and BoolQ. Each source record is an instruction-tuning item such as::

    {"instruction": "Please choose the correct answer to the question: ...\\n\\nAnswer1: ... Answer2: ...
     \\n\\nAnswer format: answer1/answer2/...", "input": "", "output": "the correct answer is answer2",
     "answer": "answer2"}

This script reads the question and options out of the instruction text with the task registry's LLM-Adapters
reader (``loragen.data.tasks.llm_adapters``), keeps the records that pass this subset's stricter checks,
draws a small deterministic subset per task (train/val from the source train split, test from the source
test split) and writes one JSONL file per task and split, plus a README with counts, provenance and license
notes.

Example::

    python scripts/build_quickstart_data.py --source PATH/TO/llm-adapters
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragen.data.tasks import get_task, llm_adapters
from loragen.data.tasks.base import Item, Malformed, choice_item, normalize_space
from loragen.data.tasks.boolq import boolq_item

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("loragen/data/quickstart")

N_TRAIN = 100
N_VAL = 20
N_TEST = 50
N_FEW_SHOT = 3
MIN_OPTIONS = 2
MAX_OPTIONS = 5

LICENSE_SOURCE_NAME = "DATA_LICENSE"
LICENSE_OUT_NAME = "LLM_ADAPTERS_DATA_LICENSE.txt"


@dataclass(frozen=True)
class Example:
    """One parsed question with its options and the 0-based index of the correct option."""

    question: str
    options: tuple[str, ...]
    label: int

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Identity for de-duplication and split disjointness.

        Option order is ignored (OpenBookQA repeats some questions with shuffled options); case is kept
        ("Rr" and "rr" are different genotypes in ARC).
        """
        return self.question, tuple(sorted(self.options))


class SkipRecord(Exception):
    """Raised by a parser when a source record cannot be used; the message is the skip reason."""


Parser = Callable[[dict[str, Any]], Example]


def parse_multiple_choice(record: dict[str, Any]) -> Example:
    """An LLM-Adapters multiple-choice record (ARC, OpenBookQA), read by the task registry's reader
    (``loragen.data.tasks.llm_adapters.parse_choice``), kept only if it passes this subset's stricter checks."""
    item = _registry_read(lambda: llm_adapters.parse_choice(record, "answer"))
    assert item.question is not None and item.options is not None and item.label is not None
    if not MIN_OPTIONS <= len(item.options) <= MAX_OPTIONS:
        raise SkipRecord(f"option count outside {MIN_OPTIONS}-{MAX_OPTIONS}")
    if len(set(item.options)) != len(item.options):  # case-sensitive: genetics options like "Rr" vs "rr" differ
        raise SkipRecord("duplicate option texts")
    _check_output(record)
    return Example(question=item.question, options=item.options, label=item.label)


def parse_boolq(record: dict[str, Any]) -> Example:
    """An LLM-Adapters BoolQ record (question only, no passage), read by the task registry's reader."""
    question, label = _registry_read(lambda: llm_adapters.parse_boolq(record))
    if not question.rstrip("?").strip():
        raise SkipRecord("empty question")
    _check_output(record)
    return Example(question=question, options=("true", "false"), label=label)


def _registry_read(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Malformed as err:
        raise SkipRecord(f"unparseable ({err})") from None


def _check_output(record: dict[str, Any]) -> None:
    """This subset also needs the free-text output present and equal to its "answer" field."""
    expected = f"the correct answer is {str(record.get('answer', '')).strip()}"
    if normalize_space(str(record.get("output", ""))).lower() != expected.lower():
        raise SkipRecord("output disagrees with answer")


def formulated(task: str, example: Example) -> Item:
    """The example as loragen's task registry asks it for option scoring (lm-evaluation-harness's cloze
    formulation of the task), so the shipped records and the registry cannot drift apart."""
    if task == "boolq":
        item = boolq_item(example.question, example.label)
    else:
        item = choice_item(example.question, example.options, example.label, "answer")
    return get_task(task).formulate(item, "cloze")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    source_subdir: str
    description: str
    parser: Parser
    source_name: str
    license_name: str


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="arc_easy",
        source_subdir="ARC-Easy",
        description=get_task("arc_easy").description,
        parser=parse_multiple_choice,
        source_name="ARC-Easy",
        license_name="CC BY-SA 4.0",
    ),
    TaskSpec(
        name="arc_challenge",
        source_subdir="ARC-Challenge",
        description=get_task("arc_challenge").description,
        parser=parse_multiple_choice,
        source_name="ARC-Challenge",
        license_name="CC BY-SA 4.0",
    ),
    TaskSpec(
        name="openbookqa",
        source_subdir="openbookqa",
        description=get_task("openbookqa").description,
        parser=parse_multiple_choice,
        source_name="OpenBookQA",
        license_name="unclear (research use; see below)",
    ),
    TaskSpec(
        name="boolq",
        source_subdir="boolq",
        description=get_task("boolq").description,
        parser=parse_boolq,
        source_name="BoolQ",
        license_name="CC BY-SA 3.0",
    ),
)

SPLITS: tuple[tuple[str, int], ...] = (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST))


@dataclass
class TaskResult:
    spec: TaskSpec
    source_sizes: dict[str, int]
    skipped: dict[str, Counter[str]]
    counts: dict[str, int]


def load_split(
    path: Path, parser: Parser, exclude: set[tuple[str, tuple[str, ...]]] | None = None
) -> tuple[list[Example], int, Counter[str]]:
    """Parse a source JSON array; drop unusable records, repeats and examples whose key is in ``exclude``.

    A question repeated with the same options keeps its first copy, unless the copies disagree on the
    correct answer, in which case all of them are dropped.
    Returns the usable examples in source order, the number of source records and the skip reasons.
    """
    with path.open(encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise SystemExit(f"error: {path} does not hold a JSON array")
    skipped: Counter[str] = Counter()
    parsed: list[Example] = []
    for record in records:
        try:
            if not isinstance(record, dict):
                raise SkipRecord("not a JSON object")
            parsed.append(parser(record))
        except SkipRecord as reason:
            skipped[str(reason)] += 1

    answers: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    for example in parsed:
        answers.setdefault(example.key, set()).add(example.options[example.label])

    examples: list[Example] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for example in parsed:
        if len(answers[example.key]) > 1:
            skipped["repeated question with conflicting answers"] += 1
        elif example.key in seen:
            skipped["repeated question, same options in any order"] += 1
        elif exclude is not None and example.key in exclude:
            skipped["also in source test split"] += 1
        else:
            seen.add(example.key)
            examples.append(example)
    return examples, len(records), skipped


def to_record(spec: TaskSpec, system: str, example: Example) -> dict[str, Any]:
    item = formulated(spec.name, example)
    record: dict[str, Any] = {
        "task": spec.name,
        "system": system,
        "input": item.input,
        "output": item.output,
        "options": list(item.options),
        "label": item.label,
    }
    options = record["options"]
    assert MIN_OPTIONS <= len(options) <= MAX_OPTIONS, record
    assert options[record["label"]] == record["output"], record
    return record


def build_system_prompt(spec: TaskSpec, few_shot: Sequence[Example]) -> str:
    registry = get_task(spec.name)
    return registry.system_prompt([formulated(spec.name, ex) for ex in few_shot])


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def build_task(spec: TaskSpec, source: Path, out: Path, rng: random.Random) -> TaskResult:
    """Draw few-shot/train/val from the source train split and test from the source test split."""
    task_dir = source / spec.source_subdir
    test_pool, n_test_src, test_skipped = load_split(task_dir / "test.json", spec.parser)
    test_keys = {ex.key for ex in test_pool}
    train_pool, n_train_src, train_skipped = load_split(task_dir / "train.json", spec.parser, test_keys)

    n_from_train = N_FEW_SHOT + N_TRAIN + N_VAL
    if len(train_pool) < n_from_train or len(test_pool) < N_TEST:
        raise SystemExit(
            f"error: {spec.name}: not enough usable records "
            f"(train pool {len(train_pool)} < {n_from_train} or test pool {len(test_pool)} < {N_TEST})"
        )
    drawn = rng.sample(train_pool, n_from_train)
    few_shot = drawn[:N_FEW_SHOT]
    by_split = {
        "train": drawn[N_FEW_SHOT : N_FEW_SHOT + N_TRAIN],
        "val": drawn[N_FEW_SHOT + N_TRAIN :],
        "test": rng.sample(test_pool, N_TEST),
    }
    system = build_system_prompt(spec, few_shot)
    counts = {
        split: write_jsonl(out / f"{spec.name}.{split}.jsonl", (to_record(spec, system, ex) for ex in examples))
        for split, examples in by_split.items()
    }
    return TaskResult(
        spec=spec,
        source_sizes={"train": n_train_src, "test": n_test_src},
        skipped={"train": train_skipped, "test": test_skipped},
        counts=counts,
    )


def copy_license(source: Path, out: Path) -> bool:
    license_path = source / LICENSE_SOURCE_NAME
    if not license_path.is_file():
        return False
    shutil.copyfile(license_path, out / LICENSE_OUT_NAME)
    return True


def _format_skips(skipped: Counter[str]) -> str:
    if not skipped:
        return "0"
    details = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
    return f"{sum(skipped.values())} ({details})"


def render_readme(results: Sequence[TaskResult], seed: int, license_copied: bool) -> str:
    seed_arg = "" if seed == 0 else f" --seed {seed}"
    count_rows = "\n".join(
        f"| `{r.spec.name}` | {r.spec.source_name} | {r.counts['train']} | {r.counts['val']} | "
        f"{r.counts['test']} | {r.spec.license_name} |"
        for r in results
    )
    skip_rows = "\n".join(
        f"| `{r.spec.name}` | {r.source_sizes['train']} | {_format_skips(r.skipped['train'])} | "
        f"{r.source_sizes['test']} | {_format_skips(r.skipped['test'])} |"
        for r in results
    )
    license_file_note = (
        f"The full ODC-By 1.0 text is in [`{LICENSE_OUT_NAME}`]({LICENSE_OUT_NAME})."
        if license_copied
        else "The full ODC-By 1.0 text is at https://opendatacommons.org/licenses/by/1-0/."
    )
    return f"""# Quickstart data

A small multi-task dataset for trying LoRA-Gen end to end: four tasks, each with its own system prompt
(a one-sentence task description followed by {N_FEW_SHOT} worked examples). It is a tiny, re-formatted
subset of public benchmarks and is **not** meant for reporting results.

## Files

For each task `{{task}}` there are three JSONL files:

- `{{task}}.train.jsonl` ({N_TRAIN} records) and `{{task}}.val.jsonl` ({N_VAL} records), drawn from the
  source *train* split;
- `{{task}}.test.jsonl` ({N_TEST} records), drawn from the source *test* split.

| task | source | train | val | test | license of the task's files |
|---|---|---|---|---|---|
{count_rows}

Each line is one JSON object with exactly these keys:

- `task`: the task name;
- `system`: the task's system prompt (identical for every record of a task): the task description, a blank
  line, then {N_FEW_SHOT} few-shot examples written as `{{input}} {{output}}` and separated by blank lines;
- `input`: the question as lm-evaluation-harness asks it for option scoring (cloze: no options listed):
  `Question: ...\\nAnswer:` for ARC and BoolQ (`...?`), the question stem alone for OpenBookQA;
- `output`: the text of the correct option (`yes` or `no` for BoolQ);
- `options`: the option texts, each scored as the continuation of `input` (2-5 of them; `["yes", "no"]` for BoolQ);
- `label`: the 0-based index of the correct option in `options`.

## How it was built

```
python scripts/build_quickstart_data.py --source PATH/TO/llm-adapters{seed_arg}
```

`PATH/TO/llm-adapters` is a copy of the `dataset/` folder of
[LLM-Adapters](https://github.com/AGI-Edgerunners/LLM-Adapters) (commit `816657208af4db747803f87ba40a4c71383fed7a`):
`ARC-Easy/`, `ARC-Challenge/`, `openbookqa/` and `boolq/`, each with `train.json` and `test.json`.
The script is deterministic (`random.Random({seed})`). For every task it:

1. parses the question and the `AnswerN:` options out of each instruction and collapses repeated whitespace;
2. drops records that cannot be parsed or have duplicate option texts; keeps one copy of a question repeated
   within a split with the same set of options (in any order), or none if the copies disagree on the answer;
   and drops train records whose question and options also occur in the test split;
3. samples {N_FEW_SHOT} few-shot + {N_TRAIN} train + {N_VAL} val records (all disjoint) from the train split, and
   {N_TEST} test records from the test split;
4. rewrites each record through loragen's task registry into the formulation above (`TaskSpec.formulate`).

Source records and records left out per task:

| task | source train | left out of train | source test | left out of test |
|---|---|---|---|---|
{skip_rows}

Notes on the sources: the LLM-Adapters BoolQ files hold the questions only (no passages), so the task is a
closed-book, general-knowledge one, and its "test" split is the public BoolQ dev set. The ARC and
OpenBookQA "test" splits are the public test sets.

## Licenses and attribution

Each task's files are derived only from that task's source (few-shot examples included), so each file
carries the license of its own source.

- **ARC** (`arc_easy.*`, `arc_challenge.*`): CC BY-SA 4.0
  (https://creativecommons.org/licenses/by-sa/4.0/). CC BY-SA is share-alike: **this adapted subset is
  released under CC BY-SA 4.0**. Changes: subset sampled, questions and options extracted from the
  LLM-Adapters instructions, whitespace normalised, prompts rewritten as above.
  Cite: Peter Clark, Isaac Cowhey, Oren Etzioni, Tushar Khot, Ashish Sabharwal, Carissa Schoenick and
  Oyvind Tafjord. 2018. *Think you have Solved Question Answering? Try ARC, the AI2 Reasoning Challenge.*
  arXiv:1803.05457.
- **BoolQ** (`boolq.*`): CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/). Share-alike:
  **this adapted subset is released under CC BY-SA 3.0**. Changes as for ARC (passages were already absent
  in the LLM-Adapters copy). Cite: Christopher Clark, Kenton Lee, Ming-Wei Chang, Tom Kwiatkowski,
  Michael Collins and Kristina Toutanova. 2019. *BoolQ: Exploring the Surprising Difficulty of Natural
  Yes/No Questions.* NAACL-HLT 2019.
- **OpenBookQA** (`openbookqa.*`): the license is unclear (the Hugging Face card says "unknown"; the AI2
  code repository is Apache-2.0). Included for research use only; check the terms before any other use
  or redistribution. Cite: Todor Mihaylov, Peter Clark, Tushar Khot and Ashish Sabharwal. 2018. *Can a
  Suit of Armor Conduct Electricity? A New Dataset for Open Book Question Answering.* EMNLP 2018.
- **LLM-Adapters compilation**: ODC-By 1.0 (Open Data Commons Attribution License). Credit: Zhiqiang Hu,
  Lei Wang, Yihuai Lan, Wanyu Xu, Ee-Peng Lim, Lidong Bing, Xing Xu, Soujanya Poria and Roy Ka-Wei Lee.
  2023. *LLM-Adapters: An Adapter Family for Parameter-Efficient Fine-Tuning of Large Language Models.*
  EMNLP 2023. The licenses of the underlying datasets above still apply to the contents.
  {license_file_note}

These data files are not covered by the license of the `loragen` code.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Build the quickstart dataset (arc_easy, arc_challenge, openbookqa, boolq; "
            f"{N_TRAIN} train / {N_VAL} val / {N_TEST} test records each, plus a {N_FEW_SHOT}-shot system "
            "prompt per task) from the LLM-Adapters dataset files, and write a README with license notes."
        ),
        epilog="example: python scripts/build_quickstart_data.py --source PATH/TO/llm-adapters",
    )
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        metavar="DIR",
        help="LLM-Adapters dataset directory containing ARC-Easy/, ARC-Challenge/, openbookqa/ and boolq/ "
        f"(each with train.json and test.json); its {LICENSE_SOURCE_NAME} is copied if present",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output directory; a relative path is taken from the repository root (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for all draws (default: 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source: Path = args.source.expanduser().resolve()
    out: Path = args.out if args.out.is_absolute() else REPO_ROOT / args.out
    missing = [
        f"{spec.source_subdir}/{split}.json"
        for spec in TASKS
        for split in ("train", "test")
        if not (source / spec.source_subdir / f"{split}.json").is_file()
    ]
    if missing:
        print(f"error: --source {args.source} lacks: {', '.join(missing)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    rng = random.Random(args.seed)
    results = [build_task(spec, source, out, rng) for spec in TASKS]
    license_copied = copy_license(source, out)
    (out / "README.md").write_text(render_readme(results, args.seed, license_copied), encoding="utf-8")

    for r in results:
        files = ", ".join(f"{r.spec.name}.{split}.jsonl: {n}" for split, n in r.counts.items())
        print(f"{r.spec.name:<14} {files}")
        for split in ("train", "test"):
            print(f"{'':<14} skipped in source {split}: {_format_skips(r.skipped[split])}")
    license_msg = (
        f"copied {LICENSE_SOURCE_NAME} -> {LICENSE_OUT_NAME}"
        if license_copied
        else f"no {LICENSE_SOURCE_NAME} in --source; license text not copied"
    )
    print(license_msg)
    print(f"wrote README.md and {sum(len(r.counts) for r in results)} JSONL files to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

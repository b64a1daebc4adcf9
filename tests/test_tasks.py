"""Task registry, loaders (real shared files and format fixtures), few-shot prompts, malformed rows,
``TaskDataModule``, and answer extraction for generation scoring."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest

from loragen import LoRAGenError
from loragen.data.records import Record, RecordError
from loragen.data.task_datamodule import TaskDataModule
from loragen.data.tasks import (
    PRESETS,
    HubSource,
    Item,
    Malformed,
    TaskLoader,
    TaskSpec,
    expand_tasks,
    get_task,
    known_tasks,
    register_task,
    task_from_config,
    task_records,
)
from loragen.data.tasks.base import normalize_space
from loragen.data.tasks.registry import REGISTRY
from loragen.eval.extraction import answers_match, extract_answer, match_option

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared" / "data"  # CI puts a copy of shared/ beside the repository
QUICKSTART = ROOT / "loragen" / "data" / "quickstart"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark data not found at {SHARED}")

PAPER_TASKS = [
    "alpaca",
    "arc_challenge",
    "arc_easy",
    "boolq",
    "gpt4tools",
    "gsm8k",
    "hellaswag",
    "openbookqa",
    "piqa",
    "siqa",
    "winogrande",
]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught]


# the cloze formulation of option scoring, as lm-evaluation-harness asks each task (start, end of the input)
CLOZE = {
    "arc_challenge": ("Question: ", "\nAnswer:"),
    "arc_easy": ("Question: ", "\nAnswer:"),
    "piqa": ("Question: ", "\nAnswer:"),
    "siqa": ("Q: ", "\nA:"),
    "openbookqa": ("", ""),
    "hellaswag": ("", ""),
    "winogrande": ("", ""),
    "quiz": ("Question: ", "\nAnswer:"),
}


def check_choice_records(records: list[Record], prefix: str) -> None:
    for r in records:
        assert r.options is not None and 0 <= r.label < len(r.options)
        assert r.output == r.options[r.label]
        assert r.meta["answer"] == f"{prefix}{r.label + 1}"
        start, end = CLOZE[r.task]
        assert r.input.startswith(start) and r.input.endswith(end) and "Choices:" not in r.input
        assert "\nAnswer:" not in r.input or end == "\nAnswer:"
        if r.task == "winogrande":  # partial scoring: one context per option, the rest of the sentence scored
            blank = r.input.index("_")
            assert len(r.contexts) == len(r.options) and set(r.options) == {r.input[blank + 1 :].strip()}
            assert all(c.startswith(r.input[:blank]) and len(c) > blank for c in r.contexts)
        else:
            assert r.contexts is None


@pytest.fixture(scope="module")
def shared():
    if not SHARED.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED}")
    return TaskLoader(SHARED, shots=3, seed=0)


# ----------------------------------------------------------------------------- registry


def test_registry_has_every_paper_task_with_sources_and_license():
    assert set(PAPER_TASKS) <= set(known_tasks())
    assert PRESETS["seen"] == ("arc_challenge", "arc_easy", "openbookqa", "boolq", "siqa")
    assert PRESETS["unseen"] == ("hellaswag", "winogrande", "piqa")
    for name in PAPER_TASKS:
        spec = get_task(name)
        assert spec.files and spec.license, name
        assert all(not Path(p).is_absolute() for p in spec.files.values())
        if name != "gpt4tools":  # GPT4Tools is distributed on Google Drive / OneDrive only
            assert spec.hub is not None and spec.hub.path and spec.hub.splits
        assert spec.describe().startswith(name)
    assert "NON-COMMERCIAL" in get_task("alpaca").license
    assert get_task("hellaswag").shot_splits == ("train", "val")  # said in the spec: val when no train file


def test_unknown_task_lists_the_known_tasks():
    with pytest.raises(LoRAGenError) as err:
        get_task("hellaswagg")
    for name in PAPER_TASKS:
        assert name in str(err.value)
    assert "seen" in str(err.value) and "extra_tasks" in str(err.value)


def test_expand_tasks_presets_and_splits():
    assert expand_tasks(["unseen", "arc_easy:train", "piqa"], "test") == [
        ("hellaswag", "test"),
        ("winogrande", "test"),
        ("piqa", "test"),
        ("arc_easy", "train"),
    ]
    assert expand_tasks("seen", "val")[0] == ("arc_challenge", "val")
    assert expand_tasks(None, "test") == []


# ----------------------------------------------------------------------------- real shared files


@needs_shared
@pytest.mark.parametrize(
    "task, split, rows, skipped, prefix",
    [
        ("arc_challenge", "train", 1119, 0, "answer"),
        ("arc_challenge", "test", 1172, 0, "answer"),
        ("arc_easy", "train", 2251, 0, "answer"),
        ("arc_easy", "test", 2376, 0, "answer"),
        ("openbookqa", "train", 4957, 0, "answer"),
        ("openbookqa", "test", 500, 0, "answer"),
        ("siqa", "train", 33410, 6, "answer"),
        ("siqa", "val", 1954, 1, "answer"),
        ("siqa", "test", 1954, 1, "answer"),
        ("piqa", "train", 16113, 1, "solution"),
        ("winogrande", "train", 160, 0, "option"),
    ],
)
def test_multiple_choice_loaders_on_the_shared_files(shared, task, split, rows, skipped, prefix):
    records, messages = quiet(shared.records, task, split)
    shots = 3 if split == get_task(task).shot_splits[0] else 0  # few-shot items leave their own split
    assert len(records) == rows - skipped - shots
    assert len(messages) == (1 if skipped else 0)
    if skipped:  # reported by file and line, with the count
        assert f"skipped {skipped} malformed record(s) of {rows}" in messages[0]
        assert str(SHARED) in messages[0] and ".json" in messages[0]
    check_choice_records(records, prefix)
    assert {r.task for r in records} == {task} and all(r.meta["split"] == split for r in records)
    assert len({r.system for r in records}) == 1 and records[0].system.startswith(get_task(task).description)
    assert records[0].meta["source"].startswith(str(SHARED))


@needs_shared
def test_boolq_gsm8k_and_alpaca_on_the_shared_files(shared):
    boolq = shared.records("boolq", "test")
    assert len(boolq) == 3270
    assert all(r.options == ("no", "yes") and r.meta["answer"] in ("true", "false") for r in boolq)
    assert all(r.output == ("yes" if r.meta["answer"] == "true" else "no") for r in boolq)
    assert all(r.input.startswith("Question: ") and r.input.endswith("?\nAnswer:") for r in boolq)
    gsm = shared.records("gsm8k", "test")
    assert len(gsm) == 1319 and all(r.options is None for r in gsm)
    assert gsm[0].meta["answer"] == "18" and gsm[0].output.endswith("The answer is 18.") and "<<" not in gsm[0].output
    assert len(shared.records("gsm8k", "train")) == 7473 - 3
    # the LLM-Adapters copy of the test split (another order) reads the same: same questions, same answers
    adapters = TaskLoader(SHARED, files={"gsm8k": {"test": "llm-adapters/gsm8k/test.json"}}).records("gsm8k", "test")
    assert {r.input: r.meta["answer"] for r in adapters} == {r.input: r.meta["answer"] for r in gsm}
    alpaca = shared.records("alpaca", "train")
    assert len(alpaca) == 1000 and all(r.options is None and r.system and r.output for r in alpaca)
    raw = json.loads((SHARED / "alpaca" / "alpaca_data_1k.json").read_text())
    assert [r.system for r in alpaca] == [" ".join(x["instruction"].split()) for x in raw]
    empty = [r for r, x in zip(alpaca, raw) if not x["input"].strip()]
    assert empty and all(r.input == "Response:" for r in empty)  # the minimal user turn


@needs_shared
def test_raw_and_llm_adapters_forms_give_the_same_records(shared):
    """SIQA dev in its official form (jsonl + labels 1/2/3) equals the LLM-Adapters test.json, up to the
    whitespace LLM-Adapters collapsed (the raw text is kept as written: the harness reads it so)."""
    raw, _ = quiet(shared.records, "siqa", "val")
    adapters, _ = quiet(shared.records, "siqa", "test")

    def plain(records):
        return [
            (normalize_space(r.input), tuple(map(normalize_space, r.options)), r.label, r.meta["answer"])
            for r in records
        ]

    assert plain(raw) == plain(adapters)
    assert sum(r.input != a.input for r, a in zip(raw, adapters, strict=True)) < len(raw) // 20


@needs_shared
def test_records_match_the_shipped_quickstart_format(shared):
    """Same input text, options, label and output as the quickstart data: results are comparable."""
    for task in ("arc_challenge", "arc_easy", "openbookqa", "boolq"):
        mine = {r.input: r for r in shared.records(task, "test")}
        shipped = [json.loads(line) for line in (QUICKSTART / f"{task}.test.jsonl").read_text().splitlines()]
        for item in shipped:
            record = mine[item["input"]]
            assert (list(record.options), record.label, record.output) == (
                item["options"],
                item["label"],
                item["output"],
            )
        assert shipped[0]["system"].split("\n\n")[0] == get_task(task).description


@needs_shared
def test_winogrande_labels_file_agrees_with_the_answers():
    loader = TaskLoader(SHARED, files={"winogrande": {"train": "winogrande/train_s.jsonl"}}, shots=0)
    records, messages = quiet(loader.records, "winogrande", "train")
    assert len(records) == 640 and not messages
    assert all(r.meta["id"] for r in records)


@needs_shared
def test_few_shot_examples_come_from_train_and_never_from_the_evaluated_split(shared):
    for task in PRESETS["seen"]:
        shots = shared.shot_items(task)
        assert len(shots) == 3
        train_inputs = {item.input for _, item in shared.items(task, "train")}
        test, _ = quiet(shared.records, task, "test")
        assert all(s.input in train_inputs for s in shots)
        assert not {s.input for s in shots} & {r.input for r in test}
        assert all(f"{s.input} {s.output}" in test[0].system for s in shots)
        # (SIQA repeats a few questions with other options: an item is a shot only with the same options)
        train = quiet(shared.records, task, "train")[0]
        assert not {(s.input, s.options) for s in shots} & {(r.input, r.options) for r in train}


@needs_shared
def test_few_shot_draw_is_deterministic_in_the_seed():
    a, b, c = (TaskLoader(SHARED, seed=s) for s in (0, 0, 1))
    assert a.system_prompt("arc_easy") == b.system_prompt("arc_easy")
    assert a.system_prompt("arc_easy") != c.system_prompt("arc_easy")
    assert TaskLoader(SHARED, shots=0).system_prompt("arc_easy") == get_task("arc_easy").description
    assert a.system_prompt("arc_easy").count("\nAnswer: ") == 3


# ----------------------------------------------------------------------------- published-format fixtures


def test_hellaswag_published_format_fixture():
    loader = TaskLoader(FIXTURES, shots=2, seed=0)
    records = loader.records("hellaswag", "test")  # test = the labelled validation file
    assert len(records) == 6
    check_choice_records(records, "ending")
    coffee = records[0]
    assert coffee.input.startswith("Making coffee: A man pours water into the back of a coffee machine. He")
    assert coffee.output == "puts a filter with ground coffee in the basket and presses start."
    wikihow = records[2]  # [header]/[title]/[step] markup is cleaned as evaluation harnesses do
    assert "[" not in wikihow.input and "How to brush your teeth. Wet the toothbrush." in wikihow.input
    assert wikihow.output == " Squeeze a pea-sized amount of toothpaste onto the bristles."  # the harness's text
    assert loader.shot_split("hellaswag") == "train"
    assert task_records("hellaswag", "test", FIXTURES, shots=2) == records
    # the published test split has no labels: every row is reported, none is usable
    with pytest.raises(LoRAGenError, match="no usable records"):
        quiet(
            TaskLoader(FIXTURES, files={"hellaswag": {"test": "hellaswag/hellaswag_test.jsonl"}}).records,
            "hellaswag",
            "test",
        )


def test_hellaswag_without_train_draws_shots_from_val_and_drops_them_from_evaluation(tmp_path):
    (tmp_path / "hellaswag").mkdir()
    shutil.copy(FIXTURES / "hellaswag" / "hellaswag_val.jsonl", tmp_path / "hellaswag")
    loader = TaskLoader(tmp_path, shots=2, seed=0)
    assert loader.shot_split("hellaswag") == "val"
    records, messages = quiet(loader.records, "hellaswag", "test")
    shots = {s.input for s in loader.shot_items("hellaswag")}
    assert len(shots) == 2 and len(records) == 4 and not shots & {r.input for r in records}
    assert any("left out 2 item(s)" in m for m in messages)
    with pytest.raises(LoRAGenError, match="shots: 0"):  # no split at all to draw from: say so
        TaskLoader(tmp_path, files={"hellaswag": {"val": "missing.jsonl"}}).shot_split("hellaswag")


def test_piqa_and_winogrande_official_files_with_label_files():
    loader = TaskLoader(FIXTURES, files={"piqa": {"train": "piqa/train.jsonl"}}, shots=1)
    piqa = loader.records("piqa", "test")  # valid.jsonl + valid-labels.lst (0/1)
    assert [r.label for r in piqa] == [0, 0, 0] and piqa[0].meta["answer"] == "solution1"
    check_choice_records(piqa, "solution")
    train = TaskLoader(FIXTURES, files={"piqa": {"train": "piqa/train.jsonl"}}, shots=0).records("piqa", "train")
    assert [r.label for r in train] == [0, 1, 0, 0]
    wino = TaskLoader(FIXTURES, shots=1).records("winogrande", "test")  # dev.jsonl without answers + labels 1/2
    assert [r.meta["answer"] for r in wino] == ["option1", "option2", "option2"]
    assert wino[0].input == "The trophy did not fit into the suitcase because the _ was too large."
    assert wino[0].contexts == (
        "The trophy did not fit into the suitcase because the trophy",
        "The trophy did not fit into the suitcase because the suitcase",
    )
    assert wino[0].options == ("was too large.", "was too large.") and wino[0].train_context == wino[0].contexts[0]
    listed = TaskLoader(FIXTURES, shots=1, formulation="choices").records("winogrande", "test")
    assert listed[0].input == (
        "Question: The trophy did not fit into the suitcase because the _ was too large.\n"
        "Choices:\n- trophy\n- suitcase\nAnswer:"
    )
    assert listed[0].contexts is None and [r.output for r in listed] == ["trophy", "suitcase", "Ann"]


@needs_shared
def test_generation_scoring_lists_the_choices_in_items_and_few_shot_examples():
    cloze, listed = TaskLoader(SHARED, seed=0), TaskLoader(SHARED, seed=0, formulation="choices")
    for task in ("arc_easy", "siqa", "boolq"):
        a, b = cloze.records(task, "test")[0], listed.records(task, "test")[0]
        assert a.meta["answer"] == b.meta["answer"]
        # BoolQ's cloze options are (no, yes), its listed ones (true, false)
        assert a.label == (1 - b.label if task == "boolq" else b.label)
        if task != "boolq":
            assert "\nChoices:\n- " in b.input and "Choices:" in b.system and "Choices:" not in a.system
            assert a.options == b.options
        else:
            assert (a.options, b.options) == (("no", "yes"), ("true", "false"))
            assert "Answer: true" in b.system or "Answer: false" in b.system
    with pytest.raises(LoRAGenError, match="unknown formulation"):
        TaskLoader(SHARED, formulation="mc")


def test_gpt4tools_published_format_fixture():
    loader = TaskLoader(FIXTURES)
    train, val, test = (loader.records("gpt4tools", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (4, 2, 3)
    first = test[0]
    assert first.system.startswith("GPT4Tools can handle various text and visual tasks")
    assert "> Segment the Image:" in first.system and "Let's think step by step." in first.system
    assert first.input.startswith("Previous conversation:") and "New input: Segment everything" in first.input
    assert "GPT4Tools has access" not in first.input and "think step by step" not in first.input
    assert first.output.startswith("Thought: Do I need to use a tool? Yes\nAction: Segment the Image")
    assert first.meta["needs_tool"] and first.meta["id"] == 0 and first.options is None
    assert not test[1].meta["needs_tool"]
    assert len({r.system for r in test}) == 3  # each item lists its own tools
    second_turn = train[3]  # earlier Thought / Action / Observation turns stay in the user input
    assert "Observation: image/qwertyui.png" in second_turn.input and "Action: Predict Depth" in second_turn.input
    spec = get_task("gpt4tools")
    assert spec.is_correct(first.output, first) is True
    assert spec.is_correct("Thought: Do I need to use a tool? No\nAI: done", first) is False


# ----------------------------------------------------------------------------- malformed rows


def _malformed(tmp_path, labels: str | None = None) -> Path:
    folder = tmp_path / "siqa"
    folder.mkdir()
    shutil.copy(FIXTURES / "malformed" / "siqa_train.jsonl", folder / "train.jsonl")
    shutil.copy(FIXTURES / "malformed" / "siqa_train-labels.lst", folder / "train-labels.lst")
    if labels is not None:
        (folder / "train-labels.lst").write_text(labels)
    return folder / "train.jsonl"


def test_malformed_rows_are_reported_by_file_and_line_and_skipped(tmp_path):
    path = _malformed(tmp_path)
    loader = TaskLoader(tmp_path, shots=0)
    records, messages = quiet(loader.records, "siqa", "train")
    assert [r.label for r in records] == [0, 0]  # lines 1 and 6
    (message,) = messages
    assert "skipped 4 malformed record(s) of 6" in message
    assert f"{path}:2: missing field 'answerC'" in message
    assert f"{path}:3: label '4' is outside the 3 options" in message
    assert f"{path}:4: line is not valid UTF-8" in message


def test_malformed_rows_stop_the_run_with_strict(tmp_path):
    path = _malformed(tmp_path)
    with pytest.raises(RecordError, match=f"{path}:2: missing field 'answerC'"):
        TaskLoader(tmp_path, shots=0, strict=True).records("siqa", "train")


def test_labels_file_of_another_length_is_an_error(tmp_path):
    _malformed(tmp_path, labels="1\n2\n")
    with pytest.raises(LoRAGenError, match="2 labels for 6 records"):
        TaskLoader(tmp_path, shots=0).records("siqa", "train")


def test_malformed_llm_adapters_json_records(tmp_path):
    (tmp_path / "q").mkdir()
    shutil.copy(FIXTURES / "malformed" / "arc_like.json", tmp_path / "q" / "test.json")
    loader = TaskLoader(tmp_path, files={"arc_easy": {"test": "q/test.json"}}, shots=0)
    records, (message,) = quiet(loader.records, "arc_easy", "test")
    assert len(records) == 1 and records[0].output == "whale" and records[0].meta["answer"] == "answer2"
    assert "skipped 3 malformed record(s) of 4" in message
    where = tmp_path / "q" / "test.json"
    assert f"{where}:8: answer 'answer7' is outside the 3 options" in message
    assert f"{where}:14: instruction is not in the LLM-Adapters multiple-choice format" in message
    assert f"{where}:20: record is not valid UTF-8" in message


def test_missing_files_and_splits_are_named():
    with pytest.raises(LoRAGenError, match="does not exist: data_dir should hold llm-adapters/ARC-Easy/test.json"):
        TaskLoader(FIXTURES).check("arc_easy", "test")
    with pytest.raises(LoRAGenError, match="has no local 'val' split"):
        TaskLoader(FIXTURES).check("arc_easy", "val")
    with pytest.raises(LoRAGenError, match="no data_dir and no hub source"):
        TaskLoader(None).check("gpt4tools", "test")


def test_hub_is_chosen_only_without_data_dir_and_not_loaded_by_checks(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was called"))
    loader = TaskLoader(None)
    assert loader.source("arc_easy", "val") == "hub" and loader.source("hellaswag", "test") == "hub"
    loader.check("boolq", "test")
    assert loader.shot_split("arc_easy") == "train"
    assert TaskLoader(FIXTURES).source("hellaswag", "test") == FIXTURES / "hellaswag" / "hellaswag_val.jsonl"
    assert TaskLoader(FIXTURES, files={"arc_easy": {"test": "hub"}}).source("arc_easy", "test") == "hub"


def test_hub_rows_go_through_the_hub_parser(monkeypatch):
    import datasets

    rows = [
        {
            "id": "x",
            "question": "Which gas do plants take in?",
            "answerKey": "B",
            "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]},
        }
    ] * 2
    rows = [dict(r, question=f"{r['question']} ({i})") for i, r in enumerate(rows)]
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or rows[k["split"] == "test" :])
    records = TaskLoader(None, shots=1).records("arc_easy", "test")
    assert sorted(k["split"] for _, k in calls) == ["test", "train"]  # the shots come from train
    assert all(a == ("allenai/ai2_arc", "ARC-Easy") for a, _ in calls)
    assert len(records) == 1 and records[0].output == "carbon dioxide" and records[0].meta["answer"] == "answer2"


# ----------------------------------------------------------------------------- user tasks


class UpperQuiz(TaskSpec):
    """A user task in Python: answers are the option letters' texts upper-cased."""

    def parse_row(self, row, label):
        if "q" not in row:
            raise Malformed("missing field 'q'")
        letter = "ABC".index(row["gold"])
        return Item(f"Q: {row['q']}\nA:", row["choices"][letter].upper(), answer=row["gold"])


def test_user_tasks_from_config_declarative_class_path_and_variant():
    quiz = {
        "name": "quiz",
        "format": "choice",
        "description": "Answer the quiz question.",
        "files": {"train": "user/quiz.jsonl", "test": "user/quiz.jsonl"},
        "question_field": "q",
        "options_field": "choices",
        "label_field": "gold",
        "label_base": 0,
    }
    dm = TaskDataModule(
        train_tasks=["quiz"],
        test_tasks=["quiz", "upper"],
        data_dir=str(FIXTURES),
        shots=1,
        extra_tasks=[
            quiz,
            {
                "class_path": "tests.test_tasks.UpperQuiz",
                "init_args": {
                    "name": "upper",
                    "description": "Shout the answer.",
                    "files": {"train": "user/quiz.jsonl", "test": "user/quiz.jsonl"},
                },
            },
        ],
    )
    test, messages = quiet(dm.load, "test")
    assert any("task quiz (test): left out 1 item(s) that equal one of its few-shot examples" in m for m in messages)
    quiz_records = [r for r in test if r.task == "quiz"]
    assert len(quiz_records) == 4  # 5 minus the few-shot example (train = test file here)
    check_choice_records(quiz_records, "answer")
    assert quiz_records[0].system.startswith("Answer the quiz question.\n\nQuestion: ")
    upper = [r for r in test if r.task == "upper"]
    assert upper and all(r.output.isupper() and r.input.startswith("Q: ") for r in upper)
    variant = task_from_config({"name": "arc_easy_local", "like": "arc_easy", "files": {"test": "elsewhere.json"}})
    assert variant.files == {"train": "llm-adapters/ARC-Easy/train.json", "test": "elsewhere.json"}
    assert variant.description == get_task("arc_easy").description and type(variant) is type(get_task("arc_easy"))
    with pytest.raises(LoRAGenError, match="'format' must be one of"):
        task_from_config({"name": "x", "format": "csv"})
    with pytest.raises(LoRAGenError, match="cannot import"):
        task_from_config({"class_path": "nowhere.Task"})


def test_register_task_in_python():
    spec = dataclasses.replace(get_task("boolq"), name="boolq_copy", hub=HubSource("google/boolq", None, {}))
    try:
        register_task(spec)
        assert get_task("boolq_copy") is spec and "boolq_copy" in known_tasks()
        with pytest.raises(LoRAGenError, match="already registered"):
            register_task(dataclasses.replace(spec))
        with pytest.raises(LoRAGenError, match="invalid task name"):
            register_task(dataclasses.replace(spec, name="seen"))
    finally:
        REGISTRY.pop("boolq_copy", None)


# ----------------------------------------------------------------------------- TaskDataModule


def test_check_config_fails_before_anything_is_loaded(monkeypatch):
    import loragen.backbones as backbones

    monkeypatch.setattr(backbones, "load_tokenizer", lambda *a, **k: pytest.fail("a tokenizer was loaded"))
    with pytest.raises(
        LoRAGenError, match=r"unknown task 'arc_eazy' \(did you mean arc_easy.*known tasks are ag_news, alpaca"
    ):
        TaskDataModule.check_config(train_tasks=["arc_eazy"], data_dir=str(FIXTURES))
    with pytest.raises(LoRAGenError, match="ARC-Easy/test.json for task 'arc_easy' \\(test\\) does not exist"):
        TaskDataModule.check_config(test_tasks=["arc_easy"], data_dir=str(FIXTURES))
    with pytest.raises(LoRAGenError, match="task 'piqa': no split to draw 3 few-shot examples from"):
        TaskDataModule.check_config(test_tasks=["unseen"], data_dir=str(FIXTURES))  # no piqa train file here
    with pytest.raises(LoRAGenError, match="no tasks given"):
        TaskDataModule.check_config(data_dir=str(FIXTURES))
    with pytest.raises(LoRAGenError, match="shots must be >= 0"):
        TaskDataModule.check_config(test_tasks=["hellaswag"], data_dir=str(FIXTURES), shots=-1)
    TaskDataModule.check_config(
        test_tasks=["unseen", "gpt4tools"],
        train_tasks=["gpt4tools"],
        data_dir=str(FIXTURES),
        files={"piqa": {"train": "piqa/train.jsonl"}},
    )


def test_unknown_task_through_the_cli_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    import loragen.backbones as backbones
    from loragen.cli import run

    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exc:
        run(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "commonsense" / "seen.yaml"),
                "--data.init_args.data_dir",
                str(FIXTURES),
                "--data.init_args.train_tasks",
                "[piqa, nope]",
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.logger",
                "false",
            ]
        )
    assert exc.value.code != 0
    assert "unknown task 'nope': known tasks are" in capsys.readouterr().err


def test_task_datamodule_batches_with_tiny_tokenizers(tiny):
    args = dict(
        train_tasks=["unseen", "gpt4tools"],
        val_tasks=["hellaswag:val"],
        test_tasks=["unseen"],
        data_dir=str(FIXTURES),
        files={"piqa": {"train": "piqa/train.jsonl"}},
        shots=2,
        cloud="tiny:qwen2",
        edge="tiny:llama",
        batch_size=4,
        eval_batch_size=4,
        max_system_tokens=2048,
        max_input_tokens=1024,
        max_output_tokens=128,
        limit_per_task=2,
        train_limit_per_task=2,
    )
    dm = TaskDataModule(**args)
    assert dm.stage_tasks["test"] == [("hellaswag", "test"), ("winogrande", "test"), ("piqa", "test")]
    assert dm.hparams.data_dir == str(FIXTURES) and dm.hparams.shots == 2
    assert dm.has_stage("train") and dm.has_stage("val") and not dm.has_stage("predict")
    train = dm.load("train")
    assert {r.task for r in train} == {"hellaswag", "winogrande", "piqa", "gpt4tools"}
    assert all(sum(r.task == t for r in train) == 2 for t in ("hellaswag", "winogrande", "piqa", "gpt4tools"))
    assert [r.input for r in TaskDataModule(**dm.hparams).load("train")] == [r.input for r in train]  # deterministic
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["system_ids"].shape[0] == 4
    dm.setup("test")
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["task"] == ["hellaswag", "hellaswag", "piqa", "piqa"]  # grouped by task, 2 per task
    requests = test_batch["requests"]
    assert all(len(r) == 4 for r in requests[:2]) and all(len(r) == 2 for r in requests[2:])
    assert all(len({tuple(c) for c, _ in r}) == 1 for r in requests)  # one context, a continuation per option
    assert test_batch["option_chars"][0] == [len(o) for o in test_batch["records"][0].options]
    assert dm.tasks == ["hellaswag", "piqa", "winogrande"]
    assert dm.system_prompt("piqa").startswith(get_task("piqa").description)


# ----------------------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    "kind, text, kwargs, expected",
    [
        ("choice_label", "the correct answer is answer3", {}, "answer3"),
        ("choice_label", "Answer3. Because answer1 is wrong", {}, "answer3"),
        ("choice_label", "the correct answer is solution2", {"prefix": "solution"}, "solution2"),
        ("choice_label", "I think ending4", {"num_options": 4}, "ending4"),
        ("choice_label", "the correct answer is answer5", {"num_options": 4}, None),
        ("choice_label", "the correct answer is the second one", {}, None),
        ("choice_label", "option 2", {"prefix": "answer"}, None),
        ("boolean", "the correct answer is false", {}, "false"),
        ("boolean", "Yes, it is.", {}, "true"),
        ("boolean", "It depends on the season.", {}, None),
        ("number", "She makes 9 * 2 = $18 every day.\n#### 18", {}, "18"),
        ("number", "So the total is 1,234.0 dollars. The answer is 1,234.", {}, "1234"),
        ("number", "He needs 24 * 24 = 576 tiles.", {}, "576"),
        ("number", "The answer is -3.5.", {}, "-3.5"),
        ("number", "I do not know.", {}, None),
        ("number", "", {}, None),
        ("option_text", "Mutualism.", {"options": ["parasitism", "commensalism", "mutualism"]}, "mutualism"),
        (
            "option_text",
            "commensalism, because both benefit",
            {"options": ["parasitism", "commensalism", "mutualism"]},
            "commensalism",
        ),
        ("option_text", "a black cat", {"options": ["cat", "black cat", "dog"]}, "black cat"),
        ("option_text", "either cat or dog", {"options": ["cat", "dog"]}, None),
        ("option_text", "no idea", {"options": ["cat", "dog"]}, None),
    ],
)
def test_extract_answer(kind, text, kwargs, expected):
    assert extract_answer(kind, text, **kwargs) == expected


def test_extraction_edge_cases_and_generation_scoring():
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract_answer("letters", "A")
    assert match_option("The answer is: Paris", ["Paris", "Rome"]) == "Paris"
    assert answers_match("number", "576", "576.0") and not answers_match("number", None, "1")
    record = Record(
        "s", "Question: q\nChoices:\n- a\n- b\nAnswer:", "b", "arc_easy", ("a", "b"), 1, {"answer": "answer2"}
    )
    spec = get_task("arc_easy")
    assert spec.is_correct("the correct answer is answer2", record) is True
    assert spec.is_correct("the correct answer is answer1", record) is False
    assert spec.is_correct("no idea", record) is None  # unparseable: the caller counts it
    gsm = Record("s", "Question: q\nAnswer:", "... The answer is 72.", "gsm8k", None, None, {"answer": "72"})
    assert get_task("gsm8k").is_correct("48 + 24 = 72. The answer is 72.", gsm) is True
    assert (
        get_task("boolq").is_correct(
            "True.", Record("s", "i", "true", "boolq", ("true", "false"), 0, {"answer": "true"})
        )
        is True
    )

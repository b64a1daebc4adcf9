"""The many-task suite: every shared dataset as a task, families whose answer depends on the instruction,
paraphrased descriptions as data with a held-out one, presets, the unseen guard and leak check, the
training mixture, carved dev splits, the readers of the non-JSON formats, and ``loragen tasks``."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from loragen import LoRAGenError
from loragen.data.datamodule import EpochShuffleSampler
from loragen.data.jsonrows import Malformed
from loragen.data.mixing import mix, mixture_sizes, take
from loragen.data.task_datamodule import TaskDataModule, check_unseen
from loragen.data.tasks import PRESETS, REGISTRY, TaskLoader, expand_tasks, get_task
from loragen.data.tasks.suite import DEV_UNSEEN_DATASETS, NEVER_TRAIN
from loragen.data.tasks.tabular import read_aligned, read_table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark data not found at {SHARED}")

NEW_DATASETS = (
    "commonsenseqa",
    "dream",
    "cosmosqa",
    "mc_taco",
    "rte",
    "cb",
    "esnli",
    "qnli",
    "mrpc",
    "stsb",
    "wic",
    "sst2",
    "trec",
    "ag_news",
    "math",
)
# (task, split) -> usable items: SOURCES.md's counts, less CommonsenseQA's 42 + 6 items whose correct option's text
# is also another option (loragen skips them: option scoring cannot tell the two apart)
COUNTS = {
    ("commonsenseqa", "train"): 9741 - 42,
    ("commonsenseqa", "val"): 1221 - 6,
    ("dream", "train"): 6116,
    ("dream", "val"): 2040,
    ("cosmosqa", "train"): 2485,
    ("cosmosqa", "test"): 500,
    ("mc_taco", "train"): 3783,
    ("mc_taco", "test"): 9442,
    ("rte", "train"): 2490,
    ("rte", "val"): 277,
    ("cb", "train"): 250,
    ("cb", "val"): 56,
    ("esnli", "train"): 9342,
    ("esnli", "val"): 500,
    ("qnli", "train"): 4963,
    ("qnli", "val"): 500,
    ("mrpc", "train"): 3668,
    ("mrpc", "val"): 408,
    ("stsb", "train"): 5749,
    ("stsb", "val"): 1500,
    ("wic", "train"): 5428,
    ("wic", "val"): 638,
    ("sst2", "train"): 6920,
    ("sst2", "val"): 872,
    ("trec", "train"): 5452,
    ("trec", "test"): 500,
    ("ag_news", "train"): 7100,
    ("ag_news", "test"): 500,
}
SUITE_CONFIG = {
    "train_tasks": ["suite"],
    "test_tasks": ["dev_unseen"],
    "holdout": 100,
    "files": {"winogrande": {"train": "winogrande/train_s.jsonl"}},
    "unseen": list(NEVER_TRAIN + DEV_UNSEEN_DATASETS),
}


@pytest.fixture(scope="module")
def loader():
    if not SHARED.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield TaskLoader(SHARED, shots=3, seed=0, holdout=100, files=SUITE_CONFIG["files"], train_descriptions=None)


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_every_shared_dataset_is_a_task_with_its_licence():
    for name in NEW_DATASETS:
        spec = get_task(name)
        assert spec.family == "native" and spec.dataset == name and spec.files.get("train")
        assert spec.license and (spec.hub is not None or name == "math")  # math_data has no hub copy
    non_commercial = {s.dataset for s in REGISTRY.values() if s.non_commercial}
    assert non_commercial == {"dream", "wic", "ag_news", "alpaca"}
    suite = {t for t, _ in expand_tasks(["suite"], "train")}
    no_nc = {t for t, _ in expand_tasks(["suite_no_nc"], "train")}
    assert no_nc < suite and {REGISTRY[t].dataset for t in suite - no_nc} == non_commercial
    assert len(suite) >= 50 and len({REGISTRY[t].dataset for t in suite}) == 19
    assert len({REGISTRY[t].family for t in suite}) == 7  # native + six families


@needs_shared
@pytest.mark.parametrize(("task", "split"), list(COUNTS))
def test_dataset_items_per_split_as_published(loader, task, split):
    plain = TaskLoader(SHARED, shots=0)  # no holdout: the splits as published (carves: 500 of the one file)
    assert len(quietly(plain.parsed, task, split)) == COUNTS[(task, split)]


@needs_shared
def test_families_ask_the_same_items_for_different_answers(loader):
    """On the same item two families' correct outputs differ; where the input is the same too, only the
    instruction can tell the edge which answer is wanted."""
    pairs = [
        ("rte", "rte.swapped"),
        ("rte.renamed", "rte.swapped"),
        ("boolq", "boolq.swapped"),
        ("arc_easy", "arc_easy.incorrect"),
        ("arc_easy", "arc_easy.letter"),
        ("siqa", "siqa.incorrect"),
        ("sst2.renamed", "sst2.swapped"),
        ("gsm8k", "gsm8k.number"),
        ("trec", "trec.swapped"),
        ("stsb", "stsb.swapped"),
    ]
    for a, b in pairs:
        split = "test" if "test" in REGISTRY[a].splits else "train"
        ra = {r.meta["item_sha"]: r for r in quietly(loader.records, a, split)}
        rb = {r.meta["item_sha"]: r for r in quietly(loader.records, b, split)}
        common = sorted(set(ra) & set(rb))
        assert len(common) > 100, (a, b)
        differ = sum(ra[k].output != rb[k].output for k in common)
        minimum = 0.7 if b == "stsb.swapped" else 1.0  # a reversed 0-5 scale keeps nothing but has no middle
        assert differ >= minimum * len(common), (a, b, differ, len(common))
        if (a, b) in [
            ("rte.renamed", "rte.swapped"),
            ("arc_easy", "arc_easy.incorrect"),
            ("boolq", "boolq.swapped"),
            ("gsm8k", "gsm8k.number"),
        ]:  # same input, different answer: the instruction decides
            assert all(ra[k].input == rb[k].input for k in common), (a, b)


@needs_shared
def test_each_family_grades_its_own_answer(loader):
    for task in [
        "arc_easy.incorrect",
        "arc_easy.letter",
        "arc_easy.judge",
        "rte.renamed",
        "rte.swapped",
        "boolq.renamed",
        "commonsenseqa.letter",
        "gsm8k.number",
        "math.number",
    ]:
        spec = get_task(task)
        split = "test" if "test" in spec.splits else "train"
        for record in quietly(loader.records, task, split)[:20]:
            assert spec.is_correct(record.output, record) is True, task
            if record.options:
                wrong = (
                    record.options[1 - record.label]
                    if len(record.options) == 2
                    else record.options[(record.label + 1) % len(record.options)]
                )
                assert spec.is_correct(wrong, record) is False, task
                assert record.output == record.options[record.label]
            else:
                assert spec.is_correct(str(int(record.output) + 1), record) is False


@needs_shared
def test_renamed_and_swapped_answers_are_the_ones_the_description_states(loader):
    for task in ["rte.renamed", "rte.swapped", "sst2.swapped", "mrpc.renamed", "trec.renamed", "boolq.swapped"]:
        spec = get_task(task)
        records = quietly(loader.records, task, "train")
        native = {r.meta["item_sha"]: r for r in quietly(loader.records, spec.dataset, "train")}
        meaning: dict[str, str] = {}
        for r in records:  # every native class maps to one answer, stated in the description
            gold = native[r.meta["item_sha"]].output if r.meta["item_sha"] in native else None
            if gold is not None:
                assert meaning.setdefault(gold, r.output) == r.output, task
        assert len(set(meaning.values())) == len(meaning) >= 2
        for answer in meaning.values():
            assert f"'{answer}' if" in spec.description and all(f"'{answer}' if" in d for d in spec.paraphrases)


def test_descriptions_are_data_with_a_held_out_paraphrase():
    suite = [t for t, _ in expand_tasks(["suite", "dev_unseen"], "train")]
    for task in suite:
        spec = get_task(task)
        if spec.dataset == "alpaca":  # per-item instructions are its descriptions
            continue
        pool = {spec.description, *spec.paraphrases}
        assert len(pool - {spec.heldout_description}) >= 8, task
        assert spec.heldout_description and spec.heldout_description not in pool, task
        first = spec.heldout_description.split(". ")[0]  # the held-out intro is worded apart from the training ones
        if spec.dataset not in ("winogrande",):
            assert not any(d.startswith(first) for d in pool), task
    # the grammar is a data file in the package, not code
    assert (ROOT / "loragen" / "data" / "tasks" / "descriptions.yaml").is_file()
    assert len(get_task("arc_easy").paraphrases) >= 200  # the Text-to-LoRA paraphrases (all but the last)


@needs_shared
def test_training_draws_descriptions_and_evaluation_reads_the_canonical_or_held_out_one(loader):
    spec = get_task("rte.swapped")
    train = quietly(loader.records, "rte.swapped", "train", vary_shots=True)  # training records
    used = Counter(r.system.split("\n\n")[0] for r in train)
    assert len(used) == len({spec.description, *spec.paraphrases}) and spec.heldout_description not in used
    assert {r.system for r in quietly(loader.records, "rte.swapped", "val")} == {loader.system_prompt("rte.swapped")}
    held = TaskLoader(SHARED, shots=3, seed=0, eval_description="heldout")
    assert {r.system.split("\n\n")[0] for r in quietly(held.records, "rte.swapped", "val")} == {
        spec.heldout_description
    }
    one = TaskLoader(SHARED, shots=3, seed=0)  # the default: one description, as before the suite
    assert {r.system.split("\n\n")[0] for r in quietly(one.records, "rte", "train", vary_shots=True)} == {
        get_task("rte").description
    }


@pytest.mark.heavy
@needs_shared
def test_no_dev_unseen_item_enters_any_training_set(loader):
    """Content hashes of every training record of the suite, and of every few-shot example in its system
    prompts, against every dev-unseen item (PIQA / WinoGrande carved from train, the held-out datasets)."""
    trained: set[str] = set()
    for task, split in expand_tasks(["suite"], "train"):
        assert REGISTRY[task].dataset not in NEVER_TRAIN + DEV_UNSEEN_DATASETS
        trained |= {r.meta["item_sha"] for r in quietly(loader.records, task, split, vary_shots=True)}
        trained |= {s.meta["item_sha"] for s in loader.shot_items(task)}
    unseen: set[str] = set()
    for task, split in expand_tasks(["dev_unseen"], "test"):
        unseen |= {r.meta["item_sha"] for r in quietly(loader.records, task, split)}
    assert len(trained) > 50_000 and len(unseen) > 1_000
    assert not trained & unseen


def test_unseen_datasets_are_refused_as_train_tasks_in_any_family():
    unseen = list(NEVER_TRAIN + DEV_UNSEEN_DATASETS)
    check_unseen(expand_tasks(["suite"], "train"), unseen, {})
    for task in ["piqa", "piqa.letter", "mrpc.swapped", "commonsenseqa"]:
        with pytest.raises(LoRAGenError, match=f"train task '{task}' is from dataset"):
            check_unseen([(task, "train")], unseen, {})
    with pytest.raises(LoRAGenError, match="unknown dataset"):
        check_unseen([("rte", "train")], ["rtee"], {})
    with pytest.raises(LoRAGenError, match="data.unseen keeps out of training"):
        TaskDataModule.check_config(train_tasks=["seen", "piqa.judge"], unseen=["piqa"], data_dir=str(SHARED))


def test_mixture_cap_and_temperature():
    sizes = {"big": 10_000, "mid": 1_000, "small": 50}
    assert mixture_sizes(sizes, 2000, 1.0) == {"big": 2000, "mid": 1000, "small": 50}
    flat = mixture_sizes(sizes, 2000, 3.0)
    assert all(flat[t] <= 2000 for t in flat) and flat["small"] > 50 and flat["big"] < 2000
    assert flat["big"] / flat["small"] < 2000 / 50
    assert mixture_sizes(sizes, None, 1.0) == sizes
    records = {t: [f"{t}{i}" for i in range(n)] for t, n in sizes.items()}
    mixed = mix(records, 2000, 3.0, seed=0)
    assert Counter(r.rstrip("0123456789") for r in mixed) == Counter(flat)
    assert mixed == mix(records, 2000, 3.0, seed=0) and mixed != mix(records, 2000, 3.0, seed=1)
    extra = take(["a", "b", "c"], 1, "k|rest")
    assert sorted(take(["a", "b", "c"], 7, "k")) == sorted(["a", "b", "c"] * 2 + extra)
    with pytest.raises(LoRAGenError, match="mixing_temperature must be a number >= 1"):
        mixture_sizes(sizes, None, 0.5)


@needs_shared
def test_carved_dev_split_is_disjoint_from_train_and_shared_by_families(loader):
    plain = TaskLoader(SHARED, shots=0)
    for task in ["ag_news", "ag_news.swapped", "qnli", "cosmosqa.judge", "esnli.renamed", "math.number"]:
        dev = {i.meta["item_sha"] for _, i in quietly(plain.parsed, task, "val")}
        assert dev == {i.meta["item_sha"] for _, i in quietly(plain.parsed, task, "test")}
        assert not dev & {i.meta["item_sha"] for _, i in quietly(plain.parsed, task, "train")}
        native = REGISTRY[task].dataset
        assert dev == {i.meta["item_sha"] for _, i in quietly(plain.parsed, native, "val")}


def test_readers_report_bad_lines_in_place(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfa\tb\tlabel\nx\ty\t1\nonly two\tfields\n\xff\n")
    rows = read_table(tsv, delimiter="\t", quoted=False)
    assert rows[0] == (f"{tsv}:2", {"a": "x", "b": "y", "label": "1"})
    assert isinstance(rows[1][1], Malformed) and "2 fields, expected 3" in str(rows[1][1])
    assert isinstance(rows[2][1], Malformed) and rows[2][0] == f"{tsv}:4"
    (tmp_path / "one").write_text("a\nb\n")
    (tmp_path / "two").write_text("a\n")
    with pytest.raises(LoRAGenError, match="differ in length"):
        read_aligned({"x": tmp_path / "one", "y": tmp_path / "two"})


def test_length_grouped_batches_pad_less_and_keep_the_epoch():
    lengths = [(i * 37) % 200 + 1 for i in range(512)]
    plain, grouped = EpochShuffleSampler(512, seed=3), EpochShuffleSampler(512, seed=3, lengths=lengths, group=8)
    a, b = list(plain), list(grouped)
    assert sorted(a) == sorted(b) == list(range(512)) and b == list(grouped)

    def padded(order: list[int]) -> int:
        return sum(8 * max(lengths[i] for i in order[k : k + 8]) for k in range(0, len(order), 8))

    assert padded(b) < 0.75 * padded(a)


@pytest.mark.heavy
@needs_shared
def test_loragen_tasks_table_is_the_generated_docs_page(tmp_path, capsys):
    from loragen.cli import main
    from loragen.tasks_command import tasks

    out = tmp_path / "tasks.md"
    tasks(data_dir=str(SHARED), output=str(out))
    assert out.read_text().replace(str(out), "docs/tasks.md") == (ROOT / "docs" / "tasks.md").read_text(), (
        "docs/tasks.md is stale: regenerate it with `loragen tasks --data_dir DATA --output docs/tasks.md`"
    )
    import sys

    argv = sys.argv
    sys.argv = ["loragen", "tasks", "--preset", "suite", "--format", "json"]
    try:
        main()
    finally:
        sys.argv = argv
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == list(PRESETS["suite"]) and all(r["licence"] for r in rows)


def test_release_lists_the_licences_of_its_training_data():
    from loragen.release import training_data

    suite = training_data({"train_tasks": ["suite"]})
    assert {d["dataset"] for d in suite if d["non_commercial"]} == {"dream", "wic", "ag_news", "alpaca"}
    assert all(d["licence"] for d in suite)
    assert not any(d["non_commercial"] for d in training_data({"train_tasks": ["suite_no_nc"]}))
    assert [d["dataset"] for d in training_data({"train_tasks": ["seen"]})] == list(PRESETS["seen"])


def test_harness_metric_reports_each_task_by_its_own_headline():
    import numpy as np

    from loragen.eval.results import build_results

    def outcome(acc, acc_norm):
        n = len(acc)
        return {
            "uid": np.arange(n),
            "task": np.array([0] * (n // 2) + [1] * (n - n // 2)),
            "acc": np.array(acc),
            "acc_norm": np.array(acc_norm),
            "tokens": np.ones(n),
            "ms": np.full(n, np.nan),
            "unparseable": np.zeros(n),
            "label": np.zeros(n),
            "pred": np.zeros(n),
            "pred_norm": np.zeros(n),
        }

    a, b = outcome([1, 1, 0, 0], [0, 0, 1, 1]), outcome([0, 0, 0, 0], [0, 0, 0, 0])
    metrics = {"mc_taco": get_task("mc_taco").headline, "arc_easy": get_task("arc_easy").headline}
    assert metrics == {"mc_taco": "acc", "arc_easy": "acc_norm"}
    results = build_results(
        {"x": a, "y": b},
        {"x": "X", "y": "Y"},
        ["mc_taco", "arc_easy"],
        "harness",
        paired=[("x", "y")],
        task_metrics=metrics,
    )
    assert results["rows"][0]["accuracy"] == {"mc_taco": 1.0, "arc_easy": 1.0}  # acc for one, acc_norm for the other
    assert results["differences"][0]["mean"]["diff"] == 1.0 and results["task_metrics"] == metrics
    assert get_task("mrpc.swapped").headline == "acc" and get_task("arc_easy.incorrect").headline == "acc_norm"

"""What ``loragen generate`` writes evaluates in lm-evaluation-harness as is, and agrees with ``loragen test``.

A LoRA-Gen generator is trained for a few steps (``loragen fit``) on ARC-Easy with a tiny random Llama saved to a
directory ``D`` serving as cloud and edge. ``loragen test`` scores the first ARC-Easy test items with the LoRA
generated from the task's 3-shot system prompt merged into the edge (the ``loragen`` rows of ``items.jsonl``).
``loragen generate`` turns the same system prompt into a merged model ``M`` and a PEFT adapter ``P``; the harness
(``lm_eval.simple_evaluate``, its ARC-Easy formulation, on the same items) evaluates ``pretrained=M`` and
``pretrained=D,peft=P``. Every item must get the chosen option (``acc`` and ``acc_norm``) loragen chose, the
accuracies must equal ``results.json``'s, and the option log-likelihoods must be the ones ``loragen test`` computed
(recorded from its scoring call; ``items.jsonl`` keeps only the choices). The written gates must be bit-identical
to those of the DataModule's tokenized system prompt, and the LoRA must change the harness's log-likelihoods (and
some choices) against the plain ``D``, else the agreement would say nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from loragen.data.tasks import TaskLoader
from tests.conftest import SHARED, needs_shared
from tests.harness import HARNESS_NAME, SPLITS, docs_for, run_harness, write_harness_docs

TASK = "arc_easy"
ITEMS = 30
SHOTS, SEED = 3, 0  # the DataModule's few-shot system prompt (its defaults, written out)
# relative difference of option log-likelihoods: float32 sums over ~10-100 tokens; loragen reads an item's context
# once and continues its options from the cached keys/values, the harness runs each option's whole text; a LoRA
# with another scale or without some targets moves them by whole units
LL_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "cache"))  # generated gates are cached per checkpoint


def _config(tmp_path: Path, directory: Path) -> Path:
    """LoRA-Gen with ``directory`` as cloud and edge: 2 experts of rank 2, a learning rate that moves B in a step."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "loragen.models.lora_gen_module.LoRAGenModule",
            "init_args": {
                "cloud": str(directory),
                "edge": str(directory),
                "router_hidden": 16,
                "pool": {"num_experts": 2, "top_k": 2, "rank": 2},
                "optim": {"lr": 0.05, "warmup_steps": 0},
                "eval": {"reference": False, "zero_shot_reference": False, "sensitivity": False},
            },
        },
        "data": {
            "class_path": "loragen.data.task_datamodule.TaskDataModule",
            "init_args": {
                "train_tasks": [TASK],
                "test_tasks": [f"{TASK}:{SPLITS[TASK]}"],
                "data_dir": str(SHARED),
                "shots": SHOTS,
                "seed": SEED,
                "train_limit_per_task": 48,
                "batch_size": 4,
                "limit_per_task": ITEMS,
                "eval_batch_size": 16,
                "reference": False,
                "max_system_tokens": 1024,
                "max_input_tokens": 1024,
                "max_output_tokens": 256,
            },
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 6,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 6},
                }
            ],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _generate(ckpt: Path, prompt_file: Path, fmt: str, output: Path) -> dict:
    from loragen.deploy.cli import main

    main(
        [
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt_file",
            str(prompt_file),
            "--format",
            fmt,
            "--output",
            str(output),
        ],
        stdout=io.StringIO(),
    )
    return json.loads((output / "loragen_meta.json").read_text())


@pytest.mark.heavy
@needs_shared
def test_generated_merged_model_and_adapter_give_loragen_test_results_in_the_harness(
    tmp_path,
    tiny_dir,  # noqa: F811
    monkeypatch,
):
    import loragen.models.evaluation as evaluation
    from loragen.backbones import load_tokenizer
    from loragen.cli import run
    from loragen.data.task_datamodule import TaskDataModule
    from loragen.deploy.deployment import Deployment
    from loragen.deploy.gates import decode_gates

    config = _config(tmp_path, tiny_dir)
    run(["fit", "--config", str(config)])
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    scored: dict[tuple, float] = {}  # (context ids, continuation ids) -> log-likelihood, as `loragen test` scored it
    score = evaluation.score_requests

    def recording(model, requests, *args, **kwargs):
        lls = score(model, requests, *args, **kwargs)
        scored.update({(tuple(c), tuple(t)): ll for (c, t), ll in zip(requests, lls, strict=True)})
        return lls

    with monkeypatch.context() as patch:  # the only setting scored is `loragen` (no reference or sensitivity rows)
        patch.setattr(evaluation, "score_requests", recording)
        run(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    lines = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    ours = {line["source"]: line for line in lines if line["setting"] == "loragen" and line["task"] == TASK}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (row,) = [r for r in results["rows"] if r["key"] == "loragen"]

    # the system prompt the DataModule gave the cloud for the task, whole (no truncation to max_system_tokens)
    loader = TaskLoader(SHARED, shots=SHOTS, seed=SEED)
    prompt = loader.system_prompt(TASK)
    assert len(load_tokenizer(str(tiny_dir))(prompt)["input_ids"]) <= 1024
    prompt_file = tmp_path / "system_prompt.txt"
    prompt_file.write_text(prompt + "\n", encoding="utf-8")
    merged_meta = _generate(ckpt, prompt_file, "merged", tmp_path / "merged")
    peft_meta = _generate(ckpt, prompt_file, "peft", tmp_path / "adapter")
    assert merged_meta["gates"] == peft_meta["gates"]
    # the LoRA written is the one `loragen test` merged: the gates of the DataModule's tokenized system prompt
    # (a barely trained generator is nearly prompt-blind, so the chosen options alone would not show a wrong prompt)
    data = TaskDataModule(
        **yaml.safe_load(config.read_text())["data"]["init_args"], cloud=str(tiny_dir), edge=str(tiny_dir)
    )
    data.setup("test")
    assert data.system_prompt(TASK) == prompt
    (system_ids,) = {tuple(example["system_ids"]) for example in data.examples["test"]}
    ids = torch.tensor([system_ids])
    (lora,) = Deployment(ckpt, cache=False).module.model.generate(ids, torch.ones_like(ids))
    assert torch.equal(decode_gates(merged_meta["gates"]), lora.gates.float())

    sources, docs = docs_for(loader, TASK, ITEMS)
    name = HARNESS_NAME.get(TASK, TASK)
    write_harness_docs(name, docs, tmp_path / "docs")
    assert len(sources) == len(ours) == ITEMS and set(sources) == set(ours)
    harness = {
        key: run_harness(f"{args},dtype=float32", [name], tmp_path / "docs", tmp_path / f"harness-{key}")
        for key, args in (
            ("merged", f"pretrained={tmp_path / 'merged'}"),
            ("peft", f"pretrained={tiny_dir},peft={tmp_path / 'adapter'}"),
            ("plain", f"pretrained={tiny_dir}"),
        )
    }

    mine = [ours[s] for s in sources]
    examples = {example["record"].meta["source"]: example for example in data.examples["test"]}
    loragen_lls = [[scored[(tuple(c), tuple(t))] for c, t in examples[s]["requests"]] for s in sources]
    gaps = {}
    for key in ("merged", "peft"):
        rows = harness[key][name]
        assert len(rows) == ITEMS and harness[key]["_summary"][name]["n"] == ITEMS
        differ = [
            (k, a["pred"], b["pred"], b["lls"])
            for k, (a, b) in enumerate(zip(mine, rows, strict=True))
            if a["pred"] != b["pred"]
        ]
        differ_norm = [
            (k, a["pred_norm"], b["pred_norm"], b["lls"])
            for k, (a, b) in enumerate(zip(mine, rows, strict=True))
            if a["pred_norm"] != b["pred_norm"]
        ]
        assert differ == [] and differ_norm == [], (key, differ, differ_norm)
        summary = harness[key]["_summary"][name]
        assert summary["acc"] == pytest.approx(row["tasks"][TASK]["acc"], abs=1e-12), key
        assert summary["acc_norm"] == pytest.approx(row["tasks"][TASK]["acc_norm"], abs=1e-12), key
        # the same numbers, not only the same argmax: the option log-likelihoods `loragen test` computed
        gaps[key] = _max_gap(loragen_lls, [b["lls"] for b in rows], relative=True)
    assert gaps["merged"] <= LL_TOLERANCE and gaps["peft"] <= LL_TOLERANCE, gaps
    # the LoRA matters: without it the harness's log-likelihoods are others (and some chosen options too)
    plain = harness["plain"][name]
    moved = _max_gap([b["lls"] for b in harness["merged"][name]], [b["lls"] for b in plain])
    assert moved > 1e-3, moved
    changed = sum(a["pred"] != b["pred"] or a["pred_norm"] != b["pred_norm"] for a, b in zip(mine, plain, strict=True))
    assert changed > 0
    margins = [
        _margin(lls, [len(o) for o in examples[s]["record"].options])
        for lls, s in zip(loragen_lls, sources, strict=True)
    ]
    print(
        json.dumps(
            {
                "items": ITEMS,
                "acc": row["tasks"][TASK]["acc"],
                "acc_norm": row["tasks"][TASK]["acc_norm"],
                "max_ll_gap_to_loragen": gaps,
                "max_ll_moved_by_lora": moved,
                "items_whose_choice_the_lora_changed": changed,
                "smallest_top2_margin": {"acc": min(m[0] for m in margins), "acc_norm": min(m[1] for m in margins)},
            }
        )
    )


def _max_gap(a: list[list[float]], b: list[list[float]], relative: bool = False) -> float:
    """The largest difference of two tables of log-likelihoods (relative: ÷ max(1, |x|))."""
    return max(
        abs(x - y) / (max(1.0, abs(x)) if relative else 1.0)
        for u, v in zip(a, b, strict=True)
        for x, y in zip(u, v, strict=True)
    )


def _margin(lls: list[float], chars: list[int]) -> tuple[float, float]:
    """How far the chosen option is ahead of the next (summed, and per character)."""

    def ahead(values: list[float]) -> float:
        top = sorted(values, reverse=True)
        return top[0] - top[1]

    return ahead(lls), ahead([ll / n for ll, n in zip(lls, chars, strict=True)])

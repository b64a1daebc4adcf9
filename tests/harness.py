"""Run lm-evaluation-harness (``lm_eval``, written against 0.4.13) on local documents, item for item.

Infrastructure for parity tests between loragen's option scoring and the harness. The task YAMLs in
``tests/harness_tasks/`` are templates that copy the harness's own formulation of each task but read a local
JSONL file ``@DATA@/<task>.jsonl`` (see ``tests/harness_tasks/README.md``). The flow is::

    write_harness_docs("arc_easy", docs, data_dir)          # -> data_dir/arc_easy.jsonl
    res = run_harness(f"pretrained={model_dir},dtype=float32", ["arc_easy"], data_dir, work)
    res["arc_easy"][0]["pred"], res["arc_easy"][0]["lls"], res["_summary"]["arc_easy"]["acc"]

Document schema per task (the fields of the Hugging Face dataset each upstream task reads; extra fields are
ignored). ``task`` names are given without the ``loragen_parity_`` prefix:

- ``arc_easy``, ``arc_challenge``:
  ``{"question": str, "choices": {"text": [str, ...], "label": ["A", "B", ...]}, "answerKey": "B"}``;
  prompt ``"Question: {question}\\nAnswer:"``, options ``" " + choices.text[i]``,
  gold ``choices.label.index(answerKey)``.
- ``openbookqa``: ``{"question_stem": str, "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "A"}``;
  prompt ``question_stem`` as is, gold ``choices.label.index(answerKey.lstrip())``.
- ``siqa``: ``{"context": str, "question": str, "answerA": str, "answerB": str, "answerC": str, "label": "1"}``;
  ``label`` is the 1-based answer as a *string* ("1" | "2" | "3"); prompt ``"Q: {context} {question}\\nA:"``.
- ``piqa``: ``{"goal": str, "sol1": str, "sol2": str, "label": 0}`` (``label`` an int, 0 | 1);
  prompt ``"Question: {goal}\\nAnswer:"``.
- ``hellaswag``: ``{"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": [str] * 4, "label": "0"}``
  (``label`` a digit *string*, as in the HF dataset); prompt and options are ``utils.preprocess``-ed
  (``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``, ``[title]`` / bracket removal).
- ``winogrande``: ``{"sentence": str with exactly one "_", "option1": str, "option2": str, "answer": "1"}``
  (``answer`` a *string*, "1" | "2"). Partial scoring: the "choices" are the two contexts
  ``sentence[:i] + option`` and the one continuation is ``" " + sentence[i + 1:].strip()`` (i = index of "_").
- ``boolq_closed_book``: ``{"question": str, "label": 0 | 1}`` (1 = yes); prompt
  ``"Question: {question}?\\nAnswer:"`` (the harness's boolq without the passage), options ``" no"``, ``" yes"``.
- the suite's tasks, in their hub schemas with an int ``label`` (the class index, the harness's choice order):
  ``rte`` / ``cb`` ``{"premise", "hypothesis"}``; ``qnli`` ``{"question", "sentence"}``; ``mrpc``
  ``{"sentence1", "sentence2"}``; ``wic`` ``{"sentence1", "sentence2", "start1", "end1"}``; ``sst2``
  ``{"sentence"}``; ``mc_taco`` ``{"sentence", "question", "answer"}``; ``commonsense_qa`` like ARC's, with
  ``answerKey`` a letter (loragen's ``commonsenseqa.letter`` family).

Notes on lm_eval 0.4.13 (checked in its source):

- The continuation of every option is ``target_delimiter + choice`` (``" "``); the HF model encodes
  ``whole = tok(context + continuation)``, ``ctx = tok(context)`` with the tokenizer's *default* special tokens
  (``add_bos_token`` unset), and scores ``whole[len(ctx):]``; trailing spaces of a context are moved to the
  continuation first. ``acc`` is ``argmax(lls) == gold``; ``acc_norm`` is ``argmax(lls / len(choice))`` with the
  length of the choice string in characters (no delimiter). For winogrande the "choices" are the two
  *contexts*, so a (non-upstream) length normalisation would divide by the context length; upstream reports
  only ``acc`` there, so ``acc_norm`` is ``None`` but ``pred_norm`` is still computed the way the harness would.
- ``simple_evaluate`` needs ``confirm_run_unsafe_code`` only for tasks marked ``unsafe_code`` (none here).
  With ``cache_requests=False`` / ``use_cache=None`` (the defaults) it writes no request or response cache;
  the only files written are the ``datasets`` cache of the JSON builder, pointed at ``work`` through
  ``dataset_kwargs.cache_dir`` (placeholder ``@CACHE@``). Reusing ``work`` is safe: ``datasets`` fingerprints a
  data file by path and modification time, so rewritten docs are re-read.
- It adds environment info to its result (``torch.utils.collect_env``: ``pip list``, ``git describe`` in the
  current directory): ~0.4 s per call; the hub lookup of the model's sha fails fast for a local directory.
- On the tiny random llama (OMP_NUM_THREADS=1, 2 cores), one call on all 8 tasks x 5 docs takes ~5 s in a fresh process
  (imports, first model load) and ~0.7 s afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loragen.data.tasks import TaskLoader
from loragen.data.tasks.io import labels_file, read_labels, read_rows

TEMPLATES = Path(__file__).parent / "harness_tasks"
PREFIX = "loragen_parity_"
TASKS = (
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "siqa",
    "piqa",
    "hellaswag",
    "winogrande",
    "boolq_closed_book",
    "rte",
    "cb",
    "wic",
    "qnli",
    "mrpc",
    "sst2",
    "mc_taco",
    "commonsense_qa",
)
# Tasks whose doc_to_text returns the gold index and whose "choices" are contexts (one shared continuation).
MULTIPLE_INPUT = frozenset({"winogrande"})


def write_harness_docs(task: str, docs: list[dict], directory: Path) -> None:
    """Write ``docs`` (one JSON object a line, UTF-8, not ASCII-escaped) to ``directory/<task>.jsonl``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{task}.jsonl", "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")


def _yaml_quoted(path: Path) -> str:
    # the placeholders sit inside double-quoted YAML scalars
    return str(Path(path).resolve()).replace("\\", "\\\\").replace('"', '\\"')


def harness_task_dir(data_dir: Path, out: Path, cache_dir: Path | None = None) -> Path:
    """Instantiate the templates into ``out`` (for ``TaskManager(include_path=out)``) and return ``out``.

    Copies every ``*.yaml`` and ``*.py`` of ``tests/harness_tasks`` (not the README), replacing ``@DATA@`` by the
    absolute ``data_dir`` and ``@CACHE@`` by the absolute ``cache_dir`` (the ``datasets`` cache of the JSON
    builder; default ``out/_datasets_cache``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "_datasets_cache"
    for src in sorted(TEMPLATES.iterdir()):
        if src.suffix not in (".yaml", ".py") or not src.is_file():
            continue
        text = src.read_text(encoding="utf-8")
        text = text.replace("@DATA@", _yaml_quoted(data_dir)).replace("@CACHE@", _yaml_quoted(cache_dir))
        (out / src.name).write_text(text, encoding="utf-8")
    return out


@contextlib.contextmanager
def _offline_and_quiet(log_file: Path) -> Iterator[None]:
    """Force Hugging Face offline mode and send lm_eval's logging + progress bars to ``log_file``.

    The offline flags of ``datasets`` and ``huggingface_hub`` are read at import time, so besides the environment
    the module-level constants are patched too (and everything is restored afterwards).
    """
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched: list[tuple[Any, str, Any]] = []
    try:
        import datasets.config
        import huggingface_hub.constants

        for mod, name in (
            (huggingface_hub.constants, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
        ):
            if hasattr(mod, name):
                patched.append((mod, name, getattr(mod, name)))
                setattr(mod, name, True)
        logger = logging.getLogger("lm_eval")
        old_level = logger.level
        logger.setLevel(logging.WARNING)
        with open(log_file, "a", encoding="utf-8") as fh, contextlib.redirect_stderr(fh):
            # tqdm bars and Python warnings go to sys.stderr
            handler = logging.StreamHandler(fh)
            logger.addHandler(handler)
            try:
                yield
            finally:
                logger.removeHandler(handler)
                logger.setLevel(old_level)
    finally:
        for mod, name, value in reversed(patched):
            setattr(mod, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _float_resp(resp: Any) -> float:
    # a filtered loglikelihood response is (logprob, is_greedy)
    return float(resp[0] if isinstance(resp, (list, tuple)) else resp)


def _gold(task: str, sample: dict) -> int:
    if task in MULTIPLE_INPUT:
        return {"1": 0, "2": 1}[str(sample["doc"]["answer"])]
    target = sample["target"]
    choices = [cont.strip() for _, cont in sample["arguments"]]
    if isinstance(target, str) and target in choices:  # a letter target (commonsense_qa)
        return choices.index(target)
    if isinstance(target, str) and target.strip().isdigit():
        return int(target)
    if not isinstance(target, int):
        raise TypeError(f"{task}: unexpected target {target!r} in the harness sample")
    return target


def _per_doc(task: str, sample: dict, target_delimiter: str) -> dict:
    import numpy as np

    args = [tuple(a) for a in sample["arguments"]]
    lls = [_float_resp(r) for r in sample["filtered_resps"]]
    if task in MULTIPLE_INPUT:
        choices = [ctx for ctx, _ in args]
    else:
        choices = []
        for _, cont in args:
            if not cont.startswith(target_delimiter):
                raise ValueError(f"{task}: continuation {cont!r} does not start with {target_delimiter!r}")
            choices.append(cont[len(target_delimiter) :])
    lengths = np.array([float(len(c)) for c in choices])
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(np.array(lls) / lengths))
    gold = _gold(task, sample)
    acc = float(sample["acc"])
    acc_norm = float(sample["acc_norm"]) if "acc_norm" in sample else None
    # our pred / pred_norm must reproduce the harness's own per-document metrics
    if acc != float(pred == gold) or (acc_norm is not None and acc_norm != float(pred_norm == gold)):
        raise AssertionError(
            f"{task} doc {sample['doc_id']}: pred={pred} pred_norm={pred_norm} gold={gold} "
            f"disagree with the harness's acc={acc} acc_norm={acc_norm}"
        )
    return {
        "doc_id": int(sample["doc_id"]),
        "acc": acc,
        "acc_norm": acc_norm,
        "pred": pred,
        "pred_norm": pred_norm,
        "lls": lls,
        "gold": gold,
        "arguments": args,
    }


def run_harness(
    model_args: str | Any, tasks: list[str], data_dir: Path, work: Path, batch_size: int = 8
) -> dict[str, Any]:
    """Evaluate the HF model of ``model_args`` (zero-shot, on CPU) on the local docs of ``tasks``;
    ``model_args`` may also be an ``lm_eval`` model object already built (so a timing leaves out its loading).

    ``tasks`` are names without the prefix (see ``TASKS``); ``data_dir/<task>.jsonl`` must exist for each.
    ``work`` receives the instantiated task YAMLs (``work/tasks``), the ``datasets`` cache
    (``work/datasets_cache``) and lm_eval's log / progress output (``work/lm_eval.log``).

    Returns ``{task: [row, ...], "_summary": {task: {"acc": float, "acc_norm": float | None, "n": int}}}``;
    the rows of a task are in doc order (row i is line i of the JSONL file), each
    ``{"doc_id": int, "acc": float, "acc_norm": float | None, "pred": int, "pred_norm": int,
    "lls": [float per choice], "gold": int, "arguments": [(context, continuation) per choice]}``, where
    ``acc`` / ``acc_norm`` are the harness's per-doc metrics (``acc_norm`` is None where the task does not report
    it: winogrande), ``pred`` = argmax of the summed logliks, ``pred_norm`` = argmax of logliks / len(choice)
    in characters (for winogrande the "choice" is the per-option context). ``_summary`` holds the harness's
    aggregate metrics.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown parity tasks {unknown}: choose from {list(TASKS)}")
    data_dir, work = Path(data_dir).resolve(), Path(work).resolve()
    missing = [t for t in tasks if not (data_dir / f"{t}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"no docs for {missing} in {data_dir} (use write_harness_docs)")
    work.mkdir(parents=True, exist_ok=True)
    include = harness_task_dir(data_dir, work / "tasks", cache_dir=work / "datasets_cache")
    log_file = work / "lm_eval.log"
    names = [PREFIX + t for t in tasks]

    with _offline_and_quiet(log_file):
        tm_kwargs: dict[str, Any] = {"include_path": str(include)}
        if "include_defaults" in inspect.signature(TaskManager.__init__).parameters:
            tm_kwargs["include_defaults"] = False
        task_manager = TaskManager(**tm_kwargs)
        not_indexed = [n for n in names if n not in task_manager.all_tasks]
        if not_indexed:  # lm_eval skips YAMLs it cannot parse with only a debug message
            raise RuntimeError(f"lm_eval did not index {not_indexed} from {include}")
        built = not isinstance(model_args, str)  # an lm_eval model object built by the caller (timings)
        results = lm_eval.simple_evaluate(
            model=model_args if built else "hf",
            model_args=None if built else model_args,
            tasks=names,
            task_manager=task_manager,
            num_fewshot=0,
            batch_size=batch_size,
            device="cpu",
            log_samples=True,
            bootstrap_iters=0,  # no stderr estimates (only the per-doc values matter here)
            cache_requests=False,
            use_cache=None,
        )
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned nothing (not rank 0?)")

    out: dict[str, Any] = {}
    summary: dict[str, dict[str, Any]] = {}
    for task, name in zip(tasks, names):
        delimiter = results["configs"][name].get("target_delimiter", " ")
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        out[task] = [_per_doc(task, s, delimiter) for s in samples]
        metrics = results["results"][name]
        summary[task] = {
            "acc": float(metrics["acc,none"]),
            "acc_norm": float(metrics["acc_norm,none"]) if "acc_norm,none" in metrics else None,
            "n": len(samples),
        }
    out["_summary"] = summary
    return out


# ----------------------------------------------------------------------------- loragen items as documents

# task -> (split evaluated, harness task name); PIQA/WinoGrande evaluation splits are kept out of this
# repository's data, so their train files serve as items here (nothing is trained in these tests).
SPLITS = {
    "arc_easy": "test",
    "arc_challenge": "test",
    "openbookqa": "test",
    "siqa": "val",
    "piqa": "train",
    "winogrande": "train",
    "boolq": "test",
    "hellaswag": "test",
    "rte": "val",
    "cb": "val",
    "wic": "val",
    "qnli": "val",
    "mrpc": "val",
    "sst2": "val",
    "mc_taco": "test",
    "commonsenseqa.letter": "val",
}
HARNESS_NAME = {"boolq": "boolq_closed_book", "commonsenseqa.letter": "commonsense_qa"}
LABEL_TASKS = ("rte", "cb", "wic", "qnli", "mrpc", "sst2", "mc_taco")


def _raw_row(source: str, task: str | None = None) -> dict:
    """The raw row a record was parsed from (``file:line``; read by the task's own reader when given), with
    its labels-file line."""
    from loragen.data.tasks import get_task

    path = Path(source.rpartition(":")[0])
    rows = get_task(task).read(path) if task else read_rows(path)
    for i, (loc, row) in enumerate(rows):
        if loc == source:
            label_path = labels_file(path)
            return {**row, "_label": read_labels(label_path, len(rows))[i][1] if label_path else None}
    raise KeyError(source)


def harness_doc(task: str, record, item) -> dict:
    """The item as a document of the harness's dataset schema (texts as loragen parsed them)."""
    letters = [chr(ord("A") + k) for k in range(len(item.options))]
    if task in LABEL_TASKS:  # the hub-schema row the task's reader gives, with the class index as the label
        from loragen.data.tasks import get_task

        raw = _raw_row(record.meta["source"], task)
        values, index = get_task(task).row_fields(raw, None)
        return {**raw, **values, "label": index}
    if task == "commonsenseqa.letter":
        return {
            "question": item.question,
            "choices": {"text": list(item.options), "label": letters},
            "answerKey": letters[item.label],
        }
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        key = "question_stem" if task == "openbookqa" else "question"
        return {
            key: item.question,
            "choices": {"text": list(item.options), "label": letters},
            "answerKey": letters[item.label],
        }
    if task == "boolq":
        return {"question": item.question, "label": 1 - item.label}  # parsed: 0 = true; harness: 1 = yes
    raw = _raw_row(record.meta["source"])
    # raw-format rows go to the harness exactly as written (loragen reads their text unchanged too)
    if task == "siqa":
        fields = ("context", "question", "answerA", "answerB", "answerC")
        return {**{k: raw[k] for k in fields}, "label": str(item.label + 1)}
    if task == "piqa":
        return {"goal": raw["goal"], "sol1": raw["sol1"], "sol2": raw["sol2"], "label": item.label}
    if task == "winogrande":
        return {k: raw[k] for k in ("sentence", "option1", "option2")} | {"answer": str(item.label + 1)}
    if task == "hellaswag":
        return {k: raw[k] for k in ("activity_label", "ctx_a", "ctx_b", "endings")} | {"label": str(item.label)}
    raise KeyError(task)


def docs_for(loader: TaskLoader, task: str, limit: int, split: str | None = None) -> tuple[list[str], list[dict]]:
    """Sources and harness documents of the first ``limit`` records loragen evaluates for ``task``."""
    split = split or SPLITS[task]
    records = loader.records(task, split)[:limit]
    parsed = {loc: item for loc, item in loader.parsed(task, split)}
    return ([r.meta["source"] for r in records], [harness_doc(task, r, parsed[r.meta["source"]]) for r in records])

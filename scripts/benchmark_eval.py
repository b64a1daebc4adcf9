"""Zero-shot evaluation time of loragen ÷ lm-evaluation-harness's, in one run on the same items.

Both evaluate the plain edge model (default: the bundled SmolLM2-135M-Instruct) by option
log-likelihood on the same items, asked in the same formulation (``tests/harness_tasks/``), with
the same batch size and thread count. Model loading is left out of both timings (loragen: the
``BaseModel`` is built before the clock starts; the harness: its ``HFLM`` object likewise);
tokenization and scoring are in both. Prints each time, the ratio (target ≤ 1.0) and both
accuracies (which must agree: the parity tests check it item by item).

    python scripts/benchmark_eval.py --data-dir DATA [--task arc_easy --items 300] [--json out.json]

Needs the dev extras (``lm-eval``) and the repository's ``tests/`` folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder in the layout of the shared benchmark data")
    parser.add_argument("--task", default="arc_easy", help="a task with a harness template (default arc_easy)")
    parser.add_argument("--items", type=int, default=300, help="items evaluated by both (default 300)")
    parser.add_argument("--edge", default="bundled:smollm2-135m-instruct", help="edge model source")
    parser.add_argument("--batch-size", type=int, default=16, help="items (loragen) / requests (harness) per batch")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import lightning as L
    import torch
    from lm_eval.models.huggingface import HFLM

    from loragen.backbones import model_directory
    from loragen.data.task_datamodule import TaskDataModule
    from loragen.data.tasks import TaskLoader
    from loragen.models.baselines import BaseModel
    from tests.harness import HARNESS_NAME, SPLITS, docs_for, run_harness, write_harness_docs

    task, split = args.task, SPLITS[args.task]
    work = Path(tempfile.mkdtemp(prefix="loragen-bench-eval-"))
    _, docs = docs_for(TaskLoader(args.data_dir, shots=0), task, args.items)
    write_harness_docs(HARNESS_NAME.get(task, task), docs, work / "docs")

    module = BaseModel(edge=args.edge, cloud=args.edge)
    data = TaskDataModule(
        test_tasks=[f"{task}:{split}"],
        data_dir=args.data_dir,
        shots=0,
        cloud=args.edge,
        edge=args.edge,
        limit_per_task=args.items,
        eval_batch_size=args.batch_size,
        reference=False,
        max_input_tokens=1024,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(work / "loragen"),
    )
    start = time.perf_counter()
    trainer.test(module, data, verbose=False)
    loragen_s = time.perf_counter() - start
    row = module.last_results["rows"][0]

    harness_model = HFLM(
        pretrained=str(model_directory(args.edge)), dtype="float32", batch_size=args.batch_size, device="cpu"
    )
    start = time.perf_counter()
    theirs = run_harness(
        harness_model, [HARNESS_NAME.get(task, task)], work / "docs", work / "harness", batch_size=args.batch_size
    )
    harness_s = time.perf_counter() - start
    summary = theirs["_summary"][HARNESS_NAME.get(task, task)]

    figures = {
        "task": task,
        "items": len(docs),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "loragen_s": round(loragen_s, 2),
        "harness_s": round(harness_s, 2),
        "ratio": round(loragen_s / harness_s, 3),
        "loragen_acc": row["acc_mean"],
        "harness_acc": summary["acc"],
        "loragen_acc_norm": row["acc_norm_mean"],
        "harness_acc_norm": summary["acc_norm"],
    }
    print(
        f"{task}, {len(docs)} items, {figures['threads']} thread(s), batch {args.batch_size}: "
        f"loragen {loragen_s:.1f} s, lm-evaluation-harness {harness_s:.1f} s, "
        f"ratio {figures['ratio']:.3f} (target <= 1.0)"
    )
    print(
        f"accuracy acc / acc_norm: loragen {row['acc_mean']:.4f} / {row['acc_norm_mean']:.4f}, "
        f"harness {summary['acc']:.4f} / {summary['acc_norm']:.4f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()

"""``loragen tasks``: the task registry as a table -- task, family, dataset, items per split, descriptions,
grading, licence -- for every task, a preset, or a list of tasks.

    loragen tasks                                     # every task, no item counts (instant)
    loragen tasks --data_dir PATH --preset suite      # the suite with its item counts (seconds)
    loragen tasks --data_dir PATH --output docs/tasks.md   # the generated page of the docs

Item counts are the usable items of each split as loragen reads them (malformed rows skipped; a carved
dataset's val/test are its carve and its train the rest); a split without a local file is empty.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from loragen import LoRAGenError

PAGE = """# Tasks

The task registry as `loragen tasks` prints it; this page is generated, not edited:

    {command}

{summary}

Presets: {presets}.
A task `DATASET.FAMILY` asks the items of DATASET as FAMILY says (`loragen/data/tasks/families.py`);
*descriptions* counts the paraphrases training may draw from (`data.train_descriptions`) and the one held
out of training (`data.eval_description: heldout`). Task descriptions of eight benchmarks include the
Text-to-LoRA release's (Apache-2.0, `loragen/data/tasks/t2l/README.md`).

"""


def tasks(
    data_dir: str | None = None,
    preset: str | None = None,
    names: list[str] | None = None,
    format: Literal["md", "csv", "json"] = "md",
    output: str | None = None,
) -> None:  # noqa: A002
    """List tasks with their family, dataset, items per split, descriptions, grading and licence.

    Args:
        data_dir: the benchmark files (the layout of ``data.init_args.data_dir``); with it the table counts
            the items of every split, without it the counts are left empty.
        preset: only the tasks of this preset (``seen``, ``unseen``, ``suite``, ``suite_no_nc``, ``dev_unseen``).
        names: only these tasks (names or presets).
        format: ``md`` (Markdown table), ``csv`` or ``json``.
        output: write to this file instead of stdout; a ``.md`` file gets a page around the table (title,
            the command, the suite's totals).
    """
    from loragen.data.tasks import PRESETS, REGISTRY, TaskLoader, expand_tasks
    from loragen.data.tasks.suite import format_table, summary, table_rows

    if preset is not None and preset not in PRESETS:
        raise LoRAGenError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    selected = [preset] if preset else list(names or [])
    chosen = list(dict.fromkeys(t for t, _ in expand_tasks(selected, "test"))) if selected else sorted(REGISTRY)
    unknown = [t for t in chosen if t not in REGISTRY]
    if unknown:
        raise LoRAGenError(f"unknown task(s) {', '.join(unknown)}: `loragen tasks` lists the known ones")
    loader = None
    if data_dir is not None:
        if not Path(data_dir).expanduser().is_dir():
            raise LoRAGenError(f"--data_dir {data_dir} is not a directory: give the folder of the benchmark files")
        loader = TaskLoader(data_dir, shots=0)
    start = time.perf_counter()
    import warnings

    with warnings.catch_warnings():  # malformed rows are counted out of the table; the loader says which
        warnings.simplefilter("ignore")
        rows = table_rows(chosen, REGISTRY, loader)
    if loader is not None:
        print(
            f"loragen tasks: read {len(rows)} tasks from {data_dir} in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    text = format_table(rows, format)
    if output is None:
        sys.stdout.write(text)
        return
    path = Path(output)
    if format == "md" and path.suffix == ".md":
        args = " ".join(
            [
                "loragen tasks",
                *(["--data_dir DATA"] if data_dir else []),
                *([f"--preset {preset}"] if preset else []),
                f"--output {output}",
            ]
        )
        text = (
            PAGE.format(
                command=args,
                summary=summary(rows, REGISTRY),
                presets=", ".join(f"`{p}` ({len(expand_tasks([p], 'test'))} tasks)" for p in PRESETS),
            )
            + text
        )
    from loragen.files import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
    print(f"loragen tasks: wrote {path} ({len(rows)} tasks)", file=sys.stderr)


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    try:
        CLI(tasks, args=argv, as_positional=False)
    except LoRAGenError as err:
        print(f"loragen tasks: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

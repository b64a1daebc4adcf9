"""The paired study report of a sweep: each point's generator against its own prompt-sensitivity rows, the
reference rows and the baseline points, on seen and unseen tasks apart.

A sweep point's ``items.jsonl`` holds one line per (edge setting, item). Settings that do not depend on the
generator (the edge reading the system prompt, ``prompted``; the bare edge, ``zero_shot``) and baseline points
(a point without prompt-sensitivity rows, e.g. the multi-task ``lora``) are scored once and paired with every
point item by item, by (task, source line). Every difference is a paired, task-stratified bootstrap of the
unweighted mean over tasks (:func:`loragen.eval.intervals.paired_bootstrap`), computed on the items both
sides scored, on each task's headline metric.

A task is *unseen* when its dataset is in the point's ``data.unseen`` list (``loragen tasks`` gives each
task's dataset); every other test task is *seen*. Written beside the sweep's own table: ``study.md``,
``study.csv`` (one line per point, group and comparison) and ``study.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from loragen.eval.intervals import PAIRED_NOTE, Z95, half_width, paired_bootstrap
from loragen.files import atomic_write_text

OWN = "own"  # stands for the point's method row (``loragen``, ``text_to_lora``)
LORAGEN = "loragen"  # LoRA-Gen's row key: its points are also paired with every other prompt-to-LoRA point
# (label, setting, versus): the method's row against its own sensitivity rows, then against the references
COMPARISONS = (
    ("own − task-free", OWN, "generic"),
    ("own − rotated", OWN, "rotated"),
    ("paraphrase − own", "paraphrase", OWN),
    ("own − prompted", OWN, "prompted"),
    ("own − zero-shot", OWN, "zero_shot"),
)
SHARED = ("prompted", "zero_shot")  # rows that do not depend on the point's generator
SENSITIVITY = ("generic", "rotated")  # a point with these rows generates its LoRA from the prompt
GROUPS = ("unseen", "seen")
BOOTSTRAP, SEED = 2000, 0

Items = dict[str, dict[tuple[str, str], tuple[str, float]]]  # setting -> (task, source) -> (task, headline)


def _outcomes(run_dir: Path) -> tuple[list[tuple[dict[str, Any], str]], dict[str, Any]] | None:
    """A run's per-item outcomes (its latest ``items.jsonl``), each with the name of its task's headline metric
    (``results.json``'s ``task_metrics``), and its results."""
    found = sorted(run_dir.rglob("items.jsonl"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    results = json.loads(found[-1].with_name("results.json").read_text())
    metrics = results.get("task_metrics") or {}
    metric = results.get("metric", "acc_norm")
    outcomes = []
    for line in found[-1].read_text().splitlines():
        item = json.loads(line)
        outcomes.append((item, metrics.get(item["task"], "acc_norm") if metric == "harness" else metric))
    return outcomes, results


def _item_key(item: dict[str, Any]) -> tuple[str, str]:
    """An item's identity across runs: its task and its source id; records without one (the quickstart's, a
    RecordDataModule's) by their position in the test set, which every run of the same files shares."""
    source = item.get("source")
    return item["task"], str(source) if source is not None else f"#{item['uid']}"


def read_items(run_dir: Path) -> tuple[Items, dict[str, Any]] | None:
    """A run's items per setting, each item's headline metric."""
    read = _outcomes(run_dir)
    if read is None:
        return None
    items: Items = {}
    for item, name in read[0]:
        items.setdefault(item["setting"], {})[_item_key(item)] = (item["task"], float(item[name]))
    return items, read[1]


def read_answers(run_dir: Path) -> dict[str, dict[tuple[str, str], int]]:
    """A run's chosen answer per setting and item under the headline metric (``pred_norm`` for ``acc_norm``,
    else ``pred``; items without one, e.g. generated answers, left out)."""
    read = _outcomes(run_dir)
    answers: dict[str, dict[tuple[str, str], int]] = {}
    for item, name in read[0] if read is not None else []:
        answer = item.get("pred_norm" if name == "acc_norm" else "pred", -1)
        if answer is not None and answer >= 0:
            answers.setdefault(item["setting"], {})[_item_key(item)] = int(answer)
    return answers


def majority_share(answers: dict[tuple[str, str], int], keys: list[tuple[str, str]]) -> float | None:
    """The share of ``keys`` given the most frequent answer: near 1, the edge gives one answer whatever the item
    (a LoRA that changes it flips a label prior, not how well items are read)."""
    given = [answers[k] for k in keys if k in answers]
    return max(given.count(a) for a in set(given)) / len(given) if given else None


def task_groups(tasks: list[str], unseen: list[str]) -> dict[str, str]:
    """task -> ``unseen`` / ``seen`` by its registry dataset."""
    from loragen.data.tasks import dataset_of

    return {t: "unseen" if dataset_of(t) in unseen else "seen" for t in tasks}


def paired(
    a: dict[tuple[str, str], tuple[str, float]],
    b: dict[tuple[str, str], tuple[str, float]],
    group: dict[str, str],
    which: str,
) -> dict[str, float] | None:
    """mean(a − b) over the tasks of ``which`` (``all``: every task), on the items both scored, with its 95%
    interval."""
    keys = [k for k in a if k in b and (which == "all" or group.get(k[0]) == which)]
    if not keys:
        return None
    names = sorted({k[0] for k in keys})
    strata = np.array([names.index(k[0]) for k in keys])
    _, (diff, low, high) = paired_bootstrap(
        np.array([a[k][1] for k in keys]), np.array([b[k][1] for k in keys]), strata, bootstrap=BOOTSTRAP, seed=SEED
    )
    return {"diff": diff, "low": low, "high": high, "n": len(keys), "tasks": int(np.unique(strata).size)}


def accuracy(a: dict[tuple[str, str], tuple[str, float]], group: dict[str, str], which: str) -> dict[str, float] | None:
    """Unweighted mean over tasks of ``which`` with the half-width of independent task means."""
    per: dict[str, list[float]] = {}
    for task, value in a.values():
        if group.get(task) == which:
            per.setdefault(task, []).append(value)
    if not per:
        return None
    means = [float(np.mean(v)) for v in per.values()]
    ci = float(np.sqrt(sum(half_width(v) ** 2 for v in per.values()))) / len(per)
    return {"acc": float(np.mean(means)), "ci": ci, "n": sum(len(v) for v in per.values()), "tasks": len(per)}


Point = tuple[str, dict[str, Any], dict[str, str], Items]  # name, results.json, task -> group, setting -> items


def _load(runs: dict[str, Path], unseen: list[str]) -> tuple[list[Point], dict[str, Any]]:
    """The generator points (those with prompt-sensitivity rows), each with its items per setting, the shared
    reference rows (scored once, by any point) and its own row as ``own``; and each baseline point's own row."""
    loaded = {name: read for name, path in runs.items() if (read := read_items(path)) is not None}
    shared: Items = {}
    baselines: dict[str, Any] = {}
    generators = [name for name, (items, _) in loaded.items() if any(s in items for s in SENSITIVITY)]
    for name, (items, results) in loaded.items():
        method = results["rows"][0]["key"]
        if name not in generators or method != LORAGEN:  # another prompt-to-LoRA method is LoRA-Gen's baseline too
            baselines[name] = items[method]
        for setting in SHARED:
            if setting in items:
                shared.setdefault(setting, items[setting])
    points = []
    for name in generators:
        items, results = loaded[name]
        pool = {**shared, **items, OWN: items[results["rows"][0]["key"]]}
        points.append((name, results, task_groups(results["tasks"], unseen), pool))
    return points, baselines


def study_rows(runs: dict[str, Path], unseen: list[str]) -> list[dict[str, Any]]:
    """One row per (point, group, comparison): every generator point (one with prompt-sensitivity rows:
    LoRA-Gen, Text-to-LoRA) against its own rows, the shared references and every baseline point; a LoRA-Gen
    point also against every other method's generator point (``own − text_to_lora``)."""
    points, baselines = _load(runs, unseen)
    generator_names = {name for name, *_ in points}
    rows = []
    for name, results, group, pool in points:
        gate = (results.get("gate_distance") or {}).get("between_prompts")
        for which in GROUPS:
            acc = accuracy(pool[OWN], group, which)
            if acc is None:
                continue
            rows.append(
                {
                    "point": name,
                    "group": which,
                    "comparison": "accuracy",
                    "diff": acc["acc"],
                    "low": acc["acc"] - acc["ci"],
                    "high": acc["acc"] + acc["ci"],
                    "n": acc["n"],
                    "tasks": acc["tasks"],
                    "gate_distance": gate,
                }
            )
            versus = [(label, pool.get(a), pool.get(b)) for label, a, b in COMPARISONS]
            versus += [
                (f"own − {base}", pool[OWN], base_items)
                for base, base_items in baselines.items()
                if base != name and (base not in generator_names or results["rows"][0]["key"] == LORAGEN)
            ]
            for label, a, b in versus:
                cell = paired(a, b, group, which) if a is not None and b is not None else None
                if cell is not None:
                    rows.append({"point": name, "group": which, "comparison": label, **cell, "gate_distance": gate})
    return rows


def differences_to(runs: dict[str, Path], reference: str, unseen: list[str]) -> list[dict[str, Any]]:
    """Each run's own row minus the ``reference`` run's own row, item by item, on unseen, seen and all
    tasks (``loragen compare``: every method against LoRA-Gen)."""
    loaded = {name: read for name, path in runs.items() if (read := read_items(path)) is not None}
    if reference not in loaded:
        return []
    ref_items, ref_results = loaded[reference]
    ref = ref_items[ref_results["rows"][0]["key"]]
    group = task_groups(ref_results["tasks"], unseen)
    rows = []
    for name, (items, results) in loaded.items():
        if name == reference:
            continue
        for which in (*GROUPS, "all"):
            cell = paired(items[results["rows"][0]["key"]], ref, group, which)
            if cell is not None:
                rows.append({"method": name, "versus": reference, "group": which, **cell})
    return rows


TASK_SETTINGS = (OWN, "generic", "prompted", "zero_shot")  # the per-task table's accuracies
MAJORITY = ("own_majority", "generic_majority")  # and the share of items given each LoRA's most frequent answer


def task_rows(runs: dict[str, Path], unseen: list[str]) -> list[dict[str, Any]]:
    """One row per (generator point, task): the task's item count and the accuracy of the point's own LoRA, its
    task-free prompt's LoRA and the references, on the same items: where a point's prompt reading helps or
    hurts (a mean over tasks hides a few large per-task shifts); and, for the two LoRAs, the share of items given
    their most frequent answer (:func:`majority_share`)."""
    points, _ = _load(runs, unseen)
    rows = []
    for name, results, group, pool in points:
        answers, own = read_answers(runs[name]), results["rows"][0]["key"]
        for task in sorted(group, key=lambda t: (GROUPS.index(group[t]), t)):
            keys = [k for k in pool[OWN] if k[0] == task and all(k in pool.get(s, {}) for s in SENSITIVITY)]
            if not keys:
                continue
            row: dict[str, Any] = {"point": name, "group": group[task], "task": task, "n": len(keys)}
            for setting in TASK_SETTINGS:
                if setting in pool and all(k in pool[setting] for k in keys):
                    row[setting] = float(np.mean([pool[setting][k][1] for k in keys]))
            for setting, column in ((own, "own_majority"), ("generic", "generic_majority")):
                share = majority_share(answers.get(setting, {}), keys)
                if share is not None:
                    row[column] = share
            rows.append(row)
    return rows


def task_markdown(rows: list[dict[str, Any]]) -> str:
    """Per group, one line per task: each point's own − task-free in points (the table's first column)."""
    from loragen.report import markdown_table

    points = list(dict.fromkeys(r["point"] for r in rows))

    def cell(r: dict[str, Any] | None) -> str:
        return "" if r is None else f"{_points(r[OWN] - r['generic']):+.1f}"

    lines: list[str] = []
    for which in GROUPS:
        cells = {(r["task"], r["point"]): r for r in rows if r["group"] == which}
        tasks = list(dict.fromkeys(r["task"] for r in rows if r["group"] == which))
        if not tasks:
            continue
        lines += [f"### {which.capitalize()} tasks: own − task-free, per task", ""]

        lines += markdown_table(
            ["task", "items", *points],
            (
                [
                    t,
                    str(cells[(t, next(p for p in points if (t, p) in cells))]["n"]),
                    *(cell(cells.get((t, p))) for p in points),
                ]
                for t in tasks
            ),
        )
        lines.append("")
    counts = [int(r["n"]) for r in rows]
    n = max(set(counts), key=counts.count) if counts else 0
    noise = (
        f"; at {n} items, where half of them are answered differently, a task's difference has a 95% interval "
        f"of about ±{100 * Z95 * math.sqrt(0.5 / n):.0f} points"
        if n
        else ""
    )
    lines.append(
        f"Points of accuracy on each task's items (own LoRA minus the task-free prompt's LoRA, same items){noise}: "
        "read patterns across tasks, not one cell. study_tasks.csv has every setting's accuracy."
    )
    return "\n".join(lines) + "\n"


def _points(value: float) -> float:
    return round(100 * value, 1) + 0.0  # no "-0.0"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["comparison"] == "accuracy":
        return f"{_points(row['diff']):.1f} ±{_points(row['high'] - row['diff']):.1f}"
    return f"{_points(row['diff']):+.1f} [{_points(row['low']):+.1f}, {_points(row['high']):+.1f}]"


def study_markdown(rows: list[dict[str, Any]]) -> str:
    from loragen.report import markdown_table

    comparisons = list(dict.fromkeys(r["comparison"] for r in rows))
    points = list(dict.fromkeys(r["point"] for r in rows))
    lines: list[str] = []
    for which in GROUPS:
        cells = {(r["point"], r["comparison"]): r for r in rows if r["group"] == which}
        if not cells:
            continue
        n = {r["tasks"] for r in cells.values()}
        items = {r["n"] for r in cells.values() if r["comparison"] == "accuracy"}
        lines += [
            f"### {which.capitalize()} tasks ({'/'.join(map(str, sorted(n)))} tasks, "
            f"{'/'.join(map(str, sorted(items)))} items)",
            "",
        ]
        gates = {p: next((r["gate_distance"] for r in cells.values() if r["point"] == p), None) for p in points}
        header = ["point", *comparisons, "gate distance"]
        lines += markdown_table(
            header,
            (
                [p, *(_cell(cells.get((p, c))) for c in comparisons), "" if gates[p] is None else f"{gates[p]:.3f}"]
                for p in points
            ),
        )
        lines.append("")
    lines.append(
        "Points in accuracy (%, headline metric per task, unweighted mean over tasks); accuracy ± the 95% "
        "half-width of independent task means; " + PAIRED_NOTE.format(bootstrap=BOOTSTRAP, seed=SEED) + "."
    )
    return "\n".join(lines) + "\n"


def write_study(runs: dict[str, Path], unseen: list[str], out: Path) -> list[Path]:
    """``study.md`` / ``study.csv`` / ``study.png`` in ``out`` (nothing when no point wrote items)."""
    from loragen.report import pyplot, save_figure, write_csv

    rows = study_rows(runs, unseen)
    if not rows:
        return []
    paths = [
        write_csv(
            out / "study.csv",
            ["point", "group", "comparison", "diff", "low", "high", "n", "tasks", "gate_distance"],
            rows,
        )
    ]
    tasks = task_rows(runs, unseen)
    report = study_markdown(rows)
    if tasks:
        paths.append(
            write_csv(out / "study_tasks.csv", ["point", "group", "task", "n", *TASK_SETTINGS, *MAJORITY], tasks)
        )
        report += "\n" + task_markdown(tasks)
    atomic_write_text(out / "study.md", report)
    paths.append(out / "study.md")
    plt = pyplot()
    diffs = [r for r in rows if r["comparison"] != "accuracy"]
    if diffs:
        comparisons = list(dict.fromkeys(r["comparison"] for r in diffs))
        points = list(dict.fromkeys(r["point"] for r in diffs))
        groups = [g for g in GROUPS if any(r["group"] == g for r in diffs)]
        fig, axes = plt.subplots(
            1,
            len(groups),
            figsize=(6 * len(groups), 0.6 + 0.45 * len(comparisons) * len(points) / 2),
            squeeze=False,
            sharey=True,
        )
        height = 0.8 / len(points)
        for ax, which in zip(axes[0], groups, strict=True):
            cells = {(r["point"], r["comparison"]): r for r in diffs if r["group"] == which}
            for j, point in enumerate(points):
                ys, xs = [], []
                err: list[list[float]] = [[], []]
                for i, comparison in enumerate(comparisons):
                    r = cells.get((point, comparison))
                    if r is None:
                        continue
                    ys.append(i + j * height)
                    xs.append(100 * r["diff"])
                    err[0].append(100 * (r["diff"] - r["low"]))
                    err[1].append(100 * (r["high"] - r["diff"]))
                ax.barh(ys, xs, height=height, xerr=err, label=point, capsize=2)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks([i + 0.4 - height / 2 for i in range(len(comparisons))], comparisons)
            ax.set_xlabel("paired difference (points, 95% interval)")
            ax.set_title(f"{which} tasks")
        axes[0][0].invert_yaxis()  # the table's order, top down (the y axis is shared: invert it once)
        axes[0][-1].legend(fontsize="small", loc="best")
        fig.tight_layout()
        paths.append(save_figure(fig, out / "study.png"))
    return paths


def _refuse(message: str) -> NoReturn:
    raise SystemExit(f"python -m loragen.eval.study: error: {message}")


def report(out: str, also: list[str] | None = None, to: str | None = None) -> None:
    """(Re)write the study files of a sweep directory from the points that have finished (e.g. while the sweep
    still runs, or after it was interrupted).

    Args:
        out: the sweep's --out directory
        also: finished points of other sweeps (their point directories, e.g. runs/specificity/base) to report
            beside these, every point restricted to the items all of them scored (a second budget or test size
            read on the same items)
        to: where the joined report goes (needed with ``also``; the points' item files are copied there, cut to
            the shared items)
    """
    import yaml

    directory = Path(out)
    finished = sorted(directory.glob("*/point.json"), key=lambda p: p.stat().st_mtime)
    if not finished:
        _refuse(f"{out} holds no finished point (*/point.json)")
    config = yaml.safe_load((finished[0].parent / "config.yaml").read_text()) or {}
    unseen = ((config.get("data") or {}).get("init_args") or {}).get("unseen") or []
    runs = {p.parent.name: p.parent for p in finished}
    if also:
        if not to:
            _refuse("--also needs --to DIR (the joined report's folder)")
        for extra in map(Path, also):
            if not (extra / "point.json").is_file():
                _refuse(f"{extra} is not a finished point (no point.json)")
            if extra.name in runs:
                _refuse(f"two points are named {extra.name}: rename one")
            runs[extra.name] = extra
        directory = Path(to)
        runs = shared_items(runs, directory)
    paths = write_study(runs, list(unseen), directory)
    print((directory / "study.md").read_text() if paths else "no point wrote per-item outcomes")
    print("wrote " + ", ".join(str(p) for p in paths))


def shared_items(runs: dict[str, Path], out: Path) -> dict[str, Path]:
    """Each run's latest items.jsonl and results.json copied to ``out/NAME/``, cut to the items every run scored
    (same task and item), so that every comparison of a joined report is on the same items."""
    read = {name: _outcomes(path) for name, path in runs.items()}
    keys: set[tuple[str, str]] | None = None
    for got in read.values():
        if got is not None:
            scored = {_item_key(item) for item, _ in got[0]}
            keys = scored if keys is None else keys & scored
    copied = {}
    for name, got in read.items():
        if got is None:
            continue
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(item) for item, _ in got[0] if _item_key(item) in (keys or set())]
        atomic_write_text(target / "items.jsonl", "\n".join(lines) + "\n")
        atomic_write_text(target / "results.json", json.dumps(got[1], indent=1) + "\n")
        copied[name] = target
    return copied


def main(argv: list[str] | None = None) -> None:
    """``python -m loragen.eval.study OUT`` (jsonargparse, as every loragen command)."""
    from jsonargparse import CLI

    CLI(report, args=argv, prog="python -m loragen.eval.study")


if __name__ == "__main__":
    main()

"""``loragen sweep``: an offline grid of ``loragen fit`` + ``loragen test``, one run directory per point.

    loragen sweep --base configs/quickstart.yaml \\
        --grid model.init_args.pool.num_experts=2,4,8 --grid model.init_args.pool.aux_coef=0,0.01 --out runs/sweep

Each point gets ``<out>/<key=value__...>/`` with its fully resolved ``config.yaml``, checkpoints,
logs, ``results.json`` and a ``point.json`` marker written when the point finished; re-running the
same command skips finished points (resumable). Every point's model settings are validated before
anything starts (e.g. ``top_k > num_experts`` is rejected). At the end ``sweep.md``, ``sweep.csv``
and ``sweep.png`` (metric vs. the first grid key, one line per value of the second) are written.

``--points FILE`` runs named points instead of a grid: a YAML mapping ``name: {dotted.key: value, ...}``
(``base: {}`` is the base config itself), for studies that change one factor, or a few keys together,
at a time (``configs/studies/recipe.yaml``). Its plot is one bar per point with its interval. A point's
``config: FILE`` (or a list of files) is layered over the base as a second ``--config``, e.g. a baseline
method on the same data and budget (``lora: {config: configs/baselines/lora.yaml}``). A point's ``ckpt_path:
CKPT`` (a checkpoint or ``bundled:NAME``) is tested as it is, not trained: a released generator beside baselines
trained for its card (``configs/studies/release_card.yaml``).

When the points wrote per-item outcomes, ``study.md`` / ``study.csv`` / ``study.png`` pair every LoRA-Gen
point with its own prompt-sensitivity rows, the reference rows and each baseline point, item by item, on
seen and unseen tasks apart (:mod:`loragen.eval.study`).

For W&B users with an account, ``configs/sweeps/*.yaml`` are the same grids as W&B sweep configs.
"""

from __future__ import annotations

import copy
import itertools
import sys
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.runner import Plan, parse_runner, read_base, run_plans, runner_parser

LAYER = "config"  # a point's key for config files layered over the base
CHECKPOINT = "ckpt_path"  # a point's key for a trained checkpoint (or release) to test, without fitting


def split_values(values: str) -> list[str]:
    """``"1,[a,b],{x: 1, y: 2}"`` → ``["1", "[a,b]", "{x: 1, y: 2}"]``: commas inside brackets stay."""
    parts, depth, current = [], 0, ""
    for char in values:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["model.init_args.pool.num_experts=2,4"]`` → ``{"model.init_args.pool.num_experts": [2, 4]}``; list
    values in brackets (``target_modules=[q_proj,v_proj],[gate_proj]``) stay whole."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise LoRAGenError(f"--grid {item!r} is not KEY=V1,V2,...: e.g. model.init_args.pool.num_experts=2,4,8")
        grid[key] = [yaml.safe_load(v) for v in split_values(values)]
    return grid


def read_points(path: str) -> dict[str, dict[str, Any]]:
    """A ``--points`` file: ``{name: {dotted.key: value}}``, names usable as directory names."""
    import re

    import yaml

    file = Path(path)
    if not file.is_file():
        raise LoRAGenError(f"--points file {path} does not exist")
    points = yaml.safe_load(file.read_text())
    if not isinstance(points, dict) or not points:
        raise LoRAGenError(
            f"--points file {path} must be a mapping of point names to overrides, e.g. "
            "'base: {}' and 'low_lr: {model.init_args.optim.lr: 3e-4}'"
        )
    for name, overrides in points.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.=-]+", name):
            raise LoRAGenError(f"--points file {path}: point name {name!r} must be letters, digits, _ . = -")
        if not isinstance(overrides or {}, dict) or not all(isinstance(k, str) for k in (overrides or {})):
            raise LoRAGenError(
                f"--points file {path}: point {name!r} must map dotted config keys to values, "
                "e.g. {model.init_args.optim.lr: 3e-4}"
            )
    return {name: dict(overrides or {}) for name, overrides in points.items()}


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def point_name(point: dict[str, Any]) -> str:
    return "__".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())


def layered(point: dict[str, Any]) -> list[str]:
    """The point's ``config`` files as ``--config`` arguments (each file must exist)."""
    files = point.get(LAYER) or []
    files = [files] if isinstance(files, str) else list(files)
    for file in files:
        if not Path(file).is_file():
            raise LoRAGenError(f"point config {file} does not exist: give a YAML config file to layer over the base")
    return [arg for file in files for arg in ("--config", str(file))]


def point_config(base: dict[str, Any], point: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The base config with the point's values and every output path moved into ``run_dir``."""
    config = copy.deepcopy(base)
    for key, value in point.items():
        if key not in (LAYER, CHECKPOINT):
            set_key(config, key, value)
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    logger = trainer.get("logger")
    if isinstance(logger, dict):
        logger.setdefault("init_args", {})["save_dir"] = str(run_dir)
    callbacks = trainer.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(callback, dict) and callback.get("class_path", "").endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(run_dir / "checkpoints")
    return config


def validate_point(config: dict[str, Any], name: str) -> None:
    model = config.get("model") or {}
    class_path = model.get("class_path", "")
    if not class_path:
        return
    from loragen.models.edge_method import check_method_args

    try:
        check_method_args(class_path, model.get("init_args") or {})
    except LoRAGenError as err:
        raise LoRAGenError(f"sweep point {name} is invalid: {err}") from None


def summarize_point(point: dict[str, Any], outcome: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """One table row: the point's name (``--points``) or values (grid), every result row's mean with
    its interval, per-task accuracies of the method's row, tokens, gate distance and time."""
    row: dict[str, Any] = {"point": name} if name is not None else {}
    if name is None:
        row.update({k.rsplit(".", 1)[-1]: v for k, v in point.items()})
    results = outcome["results"]
    rows = results["rows"]
    for result_row in rows:  # the method's own row unprefixed, every other row under its key
        prefix = "" if result_row["key"] == rows[0]["key"] else f"{result_row['key']}_"
        row[f"{prefix}acc_mean"] = round(result_row["mean"], 4)
        if result_row.get("mean_ci") is not None:  # results.json without intervals (older runs): no column
            row[f"{prefix}acc_mean_ci"] = round(result_row["mean_ci"], 4)
        row[f"{prefix}acc_hmean"] = round(result_row["hmean"], 4)
        if not prefix:
            row["tokens_per_request"] = round(result_row["tokens_per_request"], 1)
            if name is not None:
                row.update({f"acc_{task}": round(acc, 4) for task, acc in result_row["accuracy"].items()})
    if results.get("gate_distance"):
        row["gate_distance"] = round(results["gate_distance"]["between_prompts"], 3)
    row["seconds"] = round(outcome["seconds"], 1)
    cost = outcome.get("cost") or {}
    row.update({key: cost[key] for key in ("fit_seconds", "peak_rss_mb") if cost.get(key) is not None})
    return row


def write_tables(rows: list[dict[str, Any]], out: Path, grid: dict[str, list[Any]], metric: str) -> list[Path]:
    from loragen.eval.intervals import NOTE
    from loragen.eval.results import with_ci
    from loragen.report import markdown_table, pyplot, save_figure, write_csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(out / "sweep.csv", columns, rows)
    shown = [c for c in columns if not (c.endswith("_ci") and c[:-3] in columns)]  # `value ±ci` in one cell

    def cell(row: dict[str, Any], column: str) -> Any:
        if f"{column}_ci" not in columns or row.get(column) is None:
            return row.get(column, "")
        return with_ci(row[column], row.get(f"{column}_ci"), digits=3)

    lines = markdown_table(shown, ([cell(row, c) for c in shown] for row in rows))
    if any(c.endswith("_ci") for c in columns):
        lines += ["", f"Accuracies as fractions. {NOTE}."]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    paths = [out / "sweep.csv", out / "sweep.md"]
    keys = [k.rsplit(".", 1)[-1] for k in grid]
    if rows and metric in rows[0] and "point" in rows[0]:  # named points: one bar each
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
        names = [row["point"] for row in rows]
        values = [row[metric] for row in rows]
        ax.barh(names, values, xerr=[row.get(f"{metric}_ci") or 0.0 for row in rows], capsize=3, color="#4c72b0")
        for extra in ("prompted", "zero_shot"):  # reference rows, when the runs scored them
            if f"{extra}_{metric}" in rows[0]:
                ax.axvline(
                    rows[0][f"{extra}_{metric}"],
                    ls="--",
                    color="gray" if extra == "zero_shot" else "k",
                    label=f"{extra} edge",
                )
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_xlim(min(values) - 0.1, max(values) + 0.1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        paths.append(save_figure(fig, out / "sweep.png"))
    elif rows and metric in rows[0]:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        series_key = keys[1] if len(keys) > 1 else None
        for series in sorted({row.get(series_key) for row in rows} if series_key else {None}, key=str):
            points = sorted(
                (row[keys[0]], row[metric], row.get(f"{metric}_ci") or 0.0)
                for row in rows
                if series_key is None or row.get(series_key) == series
            )
            label = f"{series_key}={series}" if series_key else metric
            ax.errorbar(
                [p[0] for p in points],
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                marker="o",
                capsize=3,
                label=label,
            )
        ax.set_xlabel(keys[0])
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        paths.append(save_figure(fig, out / "sweep.png"))
    return paths


def sweep(
    config: str,
    grid: dict[str, list[Any]] | None,
    out: str,
    metric: str = "acc_mean",
    extra: list[str] | None = None,
    points: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run every point of ``grid`` (all combinations) or of ``points`` (named override sets)."""

    if (grid is None) == (points is None):
        raise LoRAGenError("give either --grid KEY=V1,V2 (a grid) or --points FILE (named points), not both")
    base = read_base(config)
    out_dir = Path(out)
    if points is not None:
        named = list(points.items())
    elif grid is not None:
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        named = [(point_name(point), point) for point in combos]
    plans, values = [], {}
    for name, point in named:  # validate everything before anything starts
        run_dir = out_dir / name
        resolved = point_config(base, point, run_dir)
        try:
            files = layered(point)
        except LoRAGenError as err:
            raise LoRAGenError(f"sweep point {name} is invalid: {err}") from None
        if not files:  # a layered method config is checked by its own parse
            validate_point(resolved, name)
        ckpt = point.get(CHECKPOINT)
        tested = ["--ckpt_path", str(ckpt)] if ckpt else []
        plans.append(
            Plan(name, run_dir, resolved, [*files, *tested, *(extra or [])], fit=not ckpt, checkpoint=ckpt or None)
        )
        values[name] = point

    def record(plan: Plan, outcome: dict[str, Any]) -> dict[str, Any]:
        point = values[plan.name]
        return {"point": point, "row": summarize_point(point, outcome, plan.name if points is not None else None)}

    records, _ = run_plans(plans, "point.json", record)
    rows = [records[plan.name]["row"] for plan in plans]
    paths = write_tables(rows, out_dir, grid or {}, metric)
    if points is not None:
        from loragen.eval.study import write_study

        unseen = ((base.get("data") or {}).get("init_args") or {}).get("unseen") or []
        paths += write_study({plan.name: plan.run_dir for plan in plans}, list(unseen), out_dir)
    print((out_dir / "sweep.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return rows


def main(argv: list[str]) -> None:
    parser = runner_parser("loragen sweep", __doc__, "runs/sweep")
    parser.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a config key and its values; repeat for a grid (first key = plot x-axis)",
    )
    parser.add_argument(
        "--points", metavar="FILE", help="YAML of named points {name: {dotted.key: value}} instead of a grid"
    )
    parser.add_argument("--metric", default="acc_mean", help="column of the table to plot")
    args = parse_runner(parser, argv)
    try:
        points = read_points(args.points) if args.points else None
        grid = parse_grid(args.grid) if args.grid else None
        sweep(args.base, grid, args.out, args.metric, args.fit_args, points)
    except LoRAGenError as err:
        print(f"loragen sweep: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

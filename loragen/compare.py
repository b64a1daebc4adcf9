"""``loragen compare``: is LoRA-Gen worth it here? LoRA-Gen and the baselines on one configuration.

    loragen compare --base configs/quickstart.yaml --out runs/compare
    loragen compare --base configs/quickstart.yaml --methods loragen,lora,lora_prompted \\
        --set lora.pool.rank=16 --out runs/compare

The configuration is a LoRA-Gen one (``model.class_path`` = ``LoRAGenModule``). Every method gets
the same data (tasks, splits, shots, limits), trainer (step budget, precision, strategy), optimizer
group (the same AdamW + warmup/cosine schedule), evaluation group (scoring, metric, answer length)
and seed; every method that takes a ``pool`` group gets LoRA-Gen's whole pool (LoRA its rank, alpha
and targets; the MoE baselines also its expert count, top-k and balance loss), so adapters are the same
size. Groups are copied whole, so a field added to a group reaches every method. ``--set
METHOD.KEY=VALUE`` overrides one method's model argument (``lora.pool.rank=16``: one group field).
Untrained methods (``base``, ``few_shot``) are only tested. Any other option is passed to every
``loragen fit`` / ``loragen test`` (e.g. ``--trainer.max_steps 30``).

Each method runs ``loragen fit`` + ``loragen test`` in its own subprocess and directory
(``<out>/<method>/``); a finished method leaves ``method.json`` and is skipped when the command is
re-run (resumable). At the end ``comparison.md``, ``comparison.csv``, ``comparison.json`` and
``comparison.png`` (mean accuracy against latency per request) are written to ``--out``.

Methods:
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.files import atomic_write_text
from loragen.runner import COST_KEYS

LORAGEN_CLASS = "loragen.models.lora_gen_module.LoRAGenModule"
BASELINES = "loragen.models.baselines"
SHARED_ARGS = ("edge", "cloud", "optim", "eval", "pool", "seed")  # whole groups: what every method shares

# one entry per method, alike in shape by nature (a table of data, not repeated logic)
METHODS: dict[str, dict[str, Any]] = {
    "loragen": {
        "class_path": LORAGEN_CLASS,
        "init_args": {},
        "train": True,
        "help": "LoRA-Gen: generated LoRA merged into the edge, no system prompt (the config's model)",
    },
    "base": {
        "class_path": f"{BASELINES}.BaseModel",
        "init_args": {"system_prompt": False},
        "train": False,
        "help": "the edge model, user input only, no training",
    },
    "few_shot": {
        "class_path": f"{BASELINES}.BaseModel",
        "init_args": {"system_prompt": True},
        "train": False,
        "help": "the edge model reading each task's system prompt (k shots), no training",
    },
    "lora": {
        "class_path": f"{BASELINES}.LoRABaseline",
        "init_args": {"system_prompt": False},
        "train": True,
        "help": "one PEFT LoRA on the edge, trained on the mixture, no system prompt",
    },
    "lora_prompted": {
        "class_path": f"{BASELINES}.LoRABaseline",
        "init_args": {"system_prompt": True, "activation_checkpointing": True},  # long prompts: see LoRABaseline
        "train": True,
        "help": "one PEFT LoRA, trained and served with the system prompt in context",
    },
    "mixlora": {
        "class_path": f"{BASELINES}.MixLoRABaseline",
        "init_args": {},
        "train": True,
        "help": "MixLoRA-style top-k token routing over LoRA experts in each MLP + attention LoRA",
    },
    "loramoe": {
        "class_path": f"{BASELINES}.LoRAMoEBaseline",
        "init_args": {},
        "train": True,
        "help": "LoRAMoE-style dense (soft) token routing over LoRA experts in the MLP linears",
    },
    "text_to_lora": {
        "class_path": f"{BASELINES}.TextToLoRAModule",
        "train": True,
        "init_args": {"eval": {"reference": False, "zero_shot_reference": False}},
        "help": "Text-to-LoRA: a hypernetwork maps the prompt's embedding to the LoRA, merged",
    },
    "prompt_tuning": {
        "class_path": f"{BASELINES}.PromptTuningBaseline",
        "init_args": {},
        "train": True,
        "help": "PEFT prompt tuning: a learned soft prompt read before every request",
    },
}
DEFAULT_METHODS = list(METHODS)
__doc__ += "\n".join(f"  {name:<14} {spec['help']}" for name, spec in METHODS.items())
LORAGEN_ONLY_CALLBACKS = ("RouterStatistics",)


def parse_sets(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``["lora.lora_dropout=0.1", "lora.pool.rank=16"]`` →
    ``{"lora": {"lora_dropout": 0.1, "pool": {"rank": 16}}}``."""
    import yaml

    sets: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, arg = key.partition(".")
        if not sep or not dot or not arg:
            raise LoRAGenError(f"--set {item!r} is not METHOD.KEY=VALUE: e.g. lora.pool.rank=16")
        if method not in methods:
            raise LoRAGenError(f"--set {item!r} names method {method!r}, which is not compared: use one of {methods}")
        node = sets.setdefault(method, {})
        *parents, leaf = arg.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return sets


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied (a group override changes only the fields it names)."""
    merged = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def method_config(base: dict[str, Any], method: str, overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The base (LoRA-Gen) config turned into ``method``'s config, outputs moved into ``run_dir``: the
    shared arguments and groups the method takes are copied whole, then the method's own settings and
    the ``--set`` overrides are applied; everything is validated before anything runs."""
    from loragen.models.edge_method import check_method_args, load_class, method_arguments
    from loragen.sweep import point_config

    spec = METHODS[method]
    config = point_config(base, {}, run_dir)
    loragen_args = dict((config.get("model") or {}).get("init_args") or {})
    if method == "loragen":
        # its references are the base / few_shot rows of the comparison: not computed twice
        init_args = _merge(loragen_args, {"eval": {"reference": False, "zero_shot_reference": False}})
        init_args = _merge(init_args, overrides)
    else:
        takes = method_arguments(load_class(spec["class_path"]))
        init_args = {k: loragen_args[k] for k in SHARED_ARGS if k in loragen_args and k in takes}
        init_args = _merge(_merge(init_args, spec["init_args"]), overrides)
        callbacks = config["trainer"].get("callbacks") or []
        config["trainer"]["callbacks"] = [
            c
            for c in callbacks
            if not (
                isinstance(c, dict) and any(c.get("class_path", "").endswith(name) for name in LORAGEN_ONLY_CALLBACKS)
            )
        ]
    try:
        check_method_args(spec["class_path"], init_args)
    except LoRAGenError as err:
        raise LoRAGenError(f"method {method}: {err}") from None
    data = config.setdefault("data", {}).setdefault("init_args", {})
    if method == "loragen":
        data["reference"] = bool(init_args["eval"].get("reference"))
    elif init_args.get("system_prompt"):  # evaluated on the edge prompts that include the system prompt
        data["reference"] = True
    config["model"] = {"class_path": spec["class_path"], "init_args": init_args}
    return config


def primary_row(results: dict[str, Any]) -> dict[str, Any]:
    return results["rows"][0]


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def summarize_method(
    method: str, results: dict[str, Any], seconds: float, cost: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The method's own row in percent, with its 95% half-widths (``None`` for results without intervals),
    and what it cost (``run_point``'s ``cost``: fit / test seconds, peak resident memory, resumed fit)."""
    cost = cost or {}
    row = primary_row(results)
    ci = row.get("ci") or {}
    ms = row.get("ms_per_request")
    return {
        "method": method,
        "setting": row["setting"],
        **{f"acc/{t}": round(100 * row["accuracy"][t], 2) for t in results["tasks"]},
        **{f"acc/{t}_ci": _pct(ci.get(t)) for t in results["tasks"]},
        "mean": round(100 * row["mean"], 2),
        "mean_ci": _pct(row.get("mean_ci")),
        "hmean": round(100 * row["hmean"], 2),
        "tokens_per_request": round(row["tokens_per_request"], 1),
        "ms_per_request": None if ms is None else round(ms, 1),
        "trainable_params": results.get("trainable_params"),
        "mergeable": results.get("mergeable"),
        "trained_steps": results.get("trained_steps"),
        "seconds": round(seconds, 1),
        **{key: cost.get(key) for key in COST_KEYS},
    }


def fit_time(row: dict[str, Any]) -> str:
    """A row's fit wall time as h:mm:ss; "-" for untrained methods, "?" for rows written before it was measured;
    a fit that continued an interrupted attempt shows that attempt's time only, so it says so."""
    if row.get("fit_seconds") is None:
        return "?" if row.get("trained_steps") else "-"
    seconds = round(row["fit_seconds"])
    text = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{text} (resumed)" if row.get("resumed") else text


def _count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "?"


ROW_CELLS: dict[str, Callable[[dict[str, Any]], str]] = {  # a method's columns after its accuracies, both tables
    "edge tokens/request": lambda row: f"{row['tokens_per_request']:.1f}",
    "ms/request": lambda row: f"{row['ms_per_request']:.1f}" if row.get("ms_per_request") is not None else "-",
    "trainable params": lambda row: _count(row.get("trainable_params")),
    "mergeable": lambda row: "yes" if row.get("mergeable") else "no",
    "trained steps": lambda row: str(row["trained_steps"]) if row.get("trained_steps") is not None else "-",
    "fit time": fit_time,
    "peak RSS (GB)": lambda row: f"{row['peak_rss_mb'] / 1024:.1f}" if row.get("peak_rss_mb") is not None else "?",
}


def row_cells(row: dict[str, Any], columns: list[str]) -> list[str]:
    return [ROW_CELLS[column](row) for column in columns]


def _resolved_config(run_dir: Path) -> dict[str, Any]:
    """The config LightningCLI saved for the latest run (defaults and command-line overrides included)."""
    import yaml

    saved = sorted((p for p in run_dir.rglob("config.yaml") if p.parent != run_dir), key=lambda p: p.stat().st_mtime)
    return yaml.safe_load((saved[-1] if saved else run_dir / "config.yaml").read_text())


def budget(config: dict[str, Any]) -> str:
    """The training budget a resolved config states: steps, batch, optimizer schedule."""
    trainer = config.get("trainer") or {}
    data = ((config.get("data") or {}).get("init_args")) or {}
    model = ((config.get("model") or {}).get("init_args")) or {}
    parts = [f"max_steps={trainer.get('max_steps', 'unset')}"]
    for key in ("max_epochs", "max_time", "accumulate_grad_batches", "limit_train_batches"):
        if trainer.get(key) not in (None, 1, -1, 1.0) or (key == "max_time" and trainer.get(key)):
            parts.append(f"{key}={trainer[key]}")
    parts.append(f"batch_size={data.get('batch_size', 'default')}")
    optim = model.get("optim") or {}
    parts.append(
        f"AdamW lr={optim.get('lr', 'default')}, warmup={optim.get('warmup_steps', 'default')} steps, "
        f"cosine to {optim.get('min_lr_ratio', 'default')}×lr"
    )
    if model.get("init_from"):
        parts.append(f"starting from {model['init_from']}")
    return ", ".join(parts)


def budget_line(budgets: dict[str, str]) -> str:
    if not budgets:
        return "No method was trained."
    if len(set(budgets.values())) == 1:
        return f"Budget (every trained method): {next(iter(budgets.values()))}; base and few_shot are not trained."
    return "Budgets differ: " + "; ".join(f"{m}: {b}" for m, b in budgets.items())


def row_tasks(rows: list[dict[str, Any]]) -> list[str]:
    """Every task of any row, in first-seen order."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return [k.removeprefix("acc/") for k in keys if k.startswith("acc/") and not k.endswith("_ci")]


def group_mean(row: dict[str, Any], tasks: list[str]) -> tuple[float | None, float | None]:
    """A row's unweighted mean over ``tasks`` (percent) and its 95% half-width from the tasks' own (independent
    task means, as ``loragen.eval.study.accuracy``); no mean when a task is missing, no half-width when a task
    has none (older results)."""
    from loragen.eval.intervals import Z95, mean_half_width

    values = [row.get(f"acc/{t}") for t in tasks]
    if not values or any(v is None for v in values):
        return None, None
    cis = [row.get(f"acc/{t}_ci") for t in tasks]
    ci = None if any(c is None for c in cis) else mean_half_width([c / Z95 for c in cis])  # type: ignore[operator]
    return sum(values) / len(values), ci  # type: ignore[arg-type]


def flipped(d: dict[str, Any]) -> dict[str, float]:
    """A ``method − LoRA-Gen`` cell as ``LoRA-Gen − method`` (the reading's and the README's direction)."""
    return {"diff": -d["diff"], "low": -d["high"], "high": -d["low"]}


def _tasks(n: int) -> str:
    return f"{n} task" + ("" if n == 1 else "s")


def summary_lines(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Per method: its mean on the unseen and on the seen tasks, LoRA-Gen − method on each (paired by item, 95%
    interval; none without a LoRA-Gen run), edge tokens, parameters, mergeability and cost: the compact form of
    the per-task table. A difference over fewer tasks than the group (a method that skipped some) says so."""
    from loragen.eval.intervals import PAIRED_NOTE
    from loragen.eval.results import span, with_ci
    from loragen.eval.study import BOOTSTRAP, SEED
    from loragen.report import markdown_table

    differences, groups = meta.get("differences") or [], meta.get("groups") or {}
    names = [g for g in ("unseen", "seen") if g in groups.values()]
    if not names:
        return []
    members = {g: [t for t, which in groups.items() if which == g] for g in names}
    cells = {(d["method"], d["group"]): d for d in differences}

    def difference(method: str, group: str) -> str:
        if method == "loragen":
            return ""
        cell = cells.get((method, group))
        if cell is None:
            return "-"
        partial = f" ({_tasks(cell['tasks'])})" if cell["tasks"] != len(members[group]) else ""
        return span(flipped(cell)) + partial

    after = [c for c in ROW_CELLS if c != "trained steps"]
    header = [
        "method",
        *(f"{g} ({_tasks(len(members[g]))})" for g in names),
        *(f"LoRA-Gen − method, {g}" for g in names if differences),
        *after,
    ]
    body = [
        [
            row["setting"],
            *(with_ci(*group_mean(row, members[g])) for g in names),
            *(difference(row["method"], g) for g in names if differences),
            *row_cells(row, after),
        ]
        for row in rows
    ]
    title = "By task group (means: unweighted over tasks, percent ±95%" + (
        "; paired differences to LoRA-Gen: points, 95% interval):" if differences else "):"
    )
    return [
        "",
        title,
        "",
        *markdown_table(header, body),
        *(["", PAIRED_NOTE.format(bootstrap=BOOTSTRAP, seed=SEED) + "."] if differences else []),
    ]


def reading_lines(differences: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The paired differences read in words, per task group: the methods LoRA-Gen is ahead of, level with and
    behind, each with LoRA-Gen − method and its interval. A 95% interval that excludes 0 decides; the rest are
    level. ``labels``: method → its name in the table."""
    from loragen.eval.results import direction, span

    if not differences:
        return []
    title = "Read in words (LoRA-Gen − method, points; ahead or behind only where the 95% interval excludes 0):"
    lines = ["", title, ""]
    said_as = {"ahead": "ahead of", "level": "level with", "behind": "behind"}
    for group in ("unseen", "seen", "all"):
        cells = [d for d in differences if d["group"] == group]
        if not cells:
            continue
        verdicts: dict[str, list[str]] = {which: [] for which in said_as}
        for d in sorted(cells, key=lambda d: d["diff"]):  # largest LoRA-Gen lead first
            lead = flipped(d)
            verdicts[direction(lead)].append(f"{labels.get(d['method'], d['method'])} ({span(lead)})")
        said = [f"{said_as[which]} {'; '.join(names)}." for which, names in verdicts.items() if names]
        counts = {(d["tasks"], d["n"]) for d in cells}  # one count when every method scored the same items
        scope = f" ({_tasks(cells[0]['tasks'])}, {cells[0]['n']} items)" if len(counts) == 1 else ""
        lines.append(f"- {group} tasks{scope}: LoRA-Gen is " + " It is ".join(said))
    return lines


def write_comparison(rows: list[dict[str, Any]], out: Path, budget: str, meta: dict[str, Any]) -> list[Path]:
    from loragen.eval.intervals import NOTE
    from loragen.eval.results import with_ci
    from loragen.report import markdown_table, pyplot, save_figure, write_csv

    tasks = [f"acc/{t}" for t in row_tasks(rows)]
    columns = [
        "method",
        *[c for t in tasks for c in (t, f"{t}_ci")],
        "mean",
        "mean_ci",
        "hmean",
        "tokens_per_request",
        "ms_per_request",
        "trainable_params",
        "mergeable",
        "trained_steps",
        "seconds",
        *COST_KEYS,
    ]
    write_csv(out / "comparison.csv", columns, rows)
    header = [
        "method",
        *[t.removeprefix("acc/") for t in tasks],
        "mean",
        "hmean",
        *ROW_CELLS,
    ]
    lines = markdown_table(
        header,
        (
            [
                row["setting"],
                *[with_ci(row.get(t), row.get(f"{t}_ci")) for t in tasks],
                with_ci(row["mean"], row.get("mean_ci")),
                f"{row['hmean']:.1f}",
                *row_cells(row, list(ROW_CELLS)),
            ]
            for row in rows
        ),
    )
    lines += [
        "",
        budget,
        f"Items per method: {meta.get('items')} · accuracy by {meta.get('scoring')}"
        + (f", {meta['metric']}" if meta.get("metric") else "")
        + " (percent)",
        NOTE + ".",
    ]
    lines += summary_lines(rows, meta)
    lines += reading_lines(meta.get("differences") or [], {row["method"]: row["setting"] for row in rows})
    atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "comparison.json", json.dumps({"budget": budget, **meta, "rows": rows}, indent=2))
    paths = [out / "comparison.md", out / "comparison.csv", out / "comparison.json"]
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for row in (r for r in rows if r.get("ms_per_request") is not None):
        marker = "o" if row.get("mergeable") else "s"
        ax.errorbar(row["ms_per_request"], row["mean"], yerr=row.get("mean_ci"), fmt=marker, ms=6, capsize=3)
        ax.annotate(
            row["method"], (row["ms_per_request"], row["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    ax.set_xlabel("latency per request (ms)")
    ax.set_ylabel("mean accuracy (%), 95% interval")
    ax.set_title("accuracy vs. latency (circle: mergeable, square: not)", fontsize=9)
    ax.grid(alpha=0.3)
    paths.append(save_figure(fig, out / "comparison.png"))
    return paths


def compare(
    config: str,
    methods: list[str],
    out: str,
    sets: dict[str, dict[str, Any]] | None = None,
    extra: list[str] | None = None,
) -> list[dict[str, Any]]:

    from loragen.runner import Plan, read_base, run_plans

    base = read_base(config)
    class_path = ((base.get("model") or {}).get("class_path")) or ""
    if class_path != LORAGEN_CLASS:
        raise LoRAGenError(
            f"{config}: model.class_path is {class_path or 'missing'}; loragen compare starts from a "
            f"LoRA-Gen config ({LORAGEN_CLASS}), e.g. configs/quickstart.yaml"
        )
    out_dir = Path(out)
    plans = []
    for method in methods:  # validate everything before anything starts
        run_dir = out_dir / method
        resolved = method_config(base, method, (sets or {}).get(method, {}), run_dir)
        plans.append(Plan(method, run_dir, resolved, list(extra or []), fit=METHODS[method]["train"]))

    def record(plan: Plan, outcome: dict[str, Any]) -> dict[str, Any]:
        return {
            "method": plan.name,
            "row": summarize_method(plan.name, outcome["results"], outcome["seconds"], outcome.get("cost")),
        }

    records, failed = run_plans(plans, "method.json", record, keep_going=True)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    budgets: dict[str, str] = {}
    for plan in plans:
        if plan.name not in records:
            continue
        done = records[plan.name]
        rows.append(done["row"])
        if plan.fit:
            budgets[plan.name] = budget(_resolved_config(plan.run_dir))
        meta = {key: done["results"].get(key) for key in ("items", "scoring", "metric", "tasks")}
    if rows:
        from loragen.eval.study import differences_to, task_groups

        unseen = list(((base.get("data") or {}).get("init_args") or {}).get("unseen") or [])
        runs = {plan.name: plan.run_dir for plan in plans if plan.name in records}
        meta["differences"] = differences_to(runs, "loragen", unseen) if "loragen" in runs else []
        meta["groups"] = task_groups(row_tasks(rows), unseen)
        paths = write_comparison(rows, out_dir, budget_line(budgets), meta)
        print((out_dir / "comparison.md").read_text())
        print("wrote " + ", ".join(str(p) for p in paths))
    if failed:
        raise LoRAGenError(
            f"{len(failed)} method(s) failed: " + "; ".join(failed) + " (the table holds the others; "
            "re-run the same command to retry only those)"
        )
    return rows


def main(argv: list[str]) -> None:
    from loragen.runner import parse_runner, runner_parser

    parser = runner_parser("loragen compare", __doc__, "runs/compare")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods, in table order (default: all: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override one method's model argument, e.g. lora.pool.rank=16 (repeatable)",
    )
    args = parse_runner(parser, argv)
    try:
        model_options = [a for a in args.fit_args if a.startswith("--model.")]
        if model_options:
            raise LoRAGenError(
                f"{model_options[0]} would reach every method's model: use --set METHOD.KEY=VALUE "
                "(e.g. --set loragen.pool.num_experts=4), or change the config"
            )
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise LoRAGenError(f"unknown method(s) {unknown}: choose from {list(METHODS)}")
        compare(args.base, methods, args.out, parse_sets(args.set, methods), args.fit_args)
    except LoRAGenError as err:
        print(f"loragen compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

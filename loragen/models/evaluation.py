"""Grading, per-item outcomes and results files shared by LoRA-Gen and every baseline.

An evaluated *setting* is one way of running the edge model on the same items (e.g. LoRA-Gen
merged without the system prompt, the plain edge model with it). Multiple-choice items are graded
by option log-likelihood as lm-evaluation-harness grades them -- ``acc`` (highest summed
log-likelihood) and ``acc_norm`` (divided by the option's length in characters) -- with many items
per forward pass; others by generation and the task's answer extraction. Every item's outcome is
kept (``loragen.eval.outcomes.ItemOutcomes``, gathered across DDP ranks and deduplicated), so
tables carry 95% intervals and paired differences. Latency per request is measured honestly on a
fixed sample: the first ``LATENCY_ITEMS_PER_TASK`` items of each task are answered one at a time.

At the end of a test epoch ``results.json`` / ``results.md`` and ``items.jsonl`` (one line per item
and setting: chosen option, label, correctness, source) are written into the run directory, the table
is printed and logged to W&B.

A LightningModule using it (``loragen.models.edge_method.EdgeMethod``) sets ``SETTINGS`` (key -> label,
the first being its own method), holds its ``eval`` group as ``self.evaluation``, calls
``_init_evaluation()`` in ``__init__`` and provides ``scoring_model()`` (the causal LM as it
currently is), ``edge_tokenizer()``, ``result_info()`` (extra fields for ``results.json``) and
``_evaluate(batch, stage)``; ``eval_settings()`` / ``paired_settings()`` say which rows are computed.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from loragen import LoRAGenError
from loragen.contracts import evaluation_data
from loragen.eval.scoring import score_requests

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

    from loragen.models.config import EvalConfig

LATENCY_ITEMS_PER_TASK = 8


class EvaluationMixin:
    """Per-item grading (option log-likelihood or generation + answer extraction) and results."""

    SETTINGS: dict[str, str] = {}
    prefix_tokens = 0  # learned virtual tokens the edge reads before every prompt (prompt tuning)

    if TYPE_CHECKING:  # provided by the LightningModule using the mixin (see the module docstring)
        trainer: Any
        _trainer: Any
        device: torch.device
        loggers: Any
        log: Any
        evaluation: EvalConfig

        def _evaluate(self, batch: dict[str, Any], stage: str) -> None: ...

    def _init_evaluation(self) -> None:
        from torchmetrics import MaxMetric

        self.best_val_acc = MaxMetric()
        self.outcomes = nn.ModuleDict()  # stage -> setting -> ItemOutcomes, built in setup()
        self.eval_tasks: list[str] = []
        self.last_results: dict[str, Any] | None = None

    # ------------------------------------------------------------------ hooks for subclasses

    def scoring_model(self) -> Any:
        raise NotImplementedError

    def edge_tokenizer(self) -> Any:
        raise NotImplementedError

    def result_info(self) -> dict[str, Any]:
        return {}

    def prefix_embeds(self) -> torch.Tensor | None:
        """Input embeddings placed before every prompt (None: none)."""
        return None

    def eval_settings(self) -> list[str]:
        """The settings (keys of ``SETTINGS``) this module evaluates, its own first."""
        return list(self.SETTINGS)

    def paired_settings(self) -> list[tuple[str, str]]:
        """Pairs (a, b) whose difference a - b on the same items is reported with a paired interval."""
        return []

    def setup(self, stage: str) -> None:
        """The outcome metrics, built once from the DataModule's task list (the same on every rank)."""
        from torchmetrics import MetricCollection

        from loragen.eval.outcomes import ItemOutcomes

        data = evaluation_data(self._trainer)
        self.eval_tasks = list(data.tasks) if data is not None else []
        for name in ("val", "test"):
            self.outcomes[name] = MetricCollection(
                {s: ItemOutcomes() for s in self.eval_settings()}, compute_groups=False
            ).to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ------------------------------------------------------------------ grading

    def _generate_text(self, prompt: list[int]) -> str:
        model, tok = self.scoring_model(), self.edge_tokenizer()
        ids = torch.tensor([prompt], device=self.device)
        prefix = self.prefix_embeds()
        common = {
            "do_sample": False,
            "max_new_tokens": self.evaluation.max_new_tokens,
            "pad_token_id": tok.pad_token_id,
        }
        if prefix is None:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **common)
            return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        embeds = torch.cat([prefix, model.get_input_embeddings()(ids)], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, **common)  # returns new tokens only
        return tok.decode(out[0], skip_special_tokens=True)

    def _judge(self, text: str, record: Any) -> bool | None:
        """Grade a generated answer as the DataModule's tasks grade it (``judge``), else by exact match."""
        data = evaluation_data(self._trainer)
        if data is not None:
            return data.judge(text, record)
        from loragen.eval.extraction import exact_match

        return exact_match(text, record.output)

    def _verdicts(self, batch: dict[str, Any], prompt_key: str, items: list[int]) -> dict[int, tuple[int, ...]]:
        """(pred, pred_norm, acc, acc_norm, unparseable) per item; multiple-choice items of ``items`` are
        scored together (one batched pass over all their options)."""
        requests_key = "ref_requests" if prompt_key == "ref_prompt" else "requests"
        loglik = self.evaluation.scoring == "loglik"
        choice = [i for i in items if loglik and batch[requests_key][i]]
        flat = [r for i in choice for r in batch[requests_key][i]]
        scores = iter(score_requests(self.scoring_model(), flat, prefix_embeds=self.prefix_embeds()))
        out: dict[int, tuple[int, ...]] = {}
        for i in choice:
            lls = np.array([next(scores) for _ in batch[requests_key][i]])
            chars = np.array(batch["option_chars"][i], dtype=float)
            pred, pred_norm, label = int(np.argmax(lls)), int(np.argmax(lls / chars)), int(batch["label"][i])
            out[i] = (pred, pred_norm, int(pred == label), int(pred_norm == label), 0)
        for i in items:
            if i not in out:
                verdict = self._judge(self._generate_text(batch[prompt_key][i]), batch["records"][i])
                correct = int(verdict is True)
                out[i] = (-1, -1, correct, correct, int(verdict is None))
        return out

    def _grade_items(
        self, stage: str, setting: str, batch: dict[str, Any], prompt_key: str, items: Any, extra_tokens: int = 0
    ) -> None:
        """Answer each item with the edge model as it currently is and record its outcome. Items of the
        latency sample are answered one at a time and timed; the rest together."""
        if prompt_key not in batch:
            raise LoRAGenError(
                f"evaluation batches carry no {prompt_key!r}: set data.init_args.reference true "
                "(it prepares the edge prompts that include the system prompt)"
            )
        items = list(items)
        timed = [i for i in items if batch["task_pos"][i] < LATENCY_ITEMS_PER_TASK]
        if timed and not getattr(self, "_warmed_up", False):  # the first call of a process pays one-off costs:
            self._verdicts(batch, prompt_key, timed[:1])  # not in any setting's latency
            self._warmed_up = True
        verdicts, ms = {}, {}
        for i in timed:
            start = time.perf_counter()
            verdicts.update(self._verdicts(batch, prompt_key, [i]))
            ms[i] = 1000 * (time.perf_counter() - start)
        verdicts.update(self._verdicts(batch, prompt_key, [i for i in items if i not in ms]))
        tasks = self._task_indices(batch["task"], items)
        columns = list(zip(*(verdicts[i] for i in items), strict=True))
        cast("MetricCollection", self.outcomes[stage])[setting].update(
            uid=[batch["uid"][i] for i in items],
            task=tasks,
            label=[int(batch["label"][i]) for i in items],
            pred=columns[0],
            pred_norm=columns[1],
            acc=columns[2],
            acc_norm=columns[3],
            unparseable=columns[4],
            tokens=[len(batch[prompt_key][i]) + extra_tokens for i in items],
            ms=[ms.get(i, float("nan")) for i in items],
        )

    def _task_indices(self, names: list[str], items: list[int]) -> list[int]:
        missing = sorted({names[i] for i in items} - set(self.eval_tasks))
        if missing:
            raise LoRAGenError(
                f"evaluation items of task(s) {missing} that the DataModule does not list: "
                "evaluate through a DataModule whose val/test records name their tasks"
            )
        return [self.eval_tasks.index(names[i]) for i in items]

    # ------------------------------------------------------------------ epoch ends and results

    def on_validation_epoch_end(self) -> None:
        results = self._collect("val")
        if results and not self.trainer.sanity_checking:  # the sanity pass is not a validation result
            mean = torch.tensor(results["rows"][0]["mean"])
            self.best_val_acc.update(mean)
            self.log("val/acc_mean_best", self.best_val_acc.compute())

    def on_test_epoch_end(self) -> None:
        directory = self.trainer.log_dir or self.trainer.default_root_dir  # a collective: every rank asks
        results = self._collect("test")
        if results is None or self.trainer.sanity_checking:
            return
        self.last_results = results
        if self.trainer.is_global_zero:
            from loragen.eval.results import results_markdown, write_results
            from loragen.files import atomic_write_text

            json_path, md_path = write_results(results, directory)
            atomic_write_text(md_path.with_name("items.jsonl"), self._items_jsonl("test"))
            print("\n" + results_markdown(results) + f"\n\nResults written to {json_path} and {md_path}\n")
            for logger in self.loggers:
                if hasattr(logger, "log_table"):
                    header = [
                        "setting",
                        *results["tasks"],
                        "mean",
                        "mean_ci",
                        "hmean",
                        "tokens_per_request",
                        "ms_per_request",
                    ]
                    data = [
                        [
                            r["setting"],
                            *[r["accuracy"][t] for t in results["tasks"]],
                            r["mean"],
                            r["mean_ci"],
                            r["hmean"],
                            r["tokens_per_request"],
                            r["ms_per_request"],
                        ]
                        for r in results["rows"]
                    ]
                    logger.log_table(key="test/results", columns=header, data=data)

    def _headlines(self, tasks: list[str]) -> dict[str, str]:
        """Each task's headline metric as lm-evaluation-harness reports it (``eval.metric: harness``); tasks
        the registry does not know keep ``acc_norm``."""
        from loragen.data.tasks.registry import get_task

        data = evaluation_data(self._trainer)
        extra = data.extra_specs if data is not None else None
        out = {}
        for task in tasks:
            try:
                out[task] = get_task(task, extra).headline
            except LoRAGenError:
                out[task] = "acc_norm"
        return out

    def _collect(self, stage: str) -> dict[str, Any] | None:
        from loragen.eval.results import build_results

        if stage not in self.outcomes:
            return None
        outcomes = {}
        for setting in self.eval_settings():
            item_outcomes = cast("MetricCollection", self.outcomes[stage])[setting]
            if item_outcomes.update_called:
                outcomes[setting] = item_outcomes.compute()
            item_outcomes.reset()
        if not outcomes:
            return None
        present = sorted({int(t) for values in outcomes.values() for t in values["task"]})
        tasks = [self.eval_tasks[t] for t in present]  # tasks of this stage (the DataModule lists val and test)
        for values in outcomes.values():
            values["task"] = np.searchsorted(present, values["task"])
        self._last_outcomes = outcomes
        metric = self.evaluation.metric if self.evaluation.scoring == "loglik" else "acc"
        labels = {s: self.SETTINGS[s] for s in outcomes}
        results = build_results(
            outcomes,
            labels,
            tasks,
            metric,
            paired=self.paired_settings(),
            task_metrics=self._headlines(tasks) if metric == "harness" else None,
        )
        results["stage"] = stage
        results["scoring"] = (
            "generation + answer extraction"
            if self.evaluation.scoring == "generate"
            else "option log-likelihood (lm-evaluation-harness formulation)"
        )
        results["latency"] = f"ms/request: the first {LATENCY_ITEMS_PER_TASK} items of each task, one at a time"
        results.update(self.result_info())
        for row in results["rows"]:
            suffix = "" if row["key"] == results["rows"][0]["key"] else f"_{row['key']}"
            for t in results["tasks"]:
                self.log(f"{stage}/acc{suffix}/{t}", row["accuracy"][t])
            self.log(f"{stage}/acc_mean{suffix}", row["mean"], prog_bar=not suffix)
            self.log(f"{stage}/acc_hmean{suffix}", row["hmean"])
            self.log(f"{stage}/tokens_per_request{suffix}", row["tokens_per_request"])
        return results

    def _items_jsonl(self, stage: str) -> str:
        """One line per (setting, item): what was chosen, what was right, and where the item came from."""
        data = evaluation_data(self._trainer)
        examples = data.examples.get(stage, []) if data is not None else []
        results = self.last_results
        assert results is not None  # ``on_test_epoch_end`` sets it before it writes the items
        lines = []
        for setting, values in self._last_outcomes.items():
            for k in range(len(values["uid"])):
                uid = int(values["uid"][k])
                record = examples[uid]["record"] if uid < len(examples) else None
                lines.append(
                    json.dumps(
                        {
                            "setting": setting,
                            "uid": uid,
                            "task": results["tasks"][int(values["task"][k])],
                            "source": record.meta.get("source") if record is not None else None,
                            **{
                                f: int(values[f][k])
                                for f in ("label", "pred", "pred_norm", "acc", "acc_norm", "unparseable", "tokens")
                            },
                        }
                    )
                )
        return "\n".join(lines) + "\n"


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

"""Scoring, tallies and results files shared by LoRA-Gen and every baseline.

An evaluated *setting* is one way of running the edge model on the same items (e.g. LoRA-Gen
merged without the system prompt, the plain edge model with it). For each setting and task the
mixin tallies correct answers, unparseable generations, prompt tokens and wall time per item in
torchmetrics ``SumMetric``s (so DDP ranks reduce), and at the end of a test epoch writes
``results.json`` / ``results.md`` into the run directory, prints the table and logs it to W&B.

A LightningModule using it sets ``SETTINGS`` (key → label, the first being its own method), calls
``_init_evaluation()`` in ``__init__`` and provides ``scoring_model()`` (the causal LM as it
currently is), ``edge_tokenizer()``, ``result_info()`` (extra fields for ``results.json``) and
``_evaluate(batch, stage)``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from loragen import LoRAGenError
from loragen.models.scoring import score_options


class EvaluationMixin:
    """Per-item grading (option log-likelihood or generation + answer extraction) and results."""

    SETTINGS: dict[str, str] = {}
    prefix_tokens = 0  # learned virtual tokens the edge reads before every prompt (prompt tuning)

    def _init_evaluation(self) -> None:
        from torchmetrics import MaxMetric, SumMetric

        self._sum_metric = SumMetric
        self.eval_sums = nn.ModuleDict()
        self.best_val_acc = MaxMetric()
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

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ------------------------------------------------------------------ grading

    def _add(self, stage: str, setting: str, task: str, quantity: str, value: float) -> None:
        key = f"{stage}|{setting}|{task}|{quantity}"
        if key not in self.eval_sums:
            self.eval_sums[key] = self._sum_metric().to(self.device)
        self.eval_sums[key].update(torch.tensor(float(value), device=self.device))

    def _score(self, prompt: list[int], options: list[list[int]]) -> int:
        scores = score_options(self.scoring_model(), prompt, options, self.hparams.length_normalize,
                               prefix_embeds=self.prefix_embeds())
        return int(scores.argmax())

    def _generate_text(self, prompt: list[int]) -> str:
        model, tok = self.scoring_model(), self.edge_tokenizer()
        ids = torch.tensor([prompt], device=self.device)
        prefix = self.prefix_embeds()
        common = {"do_sample": False, "max_new_tokens": self.hparams.max_new_tokens, "pad_token_id": tok.pad_token_id}
        if prefix is None:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **common)
            return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        embeds = torch.cat([prefix, model.get_input_embeddings()(ids)], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, **common)  # returns new tokens only
        return tok.decode(out[0], skip_special_tokens=True)

    def _judge(self, text: str, record: Any) -> bool | None:
        """Grade a generated answer: the task's extractor if the task is registered, else exact match."""
        spec = None
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        extra = getattr(datamodule, "extra_specs", None)
        try:
            from loragen.data.tasks.registry import get_task

            spec = get_task(record.task, extra)
        except LoRAGenError:
            spec = None
        if spec is not None:
            return spec.is_correct(text, record)
        answer = " ".join(text.split()).lower()
        return (answer == " ".join(record.output.split()).lower()) if answer else None

    def _answer(self, batch: dict[str, Any], prompt_key: str, i: int) -> int:
        """1 = correct, 0 = wrong, -1 = unparseable generation (wrong, and counted)."""
        options = batch["options"][i] if "options" in batch else []
        if options and self.hparams.scoring == "loglik":
            return int(self._score(batch[prompt_key][i], options) == int(batch["label"][i]))
        verdict = self._judge(self._generate_text(batch[prompt_key][i]), batch["records"][i])
        return -1 if verdict is None else int(verdict)

    def _grade_items(self, stage: str, setting: str, batch: dict[str, Any], prompt_key: str, items: Any,
                     extra_tokens: int = 0) -> None:
        """Answer each item with the edge model as it currently is; tally correctness, tokens and time."""
        if prompt_key not in batch:
            raise LoRAGenError(f"evaluation batches carry no {prompt_key!r}: set data.init_args.reference true "
                               "(it prepares the edge prompts that include the system prompt)")
        for i in items:
            start = time.perf_counter()
            verdict = self._answer(batch, prompt_key, i)
            task = batch["task"][i]
            self._add(stage, setting, task, "ms", 1000 * (time.perf_counter() - start))
            self._add(stage, setting, task, "correct", float(verdict == 1))
            self._add(stage, setting, task, "unparseable", float(verdict == -1))
            self._add(stage, setting, task, "count", 1.0)
            self._add(stage, setting, task, "tokens", float(len(batch[prompt_key][i]) + extra_tokens))

    # ------------------------------------------------------------------ epoch ends and results

    def on_validation_epoch_end(self) -> None:
        results = self._collect("val")
        if results and not self.trainer.sanity_checking:  # the sanity pass is not a validation result
            mean = torch.tensor(results["rows"][0]["mean"])
            self.best_val_acc.update(mean)
            self.log("val/acc_mean_best", self.best_val_acc.compute())

    def on_test_epoch_end(self) -> None:
        results = self._collect("test")
        if results is None or self.trainer.sanity_checking:
            return
        self.last_results = results
        if self.trainer.is_global_zero:
            from loragen.metrics.results import results_markdown, write_results

            directory = self.trainer.log_dir or self.trainer.default_root_dir
            json_path, md_path = write_results(results, directory)
            print("\n" + results_markdown(results) + f"\n\nResults written to {json_path} and {md_path}\n")
            for logger in self.loggers:
                if hasattr(logger, "log_table"):
                    header = ["setting", *results["tasks"], "mean", "hmean", "tokens_per_request", "ms_per_request"]
                    data = [[r["setting"], *[r["accuracy"][t] for t in results["tasks"]], r["mean"], r["hmean"],
                             r["tokens_per_request"], r["ms_per_request"]] for r in results["rows"]]
                    logger.log_table(key="test/results", columns=header, data=data)

    def _collect(self, stage: str) -> dict[str, Any] | None:
        from loragen.metrics.results import summarize

        values: dict[tuple[str, str, str], float] = {}
        for key in list(self.eval_sums.keys()):
            st, setting, task, quantity = key.split("|")
            if st != stage:
                continue
            values[(setting, task, quantity)] = float(self.eval_sums[key].compute())
            self.eval_sums[key].reset()
        if not values:
            return None
        tasks = sorted({t for (_, t, _) in values})
        settings = [s for s in self.SETTINGS if any(k[0] == s for k in values)]
        rows = []
        for setting in settings:
            def get(task: str, quantity: str, setting: str = setting) -> float:
                return values.get((setting, task, quantity), 0.0)

            accuracy = {t: get(t, "correct") / max(get(t, "count"), 1.0) for t in tasks}
            count = sum(get(t, "count") for t in tasks)
            row = {"setting": self.SETTINGS[setting], "key": setting, "accuracy": accuracy, **summarize(accuracy),
                   "tokens_per_request": sum(get(t, "tokens") for t in tasks) / max(count, 1.0),
                   "ms_per_request": sum(get(t, "ms") for t in tasks) / max(count, 1.0),
                   "unparseable": int(sum(get(t, "unparseable") for t in tasks))}
            rows.append(row)
            suffix = "" if setting == settings[0] else f"_{setting}"
            for t in tasks:
                self.log(f"{stage}/acc{suffix}/{t}", accuracy[t])
            self.log(f"{stage}/acc_mean{suffix}", row["mean"], prog_bar=not suffix)
            self.log(f"{stage}/acc_hmean{suffix}", row["hmean"])
            self.log(f"{stage}/tokens_per_request{suffix}", row["tokens_per_request"])
        results = {"stage": stage, "tasks": tasks, "rows": rows,
                   "items": int(sum(values.get((settings[0], t, "count"), 0.0) for t in tasks)),
                   "scoring": ("generation + answer extraction" if self.hparams.scoring == "generate" else
                               "option log-likelihood"
                               + (" (length-normalised)" if self.hparams.length_normalize else "")),
                   **self.result_info()}
        by_key = {r["key"]: r for r in rows}
        primary = rows[0]
        if "prompted" in by_key and primary["key"] != "prompted" and primary["tokens_per_request"]:
            results["compression_ratio"] = by_key["prompted"]["tokens_per_request"] / primary["tokens_per_request"]
        return results


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

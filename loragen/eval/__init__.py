"""Evaluation: how an answer is scored, graded and reported, used by every method, the CLI and the scripts.

- ``scoring``: option log-likelihoods (lm-evaluation-harness's requests) and answer losses / logits;
- ``extraction``: answers read from generated text (numbers, letters, yes/no, option texts) and matching;
- ``tool_use``: GPT4Tools' ReAct grading;
- ``outcomes``: per-item outcomes gathered across processes (a torchmetrics ``Metric``);
- ``intervals``: standard errors, 95% intervals and the paired bootstrap;
- ``results``: per-task summaries, ``results.json`` / ``results.md``;
- ``study``: sweep points and compared methods paired item by item (``study.md``, compare's differences).

A task's formulation (how its prompt and options are written) is the task spec's (``loragen.data.tasks``); the
evaluation epoch of a LightningModule is ``loragen.models.evaluation.EvaluationMixin``.
"""

#!/usr/bin/env bash
# The quickstart: train LoRA-Gen on the bundled SmolLM2-135M-Instruct (cloud = edge) with the shipped
# multi-task set, then test it against the same edge model given the full system prompt.
# Outputs: runs/quickstart/ (checkpoints/, results.json, results.md, W&B offline run under wandb/).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
loragen fit --config configs/quickstart.yaml "$@"
loragen test --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt --verbose false "$@"

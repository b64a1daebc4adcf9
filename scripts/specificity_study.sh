#!/usr/bin/env bash
# The specificity study (docs/training.md, "Specificity study"): every point of configs/studies/specificity.yaml trained
# STEPS steps from scratch on the suite (seed 0, the same budget for each), then tested on the suite's dev-unseen
# tasks and eight seen tasks (80 items each) with the prompt-sensitivity rows; `base` also scores the prompted
# and zero-shot edge, which study.md pairs with every point by item.
# Resumable: re-running skips finished points and continues an interrupted one from its last checkpoint
# (every 100 steps).
#   bash scripts/specificity_study.sh PATH_TO_DATA [STEPS] [OUT]     (PATH_TO_DATA: the layout of docs/data.md)
set -euo pipefail
DATA=${1:?usage: bash scripts/specificity_study.sh PATH_TO_DATA [STEPS] [OUT]}
STEPS=${2:-300}
OUT=${3:-runs/specificity}
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
mkdir -p "$OUT"
loragen sweep --base configs/suite/train.yaml --points configs/studies/specificity.yaml --out "$OUT" \
  --data.init_args.data_dir "$DATA" --trainer.max_steps "$STEPS" --data.init_args.limit_per_task 80

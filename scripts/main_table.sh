#!/usr/bin/env bash
# The main comparison (docs/baselines.md, "The main table"): every method of `loragen compare` trained STEPS
# steps on the many-task suite from configs/suite/train.yaml (seed 0; the same data, budget, optimizer and
# evaluation for each), then tested on the suite's dev-unseen tasks (never trained on) and eight seen tasks,
# 200 items per task, LoRA-Gen and Text-to-LoRA with their prompt-sensitivity rows. Writes comparison.md / .csv /
# .json / .png and each method's paired difference to LoRA-Gen on unseen, seen and all tasks.
# OUT (default results/main_table) is tracked, checkpoints and logs aside (its .gitignore), so a fresh clone
# re-renders the table. Resumable: re-running skips finished methods and continues an interrupted fit from its
# last checkpoint (every 100 steps; on the same machine, since checkpoints are not tracked).
#   bash scripts/main_table.sh PATH_TO_DATA [STEPS] [OUT]     (PATH_TO_DATA: the layout of docs/data.md)
set -euo pipefail
DATA=${1:?usage: bash scripts/main_table.sh PATH_TO_DATA [STEPS] [OUT]}
STEPS=${2:-500}
OUT=${3:-results/main_table}
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
mkdir -p "$OUT"
loragen compare --base configs/suite/train.yaml --out "$OUT" \
  --data.init_args.data_dir "$DATA" --trainer.max_steps "$STEPS" --data.init_args.limit_per_task 200

#!/usr/bin/env bash
# The released generator's results card (docs/releases.md), configs/studies/release_card.yaml as a sweep over
# configs/suite/train.yaml: the release tested as it is on the suite's 15 dev-unseen tasks (never trained on) and
# eight seen tasks (test splits), 200 items each, with its prompt-sensitivity rows (another task's, a task-free
# prompt's, the held-out paraphrase's LoRA) and the reference rows (the edge reading the prompt, the bare edge),
# beside the multi-task LoRA and Text-to-LoRA trained on the release's data for the same STEPS (the main comparison
# at the release's budget, docs/baselines.md). study.md pairs them item by item.
# It tests the exported suite release (scripts/train_release.sh); the release of commit ca93c5f was trained on five
# commonsense tasks (its card: docs/releases.md). Resumable: re-running skips finished points and continues a
# baseline's training from its last checkpoint.
#   bash scripts/release_card.sh PATH_TO_DATA [STEPS] [OUT]     (PATH_TO_DATA: the layout of docs/data.md)
set -euo pipefail
DATA=${1:?usage: bash scripts/release_card.sh PATH_TO_DATA [STEPS] [OUT]}
STEPS=${2:-1500}
OUT=${3:-runs/release-card}
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
mkdir -p "$OUT"
loragen sweep --base configs/suite/train.yaml --points configs/studies/release_card.yaml --out "$OUT" \
  --data.init_args.data_dir "$DATA" --trainer.max_steps "$STEPS"

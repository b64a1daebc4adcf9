#!/usr/bin/env bash
# Train the released generator for the bundled pair (docs/releases.md) and export it into the package as
# bundled:smollm2-135m-lora-gen: configs/suite/train.yaml with configs/suite/release.yaml on top (the specificity
# study's recipe, trained on `suite_no_nc`: the many-task suite without non-commercial data), checkpointed every
# 100 steps and resumable across sessions (re-run the same command). The release it replaces is kept as
# bundled:smollm2-135m-lora-gen-vN (`loragen release --keep_previous`).
# No validation during training: the results card is measured afterwards with scripts/release_card.sh.
#   bash scripts/train_release.sh PATH_TO_DATA [STEPS]     (PATH_TO_DATA: the layout of docs/data.md)
set -euo pipefail
DATA=${1:?usage: bash scripts/train_release.sh PATH_TO_DATA [STEPS]}
STEPS=${2:-1500}
ROOT=${RELEASE_RUN:-runs/release-suite}
NAME=smollm2-135m-lora-gen
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
resume=()
if [ -f "$ROOT/checkpoints/last.ckpt" ]; then
  echo "train_release: resuming $ROOT/checkpoints/last.ckpt"
  resume=(--ckpt_path "$ROOT/checkpoints/last.ckpt")
fi
mkdir -p "$ROOT"
timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -v -o "$ROOT/time-$(date +%Y%m%d-%H%M%S).log")  # wall time, peak memory
"${timer[@]}" loragen fit --config configs/suite/train.yaml --config configs/suite/release.yaml \
  --data.init_args.data_dir "$DATA" --trainer.default_root_dir "$ROOT" --trainer.max_steps "$STEPS" \
  --trainer.logger.init_args.name release "${resume[@]}"
loragen release --ckpt_path "$ROOT/checkpoints/last.ckpt" --out "loragen/releases/$NAME" --name "$NAME" \
  --command "bash scripts/train_release.sh DATA $STEPS" --results "docs/releases.md" --keep_previous

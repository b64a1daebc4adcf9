#!/usr/bin/env bash
# Train the released generator for the bundled pair (docs/releases.md) and export it into the
# package as bundled:smollm2-135m-lora-gen: the recipe of configs/commonsense/seen.yaml on the seen
# commonsense tasks, checkpointed every 100 steps and resumable across sessions (re-run the same command).
# No validation during training (it would only monitor, at the cost of the prompted/zero-shot references
# every 500 steps): the results card is measured after training with scripts/release_card.sh.
#   bash scripts/train_release.sh PATH_TO_DATA [STEPS]     (PATH_TO_DATA: the layout of docs/data.md)
set -euo pipefail
DATA=${1:?usage: bash scripts/train_release.sh PATH_TO_DATA [STEPS]}
STEPS=${2:-1500}
ROOT=${RELEASE_RUN:-runs/release}
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
"${timer[@]}" loragen fit --config configs/commonsense/seen.yaml --data.init_args.data_dir "$DATA" \
  --trainer.default_root_dir "$ROOT" --trainer.max_steps "$STEPS" --trainer.limit_val_batches 0 "${resume[@]}"
loragen release --ckpt_path "$ROOT/checkpoints/last.ckpt" --out "loragen/releases/$NAME" --name "$NAME" \
  --command "bash scripts/train_release.sh DATA $STEPS" \
  --licence "ARC-Easy, ARC-Challenge (CC BY-SA 4.0), BoolQ (CC BY-SA 3.0), OpenBookQA (research use), via LLM-Adapters (ODC-By 1.0)" \
  --licence "Social IQa (CC BY 4.0)" --results "docs/releases.md"

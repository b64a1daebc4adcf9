#!/usr/bin/env bash
# The released generator's results card (docs/releases.md): `loragen test` of a generator on
#   seen   - the five training tasks' test splits (ARC-Challenge, ARC-Easy, OpenBookQA, BoolQ, SIQA), with
#            the prompts it was trained with;
#   unseen - PIQA and WinoGrande items never trained on and never used to pick the recipe: a second
#            holdout carved from their train files, disjoint from the recipe study's dev split
#            (data.holdout_skip 100 = the study's `holdout: 100`, same files and seed).
# Each run reports LoRA-Gen against the prompted and zero-shot edge and the prompt-sensitivity rows
# (another task's LoRA, a task-free prompt's LoRA), with 95% intervals and paired differences.
#   bash scripts/release_card.sh PATH_TO_DATA [CKPT] [ITEMS_PER_TASK] [OUT]
# CKPT defaults to the shipped release (bundled:smollm2-135m-lora-gen); re-running skips finished runs.
# ONLY=seen or ONLY=unseen runs one part (e.g. both at once, each with OMP_NUM_THREADS=1, on 2 cores).
set -euo pipefail
DATA=${1:?usage: bash scripts/release_card.sh PATH_TO_DATA [CKPT] [ITEMS_PER_TASK] [OUT]}
CKPT=${2:-bundled:smollm2-135m-lora-gen}
ITEMS=${3:-200}
OUT=${4:-runs/release-card}
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate

card() {  # NAME, then the test's extra arguments
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return; fi
  if [ -f "$OUT/$name/results.md" ]; then echo "release_card: $name done before, skipped"; return; fi
  loragen test --config configs/commonsense/seen.yaml --data.init_args.data_dir "$DATA" --ckpt_path "$CKPT" \
    --model.init_args.eval.reference true --model.init_args.eval.zero_shot_reference true --model.init_args.eval.sensitivity true \
    --data.init_args.reference true --trainer.default_root_dir "$OUT/$name" --trainer.logger false \
    --verbose false "$@"   # no logger: results.json / results.md / items.jsonl land in $OUT/$name
}

card seen --data.init_args.limit_per_task "$ITEMS"
card unseen --data.init_args.test_tasks "[piqa:holdout, winogrande:holdout]" \
  --data.init_args.holdout "$ITEMS" --data.init_args.holdout_skip 100 \
  --data.init_args.files "{winogrande: {train: winogrande/train_s.jsonl}}"

if [ -f "$OUT/seen/results.md" ] && [ -f "$OUT/unseen/results.md" ]; then
  for name in seen unseen; do echo; echo "## $name tasks"; echo; cat "$OUT/$name/results.md"; done | tee "$OUT/card.md"
fi

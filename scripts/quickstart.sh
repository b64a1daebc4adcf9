#!/usr/bin/env bash
# The quickstart, in two parts, under 10 minutes on 2 CPU cores:
# 1. the released generator (bundled:smollm2-135m-lora-gen, trained on the many-task suite) tested as it is on the
#    shipped test items: its own prompt's LoRA against another task's and a task-free prompt's, and against the
#    same edge reading the full system prompt. Outputs: runs/quickstart/release/ (results.json, results.md).
# 2. a generator of your own: LoRA-Gen trained 60 steps on the bundled SmolLM2-135M-Instruct (cloud = edge) with
#    the shipped multi-task set, then tested the same way. Outputs: runs/quickstart/ (checkpoints/, results.json,
#    results.md, W&B offline run under wandb/).
# Extra arguments go to every command (e.g. --trainer.default_root_dir DIR moves all outputs).
# Run again, it skips part 1 if its results exist, resumes the earlier fit (which ends at once if that run
# finished) and tests its checkpoint; delete the run directory to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
ROOT=runs/quickstart
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --trainer.default_root_dir=*) ROOT="${args[i]#*=}" ;;
    --trainer.default_root_dir) ROOT="${args[i + 1]:-$ROOT}" ;;
  esac
done
RELEASE=bundled:smollm2-135m-lora-gen
if [ -f "$ROOT/release/results.json" ]; then
  echo "quickstart: part 1 (the release) already tested: $ROOT/release/results.md"
else
  echo "quickstart: part 1, $RELEASE tested as it is on the shipped test items"
  loragen test --config configs/quickstart.yaml "$@" --ckpt_path "$RELEASE" \
    --trainer.default_root_dir "$ROOT/release" --verbose false
fi
CKPT="$ROOT/checkpoints/last.ckpt"
resume=()
if [ -f "$CKPT" ]; then
  echo "quickstart: part 2, $ROOT holds an earlier run: resuming it from $CKPT (delete $ROOT to start over)"
  resume=(--ckpt_path "$CKPT")
else
  echo "quickstart: part 2, a new run in $ROOT"
fi
loragen fit --config configs/quickstart.yaml "${resume[@]}" "$@"
loragen test --config configs/quickstart.yaml --ckpt_path "$CKPT" --verbose false "$@"

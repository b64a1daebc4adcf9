#!/usr/bin/env bash
# The quickstart: train LoRA-Gen on the bundled SmolLM2-135M-Instruct (cloud = edge) with the shipped
# multi-task set, then test it against the same edge model given the full system prompt.
# Outputs: runs/quickstart/ (checkpoints/, results.json, results.md, W&B offline run under wandb/);
# extra arguments go to both commands (e.g. --trainer.default_root_dir DIR moves all of them).
# Run again, it resumes the earlier run (which ends at once if that run finished) and tests its
# checkpoint; delete the run directory to start over.
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
CKPT="$ROOT/checkpoints/last.ckpt"
resume=()
if [ -f "$CKPT" ]; then
  echo "quickstart: $ROOT holds an earlier run: resuming it from $CKPT (delete $ROOT to start over)"
  resume=(--ckpt_path "$CKPT")
else
  echo "quickstart: new run in $ROOT"
fi
loragen fit --config configs/quickstart.yaml "${resume[@]}" "$@"
loragen test --config configs/quickstart.yaml --ckpt_path "$CKPT" --verbose false "$@"

#!/usr/bin/env bash
# The recipe study on the bundled pair (docs/training.md, "Recipe study"): every point of
# configs/studies/recipe.yaml trained 100 steps on the seen tasks and tested on the dev split
# carved from the unseen tasks' train files, then the prompted and zero-shot edge on the same items.
# Resumable: re-running skips finished points and continues an interrupted one from its checkpoint.
#   bash scripts/recipe_study.sh PATH_TO_DATA [OUT]     (PATH_TO_DATA: the layout of docs/data.md)
set -euo pipefail
DATA=${1:?usage: bash scripts/recipe_study.sh PATH_TO_DATA [OUT]}
OUT=${2:-runs/study}
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate

# the `alpaca` point starts from 50 Alpaca instruction steps (then 50 seen-task steps: same budget)
PRE="$OUT/alpaca-pretrain"
if [ ! -f "$PRE/done" ]; then
  resume=(); [ -f "$PRE/checkpoints/last.ckpt" ] && resume=(--ckpt_path "$PRE/checkpoints/last.ckpt")
  loragen fit --config configs/pretrain/alpaca.yaml --data.init_args.data_dir "$DATA" \
    --trainer.max_steps 50 --model.init_args.optim.warmup_steps 10 --trainer.default_root_dir "$PRE" \
    --trainer.logger false --trainer.callbacks "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, \
init_args: {dirpath: $PRE/checkpoints, save_last: true, save_top_k: 0}}]" "${resume[@]}"
  touch "$PRE/done"
fi
sed "s#runs/study/alpaca-pretrain#$PRE#" configs/studies/recipe.yaml > "$OUT/points.yaml"

loragen sweep --base configs/commonsense/study.yaml --points "$OUT/points.yaml" --out "$OUT" \
  --data.init_args.data_dir "$DATA"

# the references on the same dev items (they do not depend on the point), with the base point's rows
if ! find "$OUT/references" -name results.json 2>/dev/null | grep -q .; then
  loragen test --config configs/commonsense/study.yaml --data.init_args.data_dir "$DATA" \
    --ckpt_path "$OUT/base/checkpoints/last.ckpt" --model.init_args.eval.reference true --data.init_args.reference true \
    --model.init_args.eval.zero_shot_reference true --trainer.default_root_dir "$OUT/references" \
    --trainer.logger.init_args.save_dir "$OUT/references" --verbose false
fi

# the prompt-sensitivity rows (own vs. another task's vs. a task-free prompt's LoRA) of the best point
BEST=$(python -c "import csv,sys; rows=list(csv.DictReader(open(sys.argv[1]))); \
print(max(rows, key=lambda r: float(r['acc_mean']))['point'])" "$OUT/sweep.csv")
if ! find "$OUT/sensitivity-$BEST" -name results.json 2>/dev/null | grep -q .; then
  loragen test --config "$OUT/$BEST/config.yaml" --data.init_args.data_dir "$DATA" --ckpt_path "$OUT/$BEST/checkpoints/last.ckpt" \
    --model.init_args.eval.sensitivity true --trainer.default_root_dir "$OUT/sensitivity-$BEST" \
    --trainer.logger.init_args.save_dir "$OUT/sensitivity-$BEST" --verbose false
fi
echo "best point: $BEST"

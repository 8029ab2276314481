#!/usr/bin/env bash
# One GPU check, under 8 minutes on an H100: the contract suite natively on CUDA at full sizes,
# then the scan benchmark (do_bench, cold L2), a CUDA-graph timing, the launch count and the
# device-to-device copy bandwidth in the same run. Results go to ${OUT:-bench/results/gpu}.
#   bash bench/gpu_check.sh            # on the lent machine, from the repo root
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
timeout 200 python3 -m pytest -q -x tests/test_junction_scan.py tests/test_cpp_backend.py -p no:cacheprovider \
  2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
# the Triton internals natively (the merge's last-program ticket and the selection's reductions on
# real hardware); each forced plan is a compile, so this gets its own budget
timeout 100 python3 -m pytest -q tests/test_triton_internals.py -p no:cacheprovider 2>&1 | tee "$out/internals.log"
internals_rc=${PIPESTATUS[0]}
timeout 180 python3 bench/gpu_check.py --out "$out" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc internals rc=$internals_rc bench rc=$bench_rc" | tee "$out/status.txt"
[ "$tests_rc" = 0 ] && [ "$internals_rc" = 0 ] && [ "$bench_rc" = 0 ]

#!/usr/bin/env bash
# Compile-only check of the CUDA junction scan for sm_80 and sm_90 (CI calls this; no GPU needed).
# Usage: csrc/cuda/compile_check.sh  (NVCC=/path/to/nvcc to pick a compiler). Exits non-zero on failure.
# Prints ptxas's resource use per kernel and arch (-Xptxas -v): registers (<= 128 keeps >= 2 CTAs
# of 256 threads per SM), spill bytes (should be 0), static shared memory. Spills are reported as a
# WARNING line, not a failure: their amount depends on the nvcc version.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "compile_check: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cmd=("$nvcc" -std=c++17 -O3 -Werror all-warnings -Xptxas -v
     -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90
     -c "$here/junction_scan.cu" -o "$out/junction_scan.o")
echo "compile_check: $("$nvcc" --version | tail -1)"
echo "compile_check: ${cmd[*]}"
if ! "${cmd[@]}" 2>"$out/ptxas.log"; then
  cat "$out/ptxas.log" >&2
  exit 1
fi
# Kernel names: demangled when c++filt is there, namespaces and arguments dropped.
demangle() { if command -v c++filt >/dev/null 2>&1; then c++filt; else cat; fi; }
demangle <"$out/ptxas.log" | awk '
  /Compiling entry function/ {
    name = $0; sub(/.*Compiling entry function .?/, "", name); sub(/. for .sm_[0-9]+.*/, "", name)
    arch = $0; sub(/.* for .sm_/, "", arch); sub(/[^0-9].*/, "", arch)
    gsub(/\(anonymous namespace\)::/, "", name); sub(/^void /, "", name); sub(/\(.*/, "", name)
    gsub(/[A-Za-z_]+::/, "", name)
  }
  /bytes spill stores/ { st = $5; ld = $9 }
  /Used [0-9]+ registers/ {
    regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
    smem = 0; if ($0 ~ /bytes smem/) { smem = $0; sub(/ bytes smem.*/, "", smem); sub(/.*, /, "", smem) }
    if (!hdr++) printf "compile_check: %-6s %-30s %5s %12s %11s %10s\n", "arch", "kernel", "regs", "spill_stores", "spill_loads", "smem_bytes"
    printf "compile_check: sm_%-3s %-30s %5s %12s %11s %10s\n", arch, name, regs, st, ld, smem
    if (st + ld > 0) spills = spills " sm_" arch ":" name
  }
  END { if (spills != "") print "compile_check: WARNING: register spills in" spills; else print "compile_check: no spills" }'
echo "compile_check: OK (sm_80, sm_90): $(wc -c < "$out/junction_scan.o") bytes of object code"

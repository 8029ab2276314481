"""bench/sass_budget.py at one configuration (CI), so the compiled-code budget cannot rot.

Compiles both scan kernels for sm_90 with Triton's own ptxas (no GPU needed) and checks the
CSV format and sane values; the speed figures themselves are reported, not asserted.
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("arch,dtype,B,k,V,kernel,regs,spill_bytes,vectorized,instr_per_elem,issue_bound_us,"
           "hbm_floor_us").split(",")


def test_one_configuration_csv():
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "bench/sass_budget.py", "--arch", "90", "--B", "64", "--k", "10", "--dtype", "bf16",
         "--V", "151646", "--csv"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines[0] == ",".join(COLUMNS)
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert [r["kernel"] for r in rows] == ["partials", "merge", "total"]
    for r in rows:
        assert (r["arch"], r["dtype"], r["B"], r["k"], r["V"]) == ("90", "bf16", "64", "10", "151646")
        assert 0 < int(r["regs"]) <= 255
        assert int(r["spill_bytes"]) == 0, f"{r['kernel']} spills"
        assert float(r["instr_per_elem"]) > 0 and float(r["issue_bound_us"]) > 0
        assert float(r["hbm_floor_us"]) == pytest.approx(64 * 151646 * 2 / 3.35e12 * 1e6, rel=1e-3)
    part, merge, total = rows
    assert part["vectorized"] == "True", "V = 151,646 (not a multiple of 8) must still get 16-byte loads"
    assert float(part["instr_per_elem"]) < 40  # the streaming loop: a few instructions per element
    assert float(total["issue_bound_us"]) == pytest.approx(
        float(part["issue_bound_us"]) + float(merge["issue_bound_us"]), rel=1e-3, abs=2e-3)


@pytest.mark.parametrize("args,name", [(["--B", "0"], "--B"), (["--logit-std", "0"], "--logit-std")])
def test_bad_arguments(args, name):
    proc = subprocess.run([sys.executable, "bench/sass_budget.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and name in proc.stderr

"""Torch ops for the framework-free kernels in ``csrc/`` (docs/design.md §2), as the ``cpp`` and
``cuda`` backends of ``sia_kernels.junction_scan``.

The libraries come from ``setup.py`` (``pip install --no-build-isolation -e .`` builds
``python_bindings/_C_cpu*.so`` and, where torch has CUDA, ``_C_cuda*.so``) or, when those are
missing or older than their sources, from ``torch.utils.cpp_extension.load`` at first use, which
says once on stderr that it is building and builds into this environment's own directory
(``build_directory()``: ``python_bindings/_build`` when writable, else under ``sys.prefix``;
``SIA_BUILD_DIR`` overrides), never into a cache shared by other checkouts or environments.
Getting ``junction_scan_cpp`` / ``junction_scan_cuda`` builds and loads the library; a failed build
raises ImportError with the compiler's reason, which ``sia_kernels.ops`` reports as an unavailable
backend (an error when the backend was requested).

Module import stays light (no torch, no build) so ``setup.py`` can read the build settings.
"""
from __future__ import annotations

import glob
import os
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CPU_SOURCES = [str(HERE / "cpu_ops.cpp"), str(ROOT / "csrc" / "cpu" / "junction_scan.cpp")]
CPU_DEPS = CPU_SOURCES + [str(ROOT / "csrc" / "cpu" / "junction_scan.h"), str(HERE / "scan_outputs.h")]
# -O3 and OpenMP; -ffp-contract=fast lets the AVX2+FMA clone fuse multiply-adds (the ISO -std
# mode torch uses turns it off). No -march=native: the kernel carries its own x86-64-v3 clone,
# chosen at load time, so one build runs on any x86-64.
CPU_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
CPU_LDFLAGS = ["-fopenmp"]

CUDA_SOURCES = [str(HERE / "cuda_ops.cpp"), str(ROOT / "csrc" / "cuda" / "junction_scan.cu")]
CUDA_DEPS = CUDA_SOURCES + [str(ROOT / "csrc" / "cuda" / "junction_scan.cuh"), str(HERE / "scan_outputs.h")]
CUDA_CFLAGS = ["-O3"]
CUDA_NVCC_FLAGS = ["-O3", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "cpu" / "cuda" -> True, or the exception that stopped it


def _prebuilt(stem: str, deps: list[str]) -> str | None:
    """The library setup.py built in place, if it is newer than every source it came from."""
    for path in sorted(glob.glob(str(HERE / f"{stem}*.so"))):
        if all(os.path.getmtime(path) >= os.path.getmtime(d) for d in deps if os.path.exists(d)):
            return path
    return None


def prebuilt_library(kind: str = "cpu") -> str | None:
    """Path of the library the install built for ``kind`` ("cpu" or "cuda") if it is up to date
    with its sources (then it is loaded without a build), else None."""
    if kind not in _BUILDS:
        raise ValueError(f"kind must be one of {sorted(_BUILDS)}, got {kind!r}")
    stem, deps, _ = _BUILDS[kind]
    return _prebuilt(stem, deps)


def build_directory(kind: str = "cpu") -> Path:
    """Where a first-use build of ``kind`` goes: ``$SIA_BUILD_DIR/<kind>``, else
    ``python_bindings/_build/<kind>`` when the package directory is writable, else
    ``<sys.prefix>/share/sia_kernels/build/<kind>``: one per environment and checkout."""
    if kind not in _BUILDS:
        raise ValueError(f"kind must be one of {sorted(_BUILDS)}, got {kind!r}")
    if os.environ.get("SIA_BUILD_DIR"):
        return Path(os.environ["SIA_BUILD_DIR"]) / kind
    if os.access(HERE, os.W_OK):
        return HERE / "_build" / kind
    return Path(sys.prefix) / "share" / "sia_kernels" / "build" / kind


# kind -> (setup.py's library stem, the files it depends on, torch.utils.cpp_extension.load arguments)
_BUILDS = {
    "cpu": ("_C_cpu", CPU_DEPS, dict(name="sia_kernels_cpu", sources=CPU_SOURCES, extra_cflags=CPU_CFLAGS,
                                     extra_ldflags=CPU_LDFLAGS)),
    "cuda": ("_C_cuda", CUDA_DEPS, dict(name="sia_kernels_cuda", sources=CUDA_SOURCES, extra_cflags=CUDA_CFLAGS,
                                        extra_cuda_cflags=CUDA_NVCC_FLAGS)),
}


def _build_and_load(kind: str) -> None:
    import torch
    from torch.utils import cpp_extension

    if kind == "cuda" and torch.version.cuda is None:
        raise ImportError("torch was built without CUDA, so the cuda backend is not built")
    stem, deps, build = _BUILDS[kind]
    path = _prebuilt(stem, deps)
    if path is not None:
        torch.ops.load_library(path)
        return
    directory = build_directory(kind)
    directory.mkdir(parents=True, exist_ok=True)
    built = directory / f"{build['name']}.so"
    if not built.exists() or any(os.path.getmtime(built) < os.path.getmtime(d) for d in deps if os.path.exists(d)):
        print(f"sia_kernels: building the {kind} op in {directory} (first use, about 30 s; "
              "`pip install --no-build-isolation -e .` builds it at install)", file=sys.stderr, flush=True)
    cpp_extension.load(**build, build_directory=str(directory), is_python_module=False,
                       verbose=os.environ.get("SIA_BUILD_VERBOSE") == "1")


def _ensure(kind: str) -> None:
    """Build/load once per process; a failure is remembered and raised again as ImportError."""
    with _lock:
        state = _loaded.get(kind)
        if state is None:
            try:
                _build_and_load(kind)
                state = True
            except ImportError as e:
                state = e
            except Exception as e:  # compiler errors come as RuntimeError / CalledProcessError
                state = ImportError(f"building the sia_kernels {kind} op failed: {type(e).__name__}: {e}")
                state.__cause__ = e
            _loaded[kind] = state
    if state is not True:
        raise state


def _seed(generator, device):
    """One 62-bit seed from ``generator`` (or torch's default one), as a [1] i64 tensor on
    ``device``: the kernels' Philox noise is keyed by (seed, row, token)."""
    import torch

    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device, generator=generator)


def cpu_omp_threads(n: int = 0) -> int:
    """Threads an OpenMP region of the CPU op gets when asked for ``n`` (0: the default)."""
    import torch

    _ensure("cpu")
    return int(torch.ops.sia_kernels.cpu_omp_threads(n))


def _junction_scan_cpp(logits, *, k, tau, temperature, entropy_scope, sample_from, generator=None,
                       min_work_per_thread=0):
    """``cpp`` backend. ``logits`` [B, V] f32/bf16/f16 on the CPU, unit-stride rows (any row
    stride); ``tau``, ``temperature`` contiguous [B] f32 (temperature 0 = greedy row). Inputs are
    validated by ``sia_kernels.ops``. Runs on up to ``torch.get_num_threads()`` threads, and on one
    unless B * V reaches the measured crossover (``min_work_per_thread`` logits per thread; 0: the
    kernel's ``kMinWorkPerThread``; bench/bench_threads.py passes 1 to time a forced split).
    Results do not depend on the thread count. Returns a ``JunctionScan`` at full size B."""
    import torch

    from sia_kernels.types import JunctionScan

    seed = int(_seed(generator, logits.device).item())  # free on the CPU
    out = torch.ops.sia_kernels.junction_scan_cpu(
        logits, k, tau, temperature, entropy_scope == "topk", sample_from == "topk", seed, torch.get_num_threads(),
        int(min_work_per_thread),
    )
    return JunctionScan(*out)


def _junction_scan_cuda(logits, *, k, tau, temperature, entropy_scope, sample_from, generator=None):
    """``cuda`` backend: same contract as ``junction_scan_cpp`` for CUDA tensors, on the current
    stream, with no host sync (the seed stays on the device)."""
    import torch

    from sia_kernels.types import JunctionScan

    seed = _seed(generator, logits.device)
    out = torch.ops.sia_kernels.junction_scan_cuda(
        logits, k, tau, temperature, entropy_scope == "topk", sample_from == "topk", seed
    )
    return JunctionScan(*out)


def __getattr__(name: str):
    # Reaching for a backend builds (or loads) it, so an unavailable one fails at dispatch time.
    if name == "junction_scan_cpp":
        _ensure("cpu")
        return _junction_scan_cpp
    if name == "junction_scan_cuda":
        _ensure("cuda")
        return _junction_scan_cuda
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

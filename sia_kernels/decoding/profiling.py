"""Phase timing, NVTX ranges for Nsight Systems, and torch.profiler traces.

Every decode phase (``base_forward``, ``scan``, ``value``, ``steer``) runs inside
``phase(name, times)``: it adds the phase's host wall time to ``times[name]`` and, when NVTX is
enabled (``--nvtx``, :func:`set_nvtx` or ``SIA_NVTX=1``) and CUDA is available, wraps it in an
NVTX range; while a torch.profiler trace is recording it also labels it with ``record_function``.

Host wall time on CUDA: kernels are asynchronous, so a phase's device time is charged to the
phase that next waits on the device (the scan's read of ``num_junctions`` waits for the base
forward). :func:`set_sync_timing` synchronises at each phase boundary for exact per-phase times
(slower; for profiling runs only).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

__all__ = ["phase", "set_nvtx", "set_sync_timing", "nvtx_enabled", "profile_trace", "PHASES"]

PHASES = ("base_forward", "scan", "value", "steer")
_state = {"nvtx": os.environ.get("SIA_NVTX") == "1", "sync": False, "record": False}


def set_nvtx(enabled: bool) -> bool:
    """Turn NVTX ranges on or off; returns whether they are on (False without CUDA)."""
    _state["nvtx"] = bool(enabled)
    return nvtx_enabled()


def nvtx_enabled() -> bool:
    return _state["nvtx"] and torch.cuda.is_available()


def set_sync_timing(enabled: bool) -> None:
    """Synchronise CUDA at each phase boundary so that per-phase times are exact."""
    _state["sync"] = bool(enabled)


def _sync() -> None:
    if _state["sync"] and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class phase:
    """Time (and mark) one decode phase; ``times[name]`` accumulates seconds.

    A context manager run several times per decode step: a plain class (no generator), and with
    NVTX, sync timing and tracing off it only reads the clock."""

    __slots__ = ("name", "times", "_t0", "_marks")

    def __init__(self, name: str, times: dict | None = None):
        self.name, self.times = name, times

    def __enter__(self):
        marked = _state["nvtx"] or _state["sync"] or _state["record"]
        self._marks = self._enter_marks() if marked else None
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self._marks is not None:
            self._exit_marks(*exc)
        if self.times is not None:
            self.times[self.name] = self.times.get(self.name, 0.0) + time.perf_counter() - self._t0
        return False

    def _enter_marks(self) -> tuple:
        nvtx = nvtx_enabled()
        record = torch.profiler.record_function(f"sia::{self.name}") if _state["record"] else None
        _sync()
        if nvtx:
            torch.cuda.nvtx.range_push(f"sia::{self.name}")
        if record is not None:
            record.__enter__()
        return nvtx, record

    def _exit_marks(self, *exc) -> None:
        nvtx, record = self._marks
        if record is not None:
            record.__exit__(*exc)
        _sync()
        if nvtx:
            torch.cuda.nvtx.range_pop()


@contextlib.contextmanager
def profile_trace(directory: str | os.PathLike | None):
    """Record a torch.profiler trace of the block into ``directory/trace.json`` (None: no-op)."""
    if directory is None:
        yield None
        return
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _state["record"] = True
    try:
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            yield prof
    finally:
        _state["record"] = False
    prof.export_chrome_trace(str(out / "trace.json"))

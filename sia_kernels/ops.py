"""Public ops and the single backend dispatch point (docs/design.md §2).

Backends share one signature (validated inputs, ``B >= 1``, unit-stride rows)::

    scan(logits [B, V], k, tau [B] f32, temperature [B] f32 (0 = greedy row),
         entropy_scope, sample_from, generator) -> JunctionScan
"""
from __future__ import annotations

import importlib
import math
import os
import warnings
from typing import Callable

import torch

from . import reference
from .types import JunctionScan, empty_scan

BACKENDS = ("reference", "triton", "cpp", "cuda")
SCOPES = ("full", "topk")
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_warned: set[str] = set()


# ---------------------------------------------------------------- backends

def _triton_scan() -> Callable:
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        raise RuntimeError("triton needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
    return importlib.import_module("sia_kernels.kernels.junction_scan").junction_scan_triton


def _cpp_scan() -> Callable:
    return importlib.import_module("python_bindings").junction_scan_cpp


def _cuda_scan() -> Callable:
    return importlib.import_module("python_bindings").junction_scan_cuda


def _reference_scan() -> Callable:
    return reference.junction_scan_ref


_LOADERS = {"reference": _reference_scan, "triton": _triton_scan, "cpp": _cpp_scan, "cuda": _cuda_scan}
_DEVICE_OF = {"triton": None, "cpp": "cpu", "cuda": "cuda", "reference": None}


def _load(name: str, device: torch.device) -> Callable:
    """Return backend ``name``'s scan for tensors on ``device``, or raise RuntimeError why not."""
    need = _DEVICE_OF[name]
    if need is not None and device.type != need:
        raise RuntimeError(f"backend {name!r} runs on {need} tensors, got {device.type}")
    if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton runs CPU tensors only under TRITON_INTERPRET=1")
    try:
        return _LOADERS[name]()
    except (ImportError, OSError, AttributeError) as e:  # a missing build or toolchain
        raise RuntimeError(f"backend {name!r} is unavailable: {e}") from e


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Names of the backends that can run tensors on ``device`` here."""
    out = []
    for name in BACKENDS:
        try:
            _load(name, torch.device(device))
            out.append(name)
        except RuntimeError:
            pass
    return out


def resolve_backend(backend: str | None, device: torch.device) -> tuple[str, Callable]:
    """The one dispatch point: explicit ``backend`` (or ``SIA_BACKEND``) raises when it cannot
    run; the automatic choice (triton on CUDA, cpp on CPU) falls back with one warning."""
    backend = backend or os.environ.get("SIA_BACKEND") or None
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        return backend, _load(backend, device)
    preferred = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
    for name in preferred:
        try:
            return name, _load(name, device)
        except RuntimeError as e:
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"sia_kernels: {e}; falling back", RuntimeWarning, stacklevel=3)
    return "reference", _load("reference", device)


# ---------------------------------------------------------------- validation

def _per_row(x, name: str, b: int, device: torch.device, *, allow_inf: bool, nonneg: bool = False) -> torch.Tensor:
    """A float, a 0-d or a ``[B]`` tensor (any stride, expanded too) as a contiguous ``[B]`` float32
    tensor on ``device``: the one form every backend takes. Python numbers are checked here
    (no sync); tensor values by ``_check_user_tensors`` (one host read)."""
    if isinstance(x, torch.Tensor):
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but logits are on {device}")
        if x.dim() == 0:
            x = x.expand(b)
        if x.shape != (b,):
            raise ValueError(f"{name} must be a float or a [B] = [{b}] tensor, got shape {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float tensor, got {x.dtype}")
        return x.to(torch.float32).contiguous()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a float or a [B] tensor, got {type(x).__name__}")
    if math.isnan(x) or (not allow_inf and math.isinf(x)) or (nonneg and x < 0):
        raise ValueError(f"{name} must be {'finite and >= 0' if nonneg else 'a number'}, got {x}")
    return torch.full((b,), float(x), dtype=torch.float32, device=device)


def _check_user_tensors(tau: torch.Tensor | None = None, temperature: torch.Tensor | None = None) -> None:
    """NaN tau / negative or non-finite temperature in user tensors: one small host read.

    Pass only what the user gave as a tensor; Python numbers were checked without a sync."""
    named = [
        (tau, lambda t: t.isnan().any(), "tau contains NaN; use +inf (never steer) or -inf (always steer)"),
        (temperature, lambda t: ((t < 0) | ~t.isfinite()).any(), "temperature must be finite and >= 0 in every row"),
    ]
    named = [(check(t), msg) for t, check, msg in named if t is not None]
    if not named:
        return
    for bad, (_, msg) in zip(torch.stack([c for c, _ in named]).tolist(), named):
        if bad:
            raise ValueError(msg)


def check_rows(lse: torch.Tensor) -> None:
    """Bad rows show in the ``[B]`` lse (NaN, or +-inf): one small host read, no extra pass."""
    bad = ~torch.isfinite(lse)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        row, v = rows[0], lse[rows[0]].item()
        what = "contains NaN" if math.isnan(v) else ("contains +inf" if v > 0 else "has no finite logit")
        more = f" (and {len(rows) - 1} more rows: {rows[1:9]})" if len(rows) > 1 else ""
        raise ValueError(f"logits row {row} {what}{more}")


def _check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but logits are on {device}")


# ---------------------------------------------------------------- public ops

def junction_scan(
    logits: torch.Tensor,
    *,
    k: int,
    tau,
    temperature=1.0,
    entropy_scope: str = "topk",
    sample_from: str = "topk",
    greedy: bool = False,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> JunctionScan:
    """One read of ``logits [B, V]`` (f32, bf16 or f16; any row stride) gives entropy, lse, the
    gate ``H > tau``, the sorted top-``k`` candidates, the base token and the compacted
    junction batch (docs/design.md §2).

    ``tau``, ``temperature``: a float, a 0-d or a ``[B]`` tensor (any stride). Entropy and
    log-probs are of the untempered distribution; ``temperature`` only affects sampling (0 or
    ``greedy=True``: argmax; a positive T so small that T * Gumbel is below half an ulp of the
    logits is argmax too). ``sample_from``: ``"topk"`` (Gumbel-max among the candidates) or
    ``"full"``. Rows with NaN, +inf or no finite logit raise ValueError naming the row; the check
    reads the ``[B]`` lse back (one small host sync); ``num_junctions`` stays on the device.
    """
    return _scan(logits, k, tau, temperature, entropy_scope, sample_from, greedy, generator, backend,
                 host_checks=True)


def junction_scan_nosync(
    logits: torch.Tensor,
    *,
    k: int,
    tau,
    temperature=1.0,
    entropy_scope: str = "topk",
    sample_from: str = "topk",
    greedy: bool = False,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> JunctionScan:
    """``junction_scan`` without any host read: arguments are validated as there, but the values
    in ``tau`` / ``temperature`` tensors are not read, and bad rows are not raised. The caller
    vouches for its tensors and folds ``check_rows(out.lse)`` into its own sync (the decoder does,
    in its one read per step)."""
    return _scan(logits, k, tau, temperature, entropy_scope, sample_from, greedy, generator, backend,
                 host_checks=False)


def _scan(logits, k, tau, temperature, entropy_scope, sample_from, greedy, generator, backend,
          *, host_checks: bool) -> JunctionScan:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor (f32, bf16, f16), got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [B, V], got shape {tuple(logits.shape)}")
    b, v = logits.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= v:
        raise ValueError(f"k must be an int with 1 <= k <= V = {v}, got {k!r}")
    if entropy_scope not in SCOPES:
        raise ValueError(f"entropy_scope must be one of {SCOPES}, got {entropy_scope!r}")
    if sample_from not in SCOPES:
        raise ValueError(f"sample_from must be one of {SCOPES}, got {sample_from!r}")
    if not isinstance(greedy, bool):
        raise TypeError(f"greedy must be a bool, got {type(greedy).__name__}")
    device = logits.device
    _check_generator(generator, device)
    tau_t = _per_row(tau, "tau", b, device, allow_inf=True)
    temp_t = _per_row(temperature, "temperature", b, device, allow_inf=False, nonneg=True)
    if host_checks:
        _check_user_tensors(
            tau_t if isinstance(tau, torch.Tensor) else None,
            temp_t if isinstance(temperature, torch.Tensor) else None,
        )
    if greedy:
        temp_t = torch.zeros_like(temp_t)
    name, scan = resolve_backend(backend, device)
    if b == 0:
        out = empty_scan(0, k, device)
        out.num_junctions.zero_()
        return out
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if name != "reference" and logits.dtype not in _FAST_DTYPES:
        raise TypeError(f"backend {name!r} takes f32, bf16 or f16 logits, got {logits.dtype}")
    out = scan(
        logits,
        k=k,
        tau=tau_t,
        temperature=temp_t,
        entropy_scope=entropy_scope,
        sample_from=sample_from,
        generator=generator,
    )
    if host_checks:
        check_rows(out.lse)
    return out


def steer(
    scan: JunctionScan,
    values: torch.Tensor,
    *,
    beta: float,
    temperature=1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens ``[B]`` i64: junction rows take argmax (or a sample at ``temperature``) of
    ``logprob + beta * value`` among their ``k`` candidates; other rows keep ``base_token``.

    ``values``: ``[n, k]`` float scores of the compacted junction rows, ``n >= J``
    (``[J, k]`` or the full ``[B, k]``); rows at or past ``J`` are ignored. A NaN in a valid
    row of ``values``, ``n < J`` or a bad ``temperature`` tensor raise ValueError: one small
    host read (free on the CPU). ``steer_nosync`` skips it.
    """
    temp_t = _steer_args(scan, values, beta, temperature, greedy, generator)
    n = values.shape[0]
    valid = torch.arange(n, device=values.device) < scan.num_junctions
    nan_rows = values.isnan().any(1) & valid
    bad_temp = ((temp_t < 0) | ~temp_t.isfinite()).any()  # only a user's tensor can be bad
    # One read: J, whether a temperature is bad, and which valid value rows hold NaN.
    info = torch.cat([scan.num_junctions.long(), bad_temp.long().reshape(1), nan_rows.long()]).tolist()
    j, bad_t, nans = info[0], info[1], info[2:]
    if bad_t:
        raise ValueError("temperature must be finite and >= 0 in every row")
    if n < j:
        raise ValueError(f"values has {n} rows but the scan has {j} junctions")
    if any(nans):
        i = nans.index(1)
        raise ValueError(f"values row {i} (junction row {int(scan.junction_rows[i])} of the batch) contains NaN")
    temp_t = torch.zeros_like(temp_t) if greedy else temp_t
    return reference.steer_ref(scan, values, beta=float(beta), temperature=temp_t, generator=generator)


def steer_nosync(
    scan: JunctionScan,
    values: torch.Tensor,
    *,
    beta: float,
    temperature=1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``steer`` without a host read: the values in ``values`` and in a ``temperature`` tensor are
    not checked (a NaN value may be picked), and ``n >= J`` is checked only on the CPU. The caller
    folds ``values.isnan()`` of its junction rows into its own per-step sync."""
    temp_t = _steer_args(scan, values, beta, temperature, greedy, generator)
    if values.device.type == "cpu" and values.shape[0] < int(scan.num_junctions):
        raise ValueError(f"values has {values.shape[0]} rows but the scan has {int(scan.num_junctions)} junctions")
    temp_t = torch.zeros_like(temp_t) if greedy else temp_t
    return reference.steer_ref(scan, values, beta=float(beta), temperature=temp_t, generator=generator)


def _steer_args(scan, values, beta, temperature, greedy, generator) -> torch.Tensor:
    """Validate ``steer``'s arguments (no host read); the temperature as ``[B]`` f32 per batch row."""
    if not isinstance(scan, JunctionScan):
        raise TypeError(f"scan must be a JunctionScan, got {type(scan).__name__}")
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError("values must be a floating torch.Tensor [J, k]")
    b, k = scan.junction_ids.shape
    if values.dim() != 2 or values.shape[1] != k or values.shape[0] > b:
        raise ValueError(f"values must be [J, k] with k = {k} and J <= B = {b}, got {tuple(values.shape)}")
    if values.device != scan.base_token.device:
        raise ValueError(f"values are on {values.device} but the scan is on {scan.base_token.device}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    if not isinstance(greedy, bool):
        raise TypeError(f"greedy must be a bool, got {type(greedy).__name__}")
    _check_generator(generator, values.device)
    return _per_row(temperature, "temperature", b, values.device, allow_inf=False, nonneg=True)

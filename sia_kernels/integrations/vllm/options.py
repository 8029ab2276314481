"""A request's SIA options (``extra_args``) and the engine's ``additional_config["sia"]`` entry,
parsed and validated; ValueError on bad input (vLLM answers it with HTTP 400 at admission)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import SIAConfig

REQUEST_KEYS = ("tau", "beta", "k", "entropy_scope", "sample_from", "id")
ENGINE_KEYS = ("value_model", "dtype", "backend", "max_junction_batch", "log_every")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RequestOptions:
    """A request's validated SIA options: the SIAConfig fields it sets, and its label."""

    config: SIAConfig
    id: object = None


def _number(name: str, x) -> float:
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            raise ValueError(f"sia option {name!r} must be a number, got the string {x!r}") from None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"sia option {name!r} must be a number, got {x!r}")
    return float(x)


def _integer(name: str, x) -> int:
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"sia option {name!r} must be an integer, got {x!r}")
    return x


def request_options(sampling_params) -> RequestOptions | None:
    """The SIA options of a request (``None``: it did not opt in), validated.

    Reads ``extra_args["sia"]`` (a dict) and flat ``extra_args["sia_<key>"]``; raises ValueError
    for unknown keys, a non-dict ``"sia"`` entry, or values SIAConfig rejects.
    """
    extra = getattr(sampling_params, "extra_args", None) or {}
    if not isinstance(extra, dict):
        raise ValueError(f"extra_args must be a dict, got {type(extra).__name__}")
    nested = extra.get("sia")
    flat = {k[4:]: v for k, v in extra.items() if isinstance(k, str) and k.startswith("sia_")}
    if nested is None and not flat:
        return None
    if nested is not None and not isinstance(nested, dict):
        raise ValueError(f"extra_args['sia'] must be a dict of SIA options, got {type(nested).__name__}")
    opts = dict(nested or {})
    both = sorted(set(opts) & set(flat))
    if both:
        raise ValueError(f"sia option(s) {both} given both nested and flat (sia_<key>); give each once")
    opts.update(flat)
    unknown = sorted(set(opts) - set(REQUEST_KEYS))
    if unknown:
        raise ValueError(f"unknown sia option(s) {unknown}; known: {list(REQUEST_KEYS)}")
    label = opts.pop("id", None)
    if label is not None and not isinstance(label, (str, int)):
        raise ValueError(f"sia option 'id' must be a string or an integer, got {label!r}")
    kw = {}
    for name in ("tau", "beta"):
        if name in opts:
            kw[name] = _number(name, opts[name])
    if "k" in opts:
        kw["k"] = _integer("k", opts["k"])
    for name in ("entropy_scope", "sample_from"):
        if name in opts:
            kw[name] = opts[name]
    if "tau" in kw and math.isnan(kw["tau"]):
        raise ValueError("sia option 'tau' is NaN; use 'inf' (never steer) or '-inf' (always steer)")
    try:
        return RequestOptions(SIAConfig(**kw), label)
    except (TypeError, ValueError) as e:  # vLLM answers HTTP 400 for ValueError only
        raise ValueError(f"invalid sia options: {e}") from None


@dataclass(frozen=True)
class EngineSettings:
    """The engine-wide ``additional_config["sia"]`` entry, validated."""

    value_model: str | None = None
    dtype: str = "auto"
    backend: str | None = None
    max_junction_batch: int = 64
    log_every: int = 1000


def engine_settings(additional_config) -> EngineSettings | None:
    """``additional_config["sia"]`` as :class:`EngineSettings` (``None`` when absent); ValueError on
    unknown keys or bad values (an engine configured wrongly fails at start)."""
    if not additional_config or "sia" not in additional_config:
        return None
    raw = additional_config["sia"]
    if isinstance(raw, str):  # a JSON string, as some front ends pass it
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"additional_config['sia'] must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ENGINE_KEYS))
    if unknown:
        raise ValueError(f"unknown additional_config['sia'] key(s) {unknown}; known: {list(ENGINE_KEYS)}")
    s = EngineSettings(**raw)
    if s.value_model is not None and not isinstance(s.value_model, (str, Path)):
        raise ValueError(f"additional_config['sia']['value_model'] must be a path, got {s.value_model!r}")
    if s.dtype != "auto" and s.dtype not in DTYPES:
        raise ValueError(f"additional_config['sia']['dtype'] must be 'auto' or one of {list(DTYPES)}, got {s.dtype!r}")
    for name, lo in (("max_junction_batch", 1), ("log_every", 0)):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"additional_config['sia'][{name!r}] must be an int >= {lo}, got {v!r}")
    if s.backend is not None:
        SIAConfig(backend=s.backend)  # validates the name (ValueError)
    return s

"""Configuration dataclasses, validated with ValueError / TypeError naming the field (never assert)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .ops import BACKENDS, SCOPES

__all__ = ["SIAConfig", "MODEL_DEFAULT", "GATES", "VALUE_MODES"]

GATES = ("entropy", "always", "never", "random", "first_n", "target_rate")
VALUE_MODES = ("cached", "prefix", "auto")


class _ModelDefault:
    """Sentinel: take the value from the model's ``generation_config`` / ``config``."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MODEL_DEFAULT"

    def __reduce__(self):
        return (_ModelDefault, ())


MODEL_DEFAULT = _ModelDefault()


def _int(name, x, lo, allow_none=False):
    if x is None and allow_none:
        return
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"SIAConfig.{name} must be an int{' or None' if allow_none else ''}, got {x!r}")
    if x < lo:
        raise ValueError(f"SIAConfig.{name} must be >= {lo}, got {x}")


def _float(name, x, *, allow_inf=False):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"SIAConfig.{name} must be a number, got {x!r}")
    if math.isnan(x) or (not allow_inf and math.isinf(x)):
        raise ValueError(f"SIAConfig.{name} must be {'a number (not NaN)' if allow_inf else 'finite'}, got {x}")


def _choice(name, x, options):
    if x not in options:
        raise ValueError(f"SIAConfig.{name} must be one of {options}, got {x!r}")


@dataclass(kw_only=True)
class SIAConfig:
    """Everything one SIA decode needs (docs/design.md §1, §4).

    k: candidates per junction (top-k of the base logits). beta: weight of the value in
    ``logprob + beta * V``. tau: entropy threshold (nats) of the ``"entropy"`` gate.
    entropy_scope: ``"topk"`` (the released code's, max ln k) or ``"full"``.
    temperature / greedy: sampling of every row (steered or not); ``greedy=True`` takes argmaxes.
    sample_from: non-junction rows sample from the ``"topk"`` candidates or the ``"full"`` vocabulary.
    gate: ``"entropy"`` (junction when H > tau, strictly; the authors' release gates with H >= tau:
    pass ``tau=numpy.nextafter(numpy.float32(t), numpy.float32(-inf))`` to reproduce it, since H is
    f32), ``"always"`` (dense ARGS), ``"never"`` (the base model), ``"random"`` (each row steered
    with probability ``rate``), ``"first_n"`` (only the first ``first_n`` generated positions),
    ``"target_rate"`` (tau calibrated from entropy quantiles so that a share ``rate`` of steps are
    junctions). first_n: with ``"entropy"``, ``"random"`` or ``"target_rate"`` it adds to the gate:
    the first ``first_n`` generated positions are always steered (the release's ``intervene_num``).
    max_new_tokens: tokens generated per row at most. eos_token_id: an id or a list of ids;
    ``MODEL_DEFAULT`` takes the model's; ``None`` never stops early.
    value_mode: ``"cached"`` (the value model keeps a KV cache per row: one value forward per
    steered step carries each junction row's pending tokens and its k candidates, the chosen
    candidate's KV is kept; no forward on steps without a junction), ``"prefix"`` (re-runs the
    junction rows' prefixes: no state, memory-light) or ``"auto"`` (kept for old configs: the same
    as ``"cached"``, which never runs more value forwards or token-forwards than ``"prefix"``).
    max_junction_batch: junction rows per value forward (``None``: all at once). seed: seeds the
    one generator that drives all sampling (``None``: nondeterministic). backend: the
    ``junction_scan`` backend (``None``: automatic).
    """

    k: int = 10
    beta: float = 1.0
    tau: float = 1.0
    entropy_scope: str = "topk"
    temperature: float = 1.0
    greedy: bool = False
    sample_from: str = "topk"
    gate: str = "entropy"
    rate: float | None = None
    first_n: int | None = None
    max_new_tokens: int = 128
    eos_token_id: object = MODEL_DEFAULT
    value_mode: str = "cached"
    max_junction_batch: int | None = 64
    seed: int | None = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        _int("k", self.k, 1)
        _float("beta", self.beta)
        _float("tau", self.tau, allow_inf=True)
        _choice("entropy_scope", self.entropy_scope, SCOPES)
        _float("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"SIAConfig.temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.greedy, bool):
            raise TypeError(f"SIAConfig.greedy must be a bool, got {self.greedy!r}")
        _choice("sample_from", self.sample_from, SCOPES)
        _choice("gate", self.gate, GATES)
        if self.gate in ("random", "target_rate"):
            if self.rate is None:
                raise ValueError(f"SIAConfig.rate is required for gate={self.gate!r} (a share in [0, 1])")
            _float("rate", self.rate)
            if not 0.0 <= self.rate <= 1.0:
                raise ValueError(f"SIAConfig.rate must be in [0, 1], got {self.rate}")
        elif self.rate is not None:
            raise ValueError(f"SIAConfig.rate applies to gate 'random' or 'target_rate', not {self.gate!r}")
        if self.gate == "first_n" and self.first_n is None:
            raise ValueError("SIAConfig.first_n is required for gate='first_n' (an int >= 0)")
        if self.first_n is not None:
            if self.gate in ("always", "never"):
                raise ValueError(f"SIAConfig.first_n applies to gates 'first_n', 'entropy', 'random' and "
                                 f"'target_rate', not {self.gate!r}")
            _int("first_n", self.first_n, 0)
        _int("max_new_tokens", self.max_new_tokens, 1)
        self.eos_token_id = _eos(self.eos_token_id)
        _choice("value_mode", self.value_mode, VALUE_MODES)
        _int("max_junction_batch", self.max_junction_batch, 1, allow_none=True)
        _int("seed", self.seed, 0, allow_none=True)
        if self.backend is not None:
            _choice("backend", self.backend, BACKENDS)

    def replace(self, **changes) -> "SIAConfig":
        """A validated copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["eos_token_id"] is MODEL_DEFAULT:
            d["eos_token_id"] = "model"
        return d


def _eos(x):
    if x is MODEL_DEFAULT or x is None:
        return x
    ids = list(x) if isinstance(x, (list, tuple)) else [x]
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"SIAConfig.eos_token_id must be MODEL_DEFAULT, None, a token id or a list of ids, got {x!r}")
    return ids[0] if len(ids) == 1 and not isinstance(x, (list, tuple)) else tuple(ids)

"""The one place that touches transformers' KV-cache objects (tested with transformers 5.19 and 5.24).

Everything else in the package holds plain ``(keys, values)`` tensors per layer and goes through
these four functions:

* :func:`cache_keyword` — the forward's cache argument: ``cache`` (transformers >= 5.20) or
  ``past_key_values`` (5.19 and earlier, which silently drops ``cache=``), read from the signature.
* :func:`new_cache` — an empty ``DynamicCache``.
* :func:`cache_from_layers` — a ``DynamicCache`` holding given ``[B, H, S, D]`` tensors, through the
  public ``update()`` (no constructor internals).
* :func:`cache_layers` — the ``(keys, values)`` tensors a cache holds, per layer.
"""
from __future__ import annotations

import functools
import inspect

import torch

__all__ = ["cache_keyword", "new_cache", "cache_from_layers", "cache_layers"]


def cache_keyword(module: torch.nn.Module) -> str:
    """``"cache"`` or ``"past_key_values"``: the KV-cache argument of ``module.forward``."""
    return _keyword_of(type(module))


@functools.lru_cache(maxsize=None)
def _keyword_of(cls) -> str:
    params = inspect.signature(cls.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{cls.__name__}.forward takes neither cache= nor past_key_values=")


def new_cache(config=None):
    """An empty ``DynamicCache`` (for ``config``'s layer layout when the installed version takes one)."""
    from transformers import DynamicCache

    if config is None:
        return DynamicCache()
    try:
        return DynamicCache(config=config)
    except TypeError:  # a version without config=
        return DynamicCache()


def cache_from_layers(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A ``DynamicCache`` whose layer ``i`` holds ``layers[i] = (keys, values)`` ``[B, H, S, D]``."""
    cache = new_cache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(keys, values)`` ``[B, H, S, D]`` of every layer of ``cache``."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache))

"""Every setting of ``sia demo``, the key of its model cache, and the prompts it decodes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import torch

from ..config import SIAConfig
from ..ops import resolve_backend
from ..tasks import BranchingTask

__all__ = ["DemoConfig", "HELDOUT_POOL", "CACHE_FORMAT", "heldout_prompts", "with_backend", "log"]

# Bump when the code the cached models come out of changes (2: the two-word Philox sampler, which
# draws other base samples, hence other value-model training data).
CACHE_FORMAT = 2
HELDOUT_POOL = 256  # prompts never trained on (either model); fast mode decodes the first 48
FAST_HELDOUT = 48
TRAINING_FIELDS = ("seed", "segments", "width", "hidden", "layers", "heads", "base_steps", "base_batch", "base_lr",
                   "value_trajectories", "value_loss", "value_epochs", "value_lr", "value_batch", "value_targets",
                   "value_lora_r", "value_lora_scale", "k", "threads", "backend")


@dataclass(frozen=True)
class DemoConfig:
    """Every setting of the demo. ``fast`` decodes 48 held-out prompts instead of 256 and trains the
    same models (so the two modes share the cache). Value training is sized by measurement: 1024
    trajectories and 5 epochs learn the topic × choice interaction for both topics on seeds 0, 1, 2.
    ``backend``: the scan backend (``None``: automatic; :func:`run_demo` records the one that ran)."""

    seed: int = 0
    fast: bool = False
    # the task
    segments: int = 4
    width: int = 6
    # the base model (Llama) and its training
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    base_steps: int = 150
    base_batch: int = 32
    base_lr: float = 5e-3
    # the value model and its training (sia_kernels.value.train_value)
    value_trajectories: int = 1024
    value_loss: str = "token"  # every response position regressed on R (see sia_kernels.demo.train)
    value_epochs: int = 5
    value_lr: float = 2e-3
    value_batch: int = 16
    value_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")
    value_lora_r: int = 16
    value_lora_scale: float = 2.0  # lora_alpha / lora_r
    # decoding
    heldout: int = HELDOUT_POOL  # prompts decoded: the first of a fixed held-out set of HELDOUT_POOL
    k: int = 10
    beta: float = 10.0
    taus: tuple = (0.5, 1.0, 1.5)
    n: int = 4
    value_mode: str = SIAConfig.value_mode  # the decoder's default
    threads: int = 1
    backend: str | None = None

    @classmethod
    def make(cls, seed: int = 0, fast: bool = False, **kw) -> "DemoConfig":
        if fast:
            kw = {"heldout": FAST_HELDOUT, **kw}
        return cls(seed=seed, fast=fast, **kw)

    @property
    def task(self) -> BranchingTask:
        return BranchingTask(segments=self.segments, width=self.width)

    def training_key(self) -> str:
        """A hash of everything the cached models depend on (the scan backend included: the
        value model's training data are the base model's samples, drawn by the scan)."""
        blob = json.dumps({"format": CACHE_FORMAT, **{k: getattr(self, k) for k in TRAINING_FIELDS}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def with_backend(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` with ``backend`` set to the scan backend that will run on the CPU: the one asked for
    (a ValueError if it cannot run here), or the automatic choice. An automatic choice that falls
    back to ``reference`` warns, once, here (the warning is never hidden)."""
    try:
        name, _ = resolve_backend(cfg.backend, torch.device("cpu"))
    except RuntimeError as e:
        raise ValueError(f"--backend {cfg.backend}: {e}") from None
    return cfg if name == cfg.backend else replace(cfg, backend=name)


def heldout_prompts(cfg: DemoConfig) -> list[list[int]]:
    """The prompts the demo decodes: ``cfg.heldout`` of the seed's held-out pool (never trained on)."""
    if not 2 <= cfg.heldout <= HELDOUT_POOL:
        raise ValueError(f"heldout must be in [2, {HELDOUT_POOL}], got {cfg.heldout}")
    return cfg.task.split_prompts(HELDOUT_POOL, seed=cfg.seed)[1][:cfg.heldout]


def log(msg: str) -> None:
    print(msg, flush=True)

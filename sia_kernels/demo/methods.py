"""The decoding methods the demo compares, and running one on the held-out prompts.

Every method samples at temperature 1 from the top-k with one fixed seed, ``k = 10`` and ``β = 10``
(the reward spans [0, 1]: an aligned choice is worth 1/4, and with β = 1 it would tilt a choice by
at most e^0.25): ``base``, ``dense_args``, ``sia`` at each τ of ``cfg.taus`` in both entropy scopes,
then ``random_gate`` at SIA's measured rate (τ = 1, top-k), ``best_of_n_base`` and ``best_of_n_sia``
(n = 4, the best by the value model's final value ``V(x, y)``, not by the task reward).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from ..config import SIAConfig
from ..decoding import best_of_n, generate
from ..value.padding import pad_left
from .config import DemoConfig, log
from .train import max_new_tokens, responses

__all__ = ["Method", "fixed_methods", "matched_methods", "run_method", "run_methods", "find_row", "checks"]


@dataclass(frozen=True)
class Method:
    """One row of the table: a gate of :class:`SIAConfig` and its parameters; ``best_of > 1`` runs
    Best-of-N with the value model's final value as the scorer."""

    name: str
    gate: str
    tau: float = float("nan")
    entropy_scope: str = ""
    rate: float | None = None
    best_of: int = 1

    def config(self, task, cfg: DemoConfig) -> SIAConfig:
        kw = dict(k=cfg.k, beta=cfg.beta, max_new_tokens=max_new_tokens(task), eos_token_id=task.eos_id,
                  seed=cfg.seed, value_mode=cfg.value_mode, max_junction_batch=None, backend=cfg.backend)
        if self.gate == "entropy":
            return SIAConfig(gate="entropy", tau=self.tau, entropy_scope=self.entropy_scope, **kw)
        if self.gate == "random":
            return SIAConfig(gate="random", rate=self.rate, **kw)
        return SIAConfig(gate=self.gate, **kw)


def fixed_methods(cfg: DemoConfig) -> list[Method]:
    """The methods that need no measurement first: base, dense ARGS, SIA at every τ and scope."""
    sia = [Method("sia", "entropy", tau=t, entropy_scope=s) for s in ("topk", "full") for t in cfg.taus]
    return [Method("base", "never"), Method("dense_args", "always"), *sia]


def matched_methods(sia: dict, cfg: DemoConfig) -> list[Method]:
    """The methods matched to a measured SIA row: random gating at its intervention rate, and
    Best-of-N of base and of SIA at its τ."""
    return [Method("random_gate", "random", rate=sia["intervention_rate"]),
            Method("best_of_n_base", "never", best_of=cfg.n),
            Method("best_of_n_sia", "entropy", tau=sia["tau"], entropy_scope=sia["entropy_scope"], best_of=cfg.n)]


def run_method(m: Method, base, vm, task, prompts, cfg: DemoConfig) -> dict:
    """Decode ``prompts`` with method ``m``; the table row (rewards from the task, costs from the
    decoder's stats and the value model's counters)."""
    conf = m.config(task, cfg)
    ids, mask = pad_left(prompts, task.pad_id)
    value = vm if m.gate != "never" else None
    vm.reset_counters()
    t0 = time.perf_counter()
    if m.best_of > 1:
        out = best_of_n(base, value, input_ids=ids, attention_mask=mask, config=conf, n=m.best_of,
                        scorer=vm)  # the value model's final value V(x, y), also for best_of_n_base
        gen = out.generation
        picks = (torch.arange(len(prompts)) * m.best_of + out.best.cpu()).tolist()
    else:
        gen = generate(base, value, input_ids=ids, attention_mask=mask, config=conf)
        picks = list(range(len(prompts)))
    wall = time.perf_counter() - t0
    resps = responses(gen)
    rewards = [task.reward(prompts[i], resps[row]) for i, row in enumerate(picks)]
    n = len(prompts)
    st = gen.stats
    return {
        "method": m.name, "tau": m.tau, "entropy_scope": m.entropy_scope,
        "reward_mean": statistics.mean(rewards), "reward_std": statistics.pstdev(rewards),
        "intervention_rate": st.intervention_rate,
        "value_token_forwards": vm.counters.token_forwards,  # decoding plus Best-of-N scoring
        "base_token_forwards": st.base_token_forwards, "wall_s": wall,
        "prompts": n, "samples_per_prompt": m.best_of,
        "reward_sem": statistics.pstdev(rewards) / math.sqrt(n),
        "well_formed": statistics.mean(task.is_well_formed(resps[row]) for row in picks),
        "value_tf_per_prompt": vm.counters.token_forwards / n,
        "junctions": st.junctions, "tokens": st.tokens, "beta": cfg.beta, "k": cfg.k, "value_mode": cfg.value_mode,
        "scorer": "final value V(x, y)" if m.best_of > 1 else "", "backend": cfg.backend,
    }


def run_methods(base, vm, task, prompts, cfg: DemoConfig) -> list[dict]:
    """Every method's row, in table order, with the ratios to dense ARGS filled in. One short
    untimed decode first, so that no method's wall time pays for loading the scan backend or for
    first-call allocations."""
    run_method(Method("warm-up", "always"), base, vm, task, prompts[:2], cfg)
    rows = []

    def run(methods):
        for m in methods:
            rows.append(run_method(m, base, vm, task, prompts, cfg))
            tau = "" if math.isnan(m.tau) else format(m.tau, "g")
            log(f"  {m.name:<16} {tau:>4} {m.entropy_scope:<5} reward {rows[-1]['reward_mean']:.3f}  "
                f"({rows[-1]['wall_s']:.1f} s)")

    run(fixed_methods(cfg))
    sia = find_row(rows, "sia", 1.0, "topk") or next(r for r in rows if r["method"] == "sia")
    run(matched_methods(sia, cfg))
    dense = find_row(rows, "dense_args")
    for r in rows:
        r["value_tf_vs_dense"] = r["value_token_forwards"] / dense["value_token_forwards"]
        r["reward_vs_dense"] = r["reward_mean"] / dense["reward_mean"] if dense["reward_mean"] else float("nan")
    return rows


def find_row(rows, method, tau=None, scope=None) -> dict | None:
    """The first row of ``method`` (at ``tau`` and ``scope`` when given), or None."""
    for r in rows:
        if r["method"] == method and (tau is None or r["tau"] == tau) and (scope is None or r["entropy_scope"] == scope):
            return r
    return None


def checks(rows) -> dict:
    """The demo's claims, measured: dense ARGS beats base; SIA (τ = 1, top-k) keeps ≥ 95 % of dense's
    reward with ≤ 25 % of its value token-forwards and beats random gating at the same rate."""
    dense, base, rand = find_row(rows, "dense_args"), find_row(rows, "base"), find_row(rows, "random_gate")
    sia = find_row(rows, "sia", 1.0, "topk")
    out = {"dense_beats_base": dense["reward_mean"] > base["reward_mean"]}
    if sia is not None:
        out.update({
            "sia_reward_vs_dense": sia["reward_vs_dense"], "sia_reward_ge_95pct_dense": sia["reward_vs_dense"] >= 0.95,
            "sia_value_tf_vs_dense": sia["value_tf_vs_dense"], "sia_value_tf_le_25pct_dense": sia["value_tf_vs_dense"] <= 0.25,
            "entropy_beats_random_gate": sia["reward_mean"] > rand["reward_mean"],
        })
    return out

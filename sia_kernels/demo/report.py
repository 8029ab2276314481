"""The demo's outputs: ``results.csv`` (one row per method), ``pareto.png`` (reward against value
token-forwards), and the printed table and summary."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from .config import DemoConfig, log

__all__ = ["COLUMNS", "write_csv", "write_summary", "plot", "format_table", "print_report"]

COLUMNS = ["method", "tau", "entropy_scope", "reward_mean", "reward_std", "intervention_rate",
           "value_token_forwards", "base_token_forwards", "wall_s",
           "prompts", "samples_per_prompt", "reward_sem", "well_formed", "value_tf_per_prompt",
           "value_tf_vs_dense", "reward_vs_dense", "junctions", "tokens", "beta", "k", "value_mode", "scorer",
           "backend"]


def _fmt(x, spec="g") -> str:
    return "" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def write_csv(path: Path, rows) -> None:
    """``rows`` as CSV with :data:`COLUMNS` (floats rounded to 6 digits, NaN as empty), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                            round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def write_summary(path: Path, summary: dict) -> None:
    """``summary`` as indented JSON, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def _label(r) -> str:
    if r["method"] == "sia":
        return f"sia τ={r['tau']:g} {r['entropy_scope']}"
    if r["method"] == "random_gate":
        return f"random_gate r={r['intervention_rate']:.2f}"
    return r["method"]


def plot(path: Path, rows, cfg: DemoConfig) -> None:
    """Reward (mean ± s.e.) against value-model token-forwards per prompt, one point per method."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = {"base": "tab:gray", "dense_args": "tab:red", "sia": "tab:blue", "random_gate": "tab:orange",
              "best_of_n_base": "tab:purple", "best_of_n_sia": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    labels: dict[tuple, list] = {}  # methods that land on (nearly) the same point share one label
    x_span = max(r["value_tf_per_prompt"] for r in rows) or 1.0
    for r in rows:
        marker = "s" if r["entropy_scope"] == "full" else "o"
        ax.errorbar(r["value_tf_per_prompt"], r["reward_mean"], yerr=r["reward_sem"], fmt=marker,
                    color=colors.get(r["method"], "black"), capsize=2, ms=6)
        key = (round(r["value_tf_per_prompt"] / x_span * 100), round(r["reward_mean"] * 200))
        labels.setdefault(key, []).append((r["value_tf_per_prompt"], r["reward_mean"], _label(r)))
    for points in labels.values():
        x, y, names = points[0][0], points[0][1], [p[2] for p in points]
        ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7, va="top")
    ax.set_xlabel("value-model token-forwards per prompt (decoding + Best-of-N scoring)")
    ax.set_ylabel("task reward (share of aligned choices), mean ± s.e.")
    ax.set_title(f"SIA vs dense ARGS on the branching task ({rows[0]['prompts']} held-out prompts, "
                 f"k={cfg.k}, β={cfg.beta:g}, seed {cfg.seed})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def format_table(rows, cfg: DemoConfig | None = None) -> str:
    """The printed table; with ``cfg``, headed by the settings every row shares (the scan backend,
    threads, value mode, k, β)."""
    head = (f"{'method':<15} {'tau':>4} {'scope':<5} {'reward':>13} {'well-formed':>11} {'rate':>6} "
            f"{'junctions/sample':>16} {'value tf/prompt':>15} {'vs dense':>8} {'base tf/prompt':>14} {'wall s':>7}")
    lines = [head, "-" * len(head)]
    if cfg is not None:
        lines.insert(0, f"scan backend: {cfg.backend}, threads: {cfg.threads}, value_mode: {cfg.value_mode}, "
                        f"k: {cfg.k}, beta: {cfg.beta:g}, seed: {cfg.seed}")
    for r in rows:
        lines.append(
            f"{r['method']:<15} {_fmt(r['tau']):>4} {r['entropy_scope']:<5} "
            f"{r['reward_mean']:.3f} ± {r['reward_std']:.3f} {r['well_formed']:>11.1%} {r['intervention_rate']:>6.3f} "
            f"{r['junctions'] / (r['prompts'] * r['samples_per_prompt']):>16.2f} "
            f"{r['value_tf_per_prompt']:>15.1f} {r['value_tf_vs_dense']:>8.1%} "
            f"{r['base_token_forwards'] / r['prompts']:>14.1f} {r['wall_s']:>7.2f}")
    return "\n".join(lines)


def print_report(rows, summary, cfg: DemoConfig, out: Path) -> None:
    """The table, then what it means: the base model's entropies, the value model's quality, the checks."""
    q, e, c = summary["value_quality"], summary["base_entropy"], summary["checks"]
    log("")
    log(format_table(rows, cfg))
    log("")
    log(f"reward: mean ± std over prompts; rate: junctions / generated tokens; value tf: value-model "
        f"token-forwards ({cfg.value_mode} mode; Best-of-N adds scoring its {cfg.n} samples "
        f"by the value model's final value V(x, y)).")
    log(f"base model top-{cfg.k} entropy: choice steps min {e['choice_min']:.2f} (mean {e['choice_mean']:.2f}), "
        f"other steps max {e['other_max']:.2f} (mean {e['other_mean']:.3f}) nats")
    log(f"value model on held-out base samples: final-value MSE {q['final_value_mse']:.4f} vs constant "
        f"{q['constant_mse']:.4f}; aligned - misaligned value at choice steps {q['choice_value_gap']:+.3f} "
        f"(> 0 in {q['choice_gap_positive']:.0%})")
    if "sia_reward_vs_dense" in c:
        def ok(b):
            return "yes" if b else "NO"

        log(f"checks: SIA(τ=1, top-k) reward = {c['sia_reward_vs_dense']:.1%} of dense ARGS (≥ 95 %: "
            f"{ok(c['sia_reward_ge_95pct_dense'])}), value token-forwards = {c['sia_value_tf_vs_dense']:.1%} "
            f"(≤ 25 %: {ok(c['sia_value_tf_le_25pct_dense'])}); dense ARGS beats base: "
            f"{ok(c['dense_beats_base'])}; entropy gate beats random gate at the same rate: "
            f"{ok(c['entropy_beats_random_gate'])}")
    log(f"models: {'reused' if summary['models']['cached'] else 'trained'} ({summary['models']['cache_dir']}); "
        f"total {summary['total_s']:.1f} s")
    log(f"wrote {out / 'results.csv'}, {out / 'pareto.png'}, {out / 'summary.json'}")

"""``run_demo``: train (or reuse) the models, decode the held-out prompts with every method, analyse,
check, and write the outputs."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .analysis import choice_step_entropies, value_quality
from .config import DemoConfig, heldout_prompts, log, with_backend
from .methods import checks, run_methods
from .report import plot, print_report, write_csv, write_summary
from .train import load_or_train

__all__ = ["run_demo"]


def run_demo(out_dir, seed: int = 0, fast: bool = False, config: DemoConfig | None = None) -> list[dict]:
    """Train (or reuse) the models, decode the held-out prompts with every method, write
    ``results.csv``, ``pareto.png``, ``summary.json`` to ``out_dir``; print the table; return the rows.

    ``config`` overrides ``seed`` and ``fast``. Torch runs on ``config.threads`` threads for the
    duration (tiny matmuls: one thread is fastest, and fixes the float sums); the scan backend is
    resolved once, up front (a fallback warns there), and recorded in every row and the summary."""
    cfg = with_backend(config or DemoConfig.make(seed=seed, fast=fast))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    try:
        base, vm, _, info = load_or_train(out, cfg)
        t_models = time.perf_counter() - t_start
        task = cfg.task
        prompts = heldout_prompts(cfg)
        log(f"decoding {len(prompts)} held-out prompts with every method (temperature 1, seed {cfg.seed}, "
            f"k={cfg.k}, beta={cfg.beta}, value_mode={cfg.value_mode}, scan backend {cfg.backend})")
        rows = run_methods(base, vm, task, prompts, cfg)
        quality = value_quality(vm, base, task, prompts, cfg)
        ent_choice, ent_other = choice_step_entropies(base, task, prompts[:64], k=cfg.k, seed=cfg.seed)
    finally:
        torch.set_num_threads(threads)
    summary = {
        "config": asdict(cfg), "backend": cfg.backend, "models": info, "value_quality": quality,
        "base_entropy": {"choice_min": min(ent_choice), "choice_mean": statistics.mean(ent_choice),
                         "other_max": max(ent_other), "other_mean": statistics.mean(ent_other)},
        "checks": checks(rows), "models_s": t_models, "total_s": time.perf_counter() - t_start,
    }
    write_csv(out / "results.csv", rows)
    write_summary(out / "summary.json", summary)
    plot(out / "pareto.png", rows, cfg)
    print_report(rows, summary, cfg, out)
    return rows

"""``sia demo``: its flags and its entry point (the work is in :func:`sia_kernels.demo.run_demo`)."""
from __future__ import annotations

import argparse

from ..ops import BACKENDS
from ..runtime import add_runtime_args, apply_runtime_args
from .config import FAST_HELDOUT, HELDOUT_POOL, DemoConfig

__all__ = ["DESCRIPTION", "add_demo_args", "demo_main"]

DESCRIPTION = (
    "Train a tiny base model and a value model on the CPU (cached in OUT/cache/), decode held-out "
    "prompts of a synthetic branching task with base, dense ARGS, SIA (several tau, both entropy "
    "scopes), random gating and Best-of-N, print the table and write results.csv, pareto.png and "
    "summary.json to OUT. Threads default to 1 here: the models are tiny, one thread is fastest, "
    "and it makes the trained models (hence the table) the same on every machine.")


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sia demo``. Threads default to 1 here, not ``auto``: the models are tiny (one
    thread is fastest) and one thread makes the trained models, hence the table, the same on
    every machine."""
    parser.add_argument("--out", default="demo_out", metavar="DIR",
                        help="output directory: results.csv, pareto.png, summary.json and the model cache")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the models' training, the held-out split and sampling")
    parser.add_argument("--fast", action="store_true",
                        help=f"decode {FAST_HELDOUT} instead of {HELDOUT_POOL} held-out prompts; the models "
                             f"are the same (and share the cache)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="junction_scan backend; auto: cpp, or reference with a warning when the C++ op "
                             "cannot load. The one that ran is printed and recorded in the outputs")
    add_runtime_args(parser)
    parser.set_defaults(threads=DemoConfig.threads)


def demo_main(args: argparse.Namespace) -> int:
    """Run ``sia demo``; return the exit code."""
    from .run import run_demo

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    apply_runtime_args(args)
    backend = None if args.backend == "auto" else args.backend
    cfg = DemoConfig.make(seed=args.seed, fast=args.fast, threads=args.threads, backend=backend)
    run_demo(args.out, config=cfg)
    return 0

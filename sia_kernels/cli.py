"""The ``sia`` command: ``sia demo``, ``sia bench scan``, ``sia generate``, ``sia train-value``."""
from __future__ import annotations

import argparse
import sys

from .decoding.cli import DTYPE_NAMES
from .runtime import (HelpFormatter, Terminated, add_runtime_args, apply_runtime_args, one_line, resolve_device,
                      restore_sigterm, stop_on_sigterm)


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def _dtype_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in DTYPE_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"dtypes must be among {sorted(set(DTYPE_NAMES))}, got {text!r}")
    return [DTYPE_NAMES[n] for n in names]


def _bench_scan(args: argparse.Namespace) -> int:
    import torch

    from .bench import run_scan_bench

    run_scan_bench(
        device=str(resolve_device(args.device)),
        batches=args.batches,
        dtypes=[getattr(torch, d) for d in args.dtypes],
        vocab=args.vocab,
        k=args.k,
        tau=args.tau,
        methods=args.methods.split(",") if args.methods else None,
        compile_=not args.no_compile,
        csv_path=None if args.csv == "-" else args.csv,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sia", description="Sparse Inference-time Alignment kernels and decoder")
    sub = p.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="microbenchmarks").add_subparsers(dest="what", required=True)
    scan = bench.add_parser("scan", help="junction_scan: every backend vs the eager composite and torch.compile",
                            formatter_class=HelpFormatter)
    scan.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    scan.add_argument("--batches", type=_int_list, default=[1, 8, 64, 256], help="comma-separated B values")
    scan.add_argument("--dtypes", type=_dtype_list, default=["float32", "bfloat16"], help="e.g. f32,bf16")
    scan.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V")
    scan.add_argument("--k", type=int, default=10, help="top-k candidates")
    scan.add_argument("--tau", type=float, default=1.0, help="entropy threshold")
    scan.add_argument("--methods", default=None, help="comma-separated subset (default: all; eager and read_floor "
                      "always run)")
    scan.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    scan.add_argument("--csv", default="bench/results/scan.csv", help="CSV to append to ('-' for none)")
    add_runtime_args(scan)
    scan.set_defaults(func=_bench_scan)

    from .decoding.cli import add_generate_args, generate_main
    from .demo import DESCRIPTION as DEMO_DESCRIPTION
    from .demo import add_demo_args, demo_main
    from .value.train import add_train_value_args, train_value_main

    demo = sub.add_parser("demo", help="train tiny models on the CPU, then compare SIA with dense ARGS, base, "
                          "random gating and Best-of-N", description=DEMO_DESCRIPTION,
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_demo_args(demo)
    demo.set_defaults(func=demo_main)

    gen = sub.add_parser("generate", help="SIA decoding of a jsonl file of prompts", formatter_class=HelpFormatter)
    add_generate_args(gen)
    gen.set_defaults(func=generate_main)

    tv = sub.add_parser("train-value", help="train a token-level value model (LoRA through peft)",
                        formatter_class=HelpFormatter)
    add_train_value_args(tv)
    tv.set_defaults(func=train_value_main)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``sia`` command. A bad input is one line on stderr and exit status 2; Ctrl-C and
    SIGTERM stop with a message and status 130 / 143 (``--verbose`` shows tracebacks instead)."""
    previous = stop_on_sigterm()
    verbose = False
    try:
        args = build_parser().parse_args(argv)
        verbose = getattr(args, "verbose", False)
        if hasattr(args, "threads"):
            apply_runtime_args(args)
        return args.func(args)
    except Terminated:
        print("sia: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("sia: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:  # OSError: missing files, Hugging Face load errors
        if verbose:
            raise
        print(f"sia: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        restore_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())

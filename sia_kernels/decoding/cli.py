"""``sia generate``: SIA decoding of a jsonl file of prompts.

Output rows keep every input field and add the generation and its stats; a summary table goes to
stderr at the end. Finished rows are written to a hidden temporary file next to the output and
moved onto it with ``os.replace`` at the end, or when the run stops early (Ctrl-C, SIGTERM, an
error) with the rows finished so far; ``--resume`` continues such a file and gives the same rows as
an uninterrupted run. The input file is never overwritten.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import GATES, MODEL_DEFAULT, VALUE_MODES, SIAConfig
from ..jsonl import JsonlWriter, read_jsonl
from ..ops import BACKENDS, SCOPES
from ..runtime import add_runtime_args, check_model_arg, resolve_device, signals_held

__all__ = ["add_generate_args", "generate_main", "read_prompts", "build_config"]

DTYPE_NAMES = {"f32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "f16": "float16", "float16": "float16"}  # CLI spelling -> torch dtype name
_DTYPES = {"auto": None, **DTYPE_NAMES}


def _eos_arg(text: str):
    t = text.strip().lower()
    if t == "model":
        return MODEL_DEFAULT
    if t == "none":
        return None
    try:
        ids = [int(x) for x in t.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'model', 'none' or comma-separated token ids, got {text!r}") from None
    return ids[0] if len(ids) == 1 else tuple(ids)


def _tau_arg(text: str) -> float:
    try:
        return float(text)  # accepts inf / -inf
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (or inf / -inf), got {text!r}") from None


def add_generate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``sia generate`` arguments (set ``func=generate_main`` on the parser yourself; pass
    ``formatter_class=sia_kernels.runtime.HelpFormatter`` to show the defaults in ``--help``)."""
    io = p.add_argument_group("models and files")
    io.add_argument("--model", required=True, help="base causal LM: a local directory or a Hub id")
    io.add_argument("--value-model", default=None, help="value model directory (required unless --gate never)")
    io.add_argument("--value-format", choices=("own", "sia-release", "reward-model"), default="own",
                    help="own: ValueModel.save_pretrained; sia-release: the authors' layout; reward-model: a "
                         "sequence-classification reward model (dense mode is then ARGS)")
    io.add_argument("--value-backbone", default=None, help="backbone of a --value-format sia-release checkpoint "
                    "(default: --model)")
    io.add_argument("--tokenizer", default=None, help="tokenizer (default: --model's)")
    io.add_argument("--prompts", required=True, help="input jsonl, one object per line with a prompt field")
    io.add_argument("--prompt-field", default="prompt", help="field of each input row holding the prompt")
    io.add_argument("--output-field", default="generation", help="field the generation is written to")
    io.add_argument("--out", required=True, help="output jsonl: finished rows go to a hidden temporary file "
                    "next to it, moved onto --out at the end, or on Ctrl-C / SIGTERM / an error with the rows "
                    "finished so far")
    io.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    io.add_argument("--resume", action="store_true", help="continue an interrupted --out: keep its rows (they must "
                    "be the first rows of --prompts) and generate the rest; with the same options, the result "
                    "equals an uninterrupted run")
    io.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    io.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    io.add_argument("--dtype", choices=sorted(_DTYPES), default="auto", help="model weights' dtype (auto: as saved)")
    c = p.add_argument_group("SIA (see SIAConfig)")
    d = SIAConfig()
    c.add_argument("--k", type=int, default=d.k, help="candidates scored at a junction")
    c.add_argument("--beta", type=float, default=d.beta, help="weight of the value: score = logp + beta * V")
    c.add_argument("--tau", type=_tau_arg, default=d.tau, help="entropy threshold in nats (inf: never steer, "
                   "-inf: always)")
    c.add_argument("--entropy-scope", choices=SCOPES, default=d.entropy_scope,
                   help="entropy over the top-k (the authors' gate) or the full vocabulary")
    c.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature")
    c.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    c.add_argument("--sample-from", choices=SCOPES, default=d.sample_from,
                   help="base tokens are sampled from the top-k or the full distribution")
    c.add_argument("--gate", choices=GATES, default=d.gate, help="when to steer (always = dense ARGS, never = base)")
    c.add_argument("--rate", type=float, default=None, help="gate random / target_rate: share of steered steps")
    c.add_argument("--first-n", type=int, default=None, help="gate first_n: steer the first N positions")
    c.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens generated per prompt at most")
    c.add_argument("--eos-token-id", type=_eos_arg, default=MODEL_DEFAULT,
                   help="'model' (the model's own, the default), 'none' or comma-separated ids")
    c.add_argument("--value-mode", choices=VALUE_MODES, default=d.value_mode,
                   help="cached: the value model keeps a KV cache; prefix: re-run junction prefixes")
    c.add_argument("--max-junction-batch", type=int, default=d.max_junction_batch,
                   help="junction rows per value forward")
    c.add_argument("--seed", type=int, default=0, help="batch i uses seed + i")
    c.add_argument("--backend", choices=BACKENDS, default=None,
                   help="junction_scan backend (default: triton on CUDA, cpp on the CPU)")
    prof = p.add_argument_group("runtime, progress and profiling")
    add_runtime_args(prof)
    prof.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    prof.add_argument("--nvtx", action="store_true", help="NVTX ranges around each phase (Nsight Systems)")
    prof.add_argument("--profile", default=None, metavar="DIR", help="write a torch.profiler trace to DIR/trace.json")
    return p


def build_config(args: argparse.Namespace) -> SIAConfig:
    return SIAConfig(
        k=args.k, beta=args.beta, tau=args.tau, entropy_scope=args.entropy_scope, temperature=args.temperature,
        greedy=args.greedy, sample_from=args.sample_from, gate=args.gate, rate=args.rate, first_n=args.first_n,
        max_new_tokens=args.max_new_tokens, eos_token_id=args.eos_token_id, value_mode=args.value_mode,
        max_junction_batch=args.max_junction_batch, seed=args.seed, backend=args.backend,
    )


def _check_prompt(field: str):
    def check(row: dict, where: str) -> dict:
        if not isinstance(row.get(field), str):
            what = "missing" if field not in row else f"a {type(row[field]).__name__}, not a string"
            raise ValueError(f"{where}: field {field!r} is {what}")
        if not row[field].strip():
            raise ValueError(f"{where}: field {field!r} is an empty prompt")
        return row
    return check


def read_prompts(path: str | os.PathLike, field: str = "prompt") -> list[dict]:
    """Rows of a jsonl file; a malformed line is a ValueError naming the file and line number."""
    if not isinstance(field, str) or not field:
        raise ValueError(f"field must be a non-empty string, got {field!r}")
    return read_jsonl(path, _check_prompt(field))


def _load_models(args, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..value import ValueModel

    torch_dtype = None if dtype is None else getattr(torch, dtype)
    kw = {} if torch_dtype is None else {"dtype": torch_dtype}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kw).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    vm = None
    if args.value_model is not None:
        if args.value_format == "own":
            # Decoding only: a LoRA adapter is merged into the weights (one matmul per layer, not three).
            vm = ValueModel.from_pretrained(args.value_model, torch_dtype=torch_dtype, merge_lora=True)
        elif args.value_format == "sia-release":
            vm = ValueModel.from_sia_release(args.value_backbone or args.model, args.value_model,
                                             torch_dtype=torch_dtype, merge_lora=True)
        else:
            vm = ValueModel.from_reward_model(args.value_model, torch_dtype=torch_dtype)
        vm = vm.to(device).eval()
    return model, tokenizer, vm


def _check_args(args) -> tuple[Path, Path]:
    """Every check that needs no model, so that a bad argument fails in well under a second.
    Local model paths are expanded in ``args`` (``~``); a missing one is an error, never a Hub lookup."""
    src, out = Path(args.prompts), Path(args.out)
    if not src.is_file():
        raise FileNotFoundError(f"--prompts {src}: no such file")
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the input file; choose another path (the input is never overwritten)")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not (args.overwrite or args.resume):
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it or --resume to continue it")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not out.parent.exists():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
    for flag in ("model", "value_model", "value_backbone", "tokenizer"):
        setattr(args, flag, check_model_arg(getattr(args, flag), "--" + flag.replace("_", "-")))
    if args.value_model is None and args.gate != "never":
        raise ValueError(f"--value-model is required for --gate {args.gate}")
    return src, out


def _check_backend(backend: str | None, device) -> None:
    if backend in ("triton", "cuda") and device.type != "cuda":
        if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
            return  # Triton's CPU interpreter (tests)
        raise ValueError(f"--backend {backend} needs a CUDA device; on the CPU use --backend cpp or reference")
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"--backend cpp runs on the CPU; on {device} use triton, cuda or reference")


def _finished_rows(out: Path, rows: list[dict], args) -> list[dict]:
    """The rows of an interrupted ``--out`` (for ``--resume``), checked against the input."""
    if not out.exists():
        return []
    done = read_jsonl(out) if out.stat().st_size else []
    if len(done) > len(rows):
        raise ValueError(f"--resume: --out {out} has {len(done)} rows but --prompts has only {len(rows)}")
    for i, (row, got) in enumerate(zip(rows, done)):
        if any(got.get(key) != value for key, value in row.items()) or args.output_field not in got:
            raise ValueError(f"--resume: row {i + 1} of --out {out} is not the generation of row {i + 1} of "
                             f"--prompts {args.prompts}")
    if len(done) % args.batch_size and len(done) != len(rows):
        raise ValueError(f"--resume: --out {out} has {len(done)} rows, not a multiple of --batch-size "
                         f"{args.batch_size}; resume with the --batch-size of the interrupted run")
    return done


def _summary(totals: dict, times: dict) -> str:
    tok = totals["tokens"]
    lines = [
        ("rows", f"{totals['rows']}"),
        ("tokens generated", f"{tok}"),
        ("junctions", f"{totals['junctions']}"),
        ("intervention rate", f"{totals['junctions'] / tok:.1%}" if tok else "-"),
        ("base token-forwards", f"{totals['base_padded_token_forwards']}"),
        ("value token-forwards", f"{totals['value_token_forwards']}"),
        ("value / base forwards", f"{totals['value_token_forwards'] / max(totals['base_padded_token_forwards'], 1):.3f}"),
        ("est. FLOPs (base + value)", f"{totals['flops_total']:.3e}"),
        ("wall time", f"{totals['wall_time']:.2f} s"),
        ("tokens / s", f"{tok / totals['wall_time']:.1f}" if totals["wall_time"] > 0 else "-"),
    ]
    lines += [(f"  time {name}", f"{t:.2f} s") for name, t in times.items()]
    width = max(len(a) for a, _ in lines)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in lines)


def _out_row(row: dict, field: str, text: str, st) -> dict:
    out_row = dict(row)
    out_row[field] = text
    out_row["sia"] = {
        "tokens": st.tokens, "junctions": st.junctions, "intervention_rate": round(st.intervention_rate, 6),
        "base_token_forwards": st.base_token_forwards, "value_token_forwards": st.value_token_forwards,
        "finished": st.finished,
    }
    return out_row


def generate_main(args: argparse.Namespace) -> int:
    """Run ``sia generate``; returns the exit status (errors raise ValueError / FileNotFoundError).

    Rows are written as their batch finishes. On success, or when the run stops early (Ctrl-C,
    SIGTERM, an error), the rows finished so far replace ``--out``; ``--resume`` then continues
    it. Batch ``i`` (of the whole input) uses seed ``seed + i`` either way, so a resumed run
    writes the same rows as an uninterrupted one."""
    from tqdm import tqdm

    from .generate import generate
    from .profiling import profile_trace, set_nvtx

    config = build_config(args)
    src, out = _check_args(args)
    device = resolve_device(args.device)
    _check_backend(args.backend, device)
    rows = read_prompts(src, args.prompt_field)
    done = _finished_rows(out, rows, args) if args.resume else []
    if args.resume and len(done) == len(rows):
        print(f"sia: --out {out} already has all {len(rows)} rows; nothing to do", file=sys.stderr)
        return 0
    if args.nvtx and not set_nvtx(True):
        print("sia: --nvtx: CUDA is not available; NVTX ranges are off", file=sys.stderr)
    model, tokenizer, vm = _load_models(args, str(device), _DTYPES[args.dtype])
    keys = ("rows", "tokens", "junctions", "base_padded_token_forwards", "value_token_forwards", "flops_total",
            "wall_time")
    totals = dict.fromkeys(keys, 0)
    times: dict[str, float] = {}
    with JsonlWriter(out) as writer:
        with signals_held():  # a signal now would commit fewer rows than --out had
            for row in done:
                writer.write(row)
        try:
            with profile_trace(args.profile), tqdm(total=len(rows), initial=len(done), desc="sia generate",
                                                   unit="prompt", disable=args.no_progress, file=sys.stderr) as bar:
                for i in range(len(done), len(rows), args.batch_size):
                    batch = rows[i:i + args.batch_size]
                    cfg = config if config.seed is None else config.replace(seed=config.seed + i // args.batch_size)
                    res = generate(model, vm, prompts=[r[args.prompt_field] for r in batch], tokenizer=tokenizer,
                                   config=cfg)
                    with signals_held():  # a batch's rows are kept all or none
                        for row, text, st in zip(batch, res.texts, res.row_stats):
                            writer.write(_out_row(row, args.output_field, text, st))
                    s = res.stats
                    for key in keys:
                        totals[key] += getattr(s, key)
                    for name, t in s.times.items():
                        times[name] = times.get(name, 0.0) + t
                    bar.update(len(batch))
                    bar.set_postfix(rate=f"{totals['junctions'] / max(totals['tokens'], 1):.0%}")
        except BaseException as e:
            if writer.rows:  # keep the finished rows; --resume continues from them
                writer.commit()
                why = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped by an error"
                print(f"sia: {why}: {writer.rows} of {len(rows)} rows are in {out}; run the same command with "
                      "--resume to finish", file=sys.stderr)
            raise
        writer.commit()
    print(_summary(totals, times), file=sys.stderr)
    print(f"sia: wrote {len(rows)} rows to {out}" + (f" ({len(done)} kept from before)" if done else ""),
          file=sys.stderr)
    return 0

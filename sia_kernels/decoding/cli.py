"""``sia generate``: SIA decoding of a jsonl file of prompts.

Output rows keep every input field and add the generation and its stats; a summary table goes to
stderr at the end. The output file is written to a temporary file next to it and moved into place
with ``os.replace`` only when every row is done, so an interrupted run never leaves a file that
looks complete; the input file is never overwritten.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..config import GATES, MODEL_DEFAULT, VALUE_MODES, SIAConfig
from ..ops import BACKENDS, SCOPES

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
    """The ``sia generate`` arguments (set ``func=generate_main`` on the parser yourself)."""
    io = p.add_argument_group("models and files")
    io.add_argument("--model", required=True, help="base causal LM (path or hub id)")
    io.add_argument("--value-model", default=None, help="value model (required unless --gate never)")
    io.add_argument("--value-format", choices=("own", "sia-release", "reward-model"), default="own",
                    help="own: ValueModel.save_pretrained; sia-release: the authors' layout; reward-model: a "
                         "sequence-classification reward model (dense mode is then ARGS)")
    io.add_argument("--value-backbone", default=None, help="backbone of a --value-format sia-release checkpoint "
                    "(default: --model)")
    io.add_argument("--tokenizer", default=None, help="tokenizer (default: --model)")
    io.add_argument("--prompts", required=True, help="input jsonl, one object per line with a prompt field")
    io.add_argument("--prompt-field", default="prompt")
    io.add_argument("--output-field", default="generation", help="field the generation is written to")
    io.add_argument("--out", required=True, help="output jsonl (written atomically)")
    io.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    io.add_argument("--batch-size", type=int, default=8)
    io.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    io.add_argument("--dtype", choices=sorted(_DTYPES), default="auto")
    c = p.add_argument_group("SIA (see SIAConfig)")
    d = SIAConfig()
    c.add_argument("--k", type=int, default=d.k)
    c.add_argument("--beta", type=float, default=d.beta)
    c.add_argument("--tau", type=_tau_arg, default=d.tau)
    c.add_argument("--entropy-scope", choices=SCOPES, default=d.entropy_scope)
    c.add_argument("--temperature", type=float, default=d.temperature)
    c.add_argument("--greedy", action="store_true")
    c.add_argument("--sample-from", choices=SCOPES, default=d.sample_from)
    c.add_argument("--gate", choices=GATES, default=d.gate)
    c.add_argument("--rate", type=float, default=None, help="gate random / target_rate: share of steered steps")
    c.add_argument("--first-n", type=int, default=None, help="gate first_n: steer the first N positions")
    c.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    c.add_argument("--eos-token-id", type=_eos_arg, default=MODEL_DEFAULT, help="'model' (default), 'none' or ids")
    c.add_argument("--value-mode", choices=VALUE_MODES, default=d.value_mode)
    c.add_argument("--max-junction-batch", type=int, default=d.max_junction_batch)
    c.add_argument("--seed", type=int, default=0, help="batch i uses seed + i")
    c.add_argument("--backend", choices=BACKENDS, default=None)
    prof = p.add_argument_group("progress and profiling")
    prof.add_argument("--no-progress", action="store_true")
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


def read_prompts(path: str | os.PathLike, field: str = "prompt") -> list[dict]:
    """Rows of a jsonl file; a malformed line is a ValueError naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            if not isinstance(row.get(field), str):
                what = "missing" if field not in row else f"a {type(row[field]).__name__}, not a string"
                raise ValueError(f"{path}, line {lineno}: field {field!r} is {what}")
            if not row[field].strip():
                raise ValueError(f"{path}, line {lineno}: field {field!r} is an empty prompt")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts (the file has no non-blank lines)")
    return rows


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
            vm = ValueModel.from_pretrained(args.value_model, torch_dtype=torch_dtype)
        elif args.value_format == "sia-release":
            vm = ValueModel.from_sia_release(args.value_backbone or args.model, args.value_model, torch_dtype=torch_dtype)
        else:
            vm = ValueModel.from_reward_model(args.value_model, torch_dtype=torch_dtype)
        vm = vm.to(device).eval()
    elif args.gate != "never":
        raise ValueError(f"--value-model is required for --gate {args.gate}")
    return model, tokenizer, vm


def _check_paths(args) -> tuple[Path, Path]:
    src, out = Path(args.prompts), Path(args.out)
    if not src.is_file():
        raise FileNotFoundError(f"--prompts {src}: no such file")
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the input file; choose another path (the input is never overwritten)")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not out.parent.exists():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
    return src, out


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


def generate_main(args: argparse.Namespace) -> int:
    """Run ``sia generate``; returns the exit status (errors raise ValueError / FileNotFoundError)."""
    import torch
    from tqdm import tqdm

    from .generate import generate
    from .profiling import profile_trace, set_nvtx

    src, out = _check_paths(args)
    config = build_config(args)
    rows = read_prompts(src, args.prompt_field)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.nvtx and not set_nvtx(True):
        print("sia: --nvtx: CUDA is not available; NVTX ranges are off", file=sys.stderr)
    model, tokenizer, vm = _load_models(args, device, _DTYPES[args.dtype])
    keys = ("rows", "tokens", "junctions", "base_padded_token_forwards", "value_token_forwards", "flops_total",
            "wall_time")
    totals = dict.fromkeys(keys, 0)
    times: dict[str, float] = {}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, profile_trace(args.profile), \
                tqdm(total=len(rows), desc="sia generate", unit="prompt", disable=args.no_progress,
                     file=sys.stderr) as bar:
            for i in range(0, len(rows), args.batch_size):
                batch = rows[i:i + args.batch_size]
                cfg = config if config.seed is None else config.replace(seed=config.seed + i // args.batch_size)
                res = generate(model, vm, prompts=[r[args.prompt_field] for r in batch], tokenizer=tokenizer,
                               config=cfg)
                for row, text, st in zip(batch, res.texts, res.row_stats):
                    out_row = dict(row)
                    out_row[args.output_field] = text
                    out_row["sia"] = {
                        "tokens": st.tokens, "junctions": st.junctions,
                        "intervention_rate": round(st.intervention_rate, 6),
                        "base_token_forwards": st.base_token_forwards,
                        "value_token_forwards": st.value_token_forwards, "finished": st.finished,
                    }
                    f.write(json.dumps(out_row, ensure_ascii=False) + "\n")
                s = res.stats
                for key in keys:
                    totals[key] += getattr(s, key)
                for name, t in s.times.items():
                    times[name] = times.get(name, 0.0) + t
                bar.update(len(batch))
                bar.set_postfix(rate=f"{totals['junctions'] / max(totals['tokens'], 1):.0%}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(_summary(totals, times), file=sys.stderr)
    print(f"sia: wrote {len(rows)} rows to {out}", file=sys.stderr)
    return 0

"""vLLM with and without SIA: tokens/s and value token-forwards per generated token.

Run in the vLLM environment (``bash .ci/vllm.sh`` builds ``.venv-vllm``)::

    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \\
        .venv-vllm/bin/python bench/bench_vllm.py [--quick] [--csv bench/results/vllm.csv]

Random-weight models built here from configs (no downloads): a Qwen3 base model and a smaller
Llama value model on one word-level vocabulary. One process, two engines on the same base model,
greedy decoding, ``B`` prompts of ``prompt_len`` tokens, ``new_tokens`` each:

* ``plain``   — vLLM with no ``"sia"`` entry in ``additional_config`` (the plugin, if installed,
                stands aside and is argmax-invariant).
* ``plain_sia_engine`` — the same requests (no SIA options) on the SIA engine: the plugin's cost
                for requests that do not opt in.
* ``sia_scan_only`` — SIA requests at tau = +inf: the gate never fires, so this is the plugin's
                per-step cost (scan, top-k restriction, bookkeeping) without any value-model call.
* ``sia20``   — SIA (k = 10, top-k entropy, beta = 1) at the tau that makes ~20 % of the plain
                decode's steps junctions (the ``1 - rate`` quantile of its top-k entropies, read
                from vLLM's top-k logprobs); the measured rate is reported.
* ``dense``   — tau = -inf: every step steered (ARGS's rule through the same plugin).

The methods run interleaved, one warm-up round then ``--repeats`` timed rounds; the fastest round
counts (on a shared machine the other rounds measure the neighbours). Value
token-forwards come from the plugin's per-request accounting (prefix mode: each junction runs the
prompt + tokens so far, plus k candidates).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("VLLM_CPU_KVCACHE_SPACE", "1"), ("OMP_NUM_THREADS", "1")):
    os.environ.setdefault(key, value)

import torch  # noqa: E402

from sia_kernels.bench import append_csv, device_name, git_commit  # noqa: E402

FIELDS = ["date", "commit", "device", "threads", "method", "B", "prompt_len", "new_tokens", "k", "tau", "tokens",
          "wall_s", "tokens_per_s", "wall_ratio_vs_plain", "junctions", "intervention_rate",
          "value_token_forwards", "value_fwd_per_token", "base", "value"]


def build_models(root: Path, vocab: int, quick: bool) -> tuple[Path, Path, str, str]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

    from sia_kernels.value import ValueModel

    words = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    hidden, layers = (128, 2) if quick else (256, 4)
    common = dict(vocab_size=vocab, max_position_embeddings=512, bos_token_id=None, eos_token_id=2, pad_token_id=0,
                  tie_word_embeddings=False)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(Qwen3Config(
        hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 64), head_dim=32, initializer_range=0.1, **common), dtype=torch.float32)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    vhidden = hidden // 2
    backbone = AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=vhidden, intermediate_size=3 * vhidden, num_hidden_layers=2, num_attention_heads=vhidden // 32,
        num_key_value_heads=1, head_dim=32, **common), dtype=torch.float32)
    vm = ValueModel(backbone).eval()
    torch.nn.init.normal_(vm.head.weight, std=0.1)
    vm.tokenizer = tokenizer
    vm.save_pretrained(root / "value", save_backbone=True)
    describe = lambda m, h, n: f"{m}(h{h},l{n},V{vocab},{sum(p.numel() for p in (base if m == 'qwen3' else backbone).parameters()) / 1e6:.1f}M)"  # noqa: E731
    return root / "base", root / "value", describe("qwen3", hidden, layers), describe("llama", vhidden, 2)


def topk_entropies(outputs, k: int) -> list[float]:
    """Top-k entropy (nats) of every decode step, from vLLM's top-k logprobs."""
    ents = []
    for o in outputs:
        for step in o.outputs[0].logprobs:
            lp = torch.tensor(sorted((x.logprob for x in step.values()), reverse=True)[:k], dtype=torch.float64)
            p = torch.softmax(lp, 0)
            ents.append(float(-(p * p.clamp_min(1e-300).log()).sum()))
    return ents


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.2, help="target intervention rate of the sparse run")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller models, fewer tokens (a smoke run)")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "vllm.csv"))
    args = ap.parse_args(argv)
    for name in ("batch", "prompt_len", "new_tokens", "k", "repeats", "vocab"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.rate < 1.0:
        raise SystemExit("--rate must be in (0, 1)")
    if args.quick:
        args.batch, args.new_tokens, args.repeats = min(args.batch, 4), min(args.new_tokens, 16), 1

    from vllm import LLM, SamplingParams

    from sia_kernels.integrations.vllm import SIALogitsProcessor, request_stats

    tmp = tempfile.TemporaryDirectory()
    base_dir, value_dir, base_desc, value_desc = build_models(Path(tmp.name), args.vocab, args.quick)
    g = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(3, args.vocab, (args.prompt_len,), generator=g).tolist()}
               for _ in range(args.batch)]
    engine_kw = dict(model=str(base_dir), dtype="float32", enforce_eager=True, max_model_len=512,
                     max_num_seqs=max(8, args.batch), seed=0, logits_processors=[SIALogitsProcessor])
    plain_params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)

    plain_llm = LLM(**engine_kw)
    ents = topk_entropies(plain_llm.generate(prompts, SamplingParams(
        temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True, logprobs=args.k), use_tqdm=False), args.k)
    tau = float(torch.quantile(torch.tensor(ents, dtype=torch.float64), 1.0 - args.rate))
    # Both engines stay alive (an in-process engine's teardown resets vLLM's process-wide state).
    sia_llm = LLM(**engine_kw, additional_config={"sia": {"value_model": str(value_dir), "log_every": 0}})

    def sia(method, t):
        return SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True,
                              extra_args={"sia": {"tau": t, "beta": 1.0, "k": args.k, "id": method}})

    methods = [("plain", math.inf, plain_llm, plain_params), ("plain_sia_engine", math.inf, sia_llm, plain_params),
               ("sia_scan_only", math.inf, sia_llm, sia("sia_scan_only", math.inf)),
               ("sia20", tau, sia_llm, sia("sia20", tau)), ("dense", -math.inf, sia_llm, sia("dense", -math.inf))]
    walls = {m[0]: [] for m in methods}
    request_stats(sia_llm)
    for rep in range(args.repeats + 1):  # interleaved; the first round warms up and is not timed
        for method, _, llm, params in methods:
            t0 = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            if rep:
                walls[method].append(time.perf_counter() - t0)
    records = request_stats(sia_llm)
    runs = args.repeats + 1
    rows = []
    for method, t, _, _ in methods:
        row = {"method": method, "tau": t, "wall_s": min(walls[method])}
        stats = [s for s in records if s["id"] == method]
        if method.startswith("sia") or method == "dense":
            if len(stats) != runs * args.batch:
                raise RuntimeError(f"expected {runs * args.batch} accounting records for {method}, got {len(stats)}")
            row.update(junctions=sum(s["junctions"] for s in stats) / runs, steps=sum(s["steps"] for s in stats) / runs,
                       value_token_forwards=sum(s["value_token_forwards"] for s in stats) / runs)
        rows.append(row)

    tokens = args.batch * args.new_tokens
    plain_wall = rows[0]["wall_s"]
    common = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "device": device_name(torch.device("cpu")),
              "threads": os.environ["OMP_NUM_THREADS"], "B": args.batch, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "k": args.k, "tokens": tokens, "base": base_desc, "value": value_desc}
    print(f"{'method':16} {'tau':>8} {'tok/s':>8} {'x plain':>8} {'rate':>6} {'value tf/token':>15}")
    for r in rows:
        vtf = round(r.get("value_token_forwards", 0))
        r.update(common, tokens_per_s=round(tokens / r["wall_s"], 2), wall_s=round(r["wall_s"], 4),
                 wall_ratio_vs_plain=round(r["wall_s"] / plain_wall, 3), value_token_forwards=vtf,
                 intervention_rate=round(r.get("junctions", 0) / r["steps"], 4) if r.get("steps") else 0.0,
                 value_fwd_per_token=round(vtf / tokens, 2), tau=round(r["tau"], 4) if math.isfinite(r["tau"]) else r["tau"])
        r["junctions"] = round(r.get("junctions", 0))
        print(f"{r['method']:16} {r['tau']:>8} {r['tokens_per_s']:>8} {r['wall_ratio_vs_plain']:>8} "
              f"{r['intervention_rate']:>6} {r['value_fwd_per_token']:>15}")
    if args.csv and not args.quick:
        append_csv(args.csv, rows, FIELDS)
        print(f"appended {len(rows)} rows to {args.csv}")
    tmp.cleanup()


if __name__ == "__main__":
    main()

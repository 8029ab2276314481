"""How fast can the Triton junction scan possibly be? Compile it for a real GPU, count its SASS.

Runs on any machine with Triton (no GPU): every kernel of the scan is compiled ahead of time
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` at exactly the
plan the launcher picks (``plan_scan`` / ``kernel_meta`` from the kernel module), disassembled
with the cuobjdump that ships in Triton's wheel, and its instructions are counted per region
and multiplied by how often each region runs on data of the configured size.

Method
- Registers and local memory (spills) per thread: ``cuobjdump -res-usage`` (REG, LOCAL); the
  driver-side metadata (n_regs, n_spills) needs a GPU, the cubin's own figures do not.
- ``vectorized``: every global load on the partials kernel's streaming path is 128-bit.
- Streaming loop: the partials kernel peels a split's head tile and its masked tail tiles off
  the body tiles, whose loop (128-bit loads, each tile's issued one tile ahead) is unrolled
  twice. Its cost per tile is the shortest path through one iteration and its loads (every
  tile on the fast path: no exact path, no top-k) over the tiles it covers; ``instr_per_elem``
  of the partials row = that path / the elements a thread loads in it.
- Selection (``loop_costs``, ``selection_model``): every tile holds the same
  selection, a round loop (one gathered vector per slot) around a step loop (one candidate
  each; a slot holding another candidate is rescanned, the step loop's costliest path). The
  head tile (straight-line code) takes the exact path (the block with the most MUFU.EX2: the
  (m, d, s) recompute), the floor (``_seed``: the block with the most REDUX.SUM, its counts;
  plus its read of the first body tile) and one round. A body tile that runs the selection
  costs the one-tile remainder loop's path through its round loop over its fast path; a tail
  tile always takes the exact path and one round; every further round, step and rescan costs
  its loop's path. How many: ``selection_model`` runs the kernel's selection of a whole split
  on iid normal logits (standard deviation ``--logit-std``, 2 by default: flatter rows pass
  the tile gate more often; at 1, B = 64 k = 10 costs ~18 % more) with a fixed seed, and
  counts per tile whether it selects, its rounds, steps and rescans. For K_PAD > 64 (no
  round loops) a selecting tile costs the costliest forward path (a bitonic sort of the
  tile). Not counted: exact-path body tiles (-inf or NaN runs, the rare moves of the
  reference) and, for a body tile short of k keys, its vector maxima.
- Merge: its straight-line code once per program; the compaction loops (run by the last
  program) once per block of rows. ``k`` divisible by 16 is compiled as such (Triton's
  launcher specialises it: the compaction's copies are 128-bit).
- Issue-bound time: each warp issues at most one instruction per clock and each SM's four
  schedulers one each, with programs spread evenly over the SMs: time = W * max(1, warps per
  SM / 4) / clock per kernel, W the instructions a warp issues. This is a LOWER BOUND on the
  time: no stalls (memory latency, barriers, MUFU/shuffle throughput, dual-issue limits), no
  launch overhead, all programs resident at once. It says whether the code can keep up with
  HBM, not that it will. ``hbm_floor_us``: the logits read once at the peak bandwidth.
- GPUs: H100 SXM (sm_90): 132 SMs, 1.83 GHz, 3.35 TB/s, so ~18 thread-instructions per bf16
  element at full bandwidth; A100 SXM 80 GB (sm_80): 108 SMs, 1.41 GHz, 2.04 TB/s (~19).

Limits: counts are static instructions on the chosen path (predicated-off instructions count,
as they take an issue slot); the selection model's iid logits do not stand for sorted or
adversarial rows (the selection then runs on every tile: correct, slower), and a tile holding a
-inf logit (a masked vocabulary) takes the exact path, about twice the fast path's cost. The
default scan settings are compiled (``entropy_scope="topk"``, ``sample_from="topk"``;
``--sample-from full`` compiles the full-vocabulary sampler, whose Philox noise costs ~100
instructions per element).

    python bench/sass_budget.py                      # the whole table (a few minutes)
    python bench/sass_budget.py --arch 90 --B 64 --k 10 --dtype bf16 --V 151936 --csv
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sia_kernels.kernels import junction_scan as jsk  # noqa: E402

COLUMNS = ["arch", "dtype", "B", "k", "V", "kernel", "regs", "spill_bytes", "vectorized", "instr_per_elem",
           "issue_bound_us", "hbm_floor_us"]


class Gpu(NamedTuple):
    name: str
    sms: int
    clock_hz: float
    hbm_bytes_per_s: float


# The selection model's logits: iid normal with this standard deviation (LLM logits over a
# vocabulary spread by ~2-3; flatter rows pass the tile gate more often). --logit-std sets it.
STD = 2.0
GPUS = {90: Gpu("H100 SXM", 132, 1.83e9, 3.35e12), 80: Gpu("A100 SXM 80GB", 108, 1.41e9, 2.039e12)}
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}
_TL = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}
# Argument types of the two kernels, by name (pointers are 16-byte aligned torch allocations).
_ARG_TYPES = {
    "logits_ptr": None, "temperature_ptr": "*fp32", "seed_ptr": "*i64", "stats_ptr": "*fp32",
    "topk_keys_ptr": "*i64", "gumbel_keys_ptr": "*i64",
    "tau_ptr": "*fp32", "ticket_ptr": "*i32",
    "entropy_ptr": "*fp32", "lse_ptr": "*fp32", "gate_ptr": "*u8", "topk_ids_ptr": "*i64",
    "topk_logprobs_ptr": "*fp32", "base_token_ptr": "*i64", "junction_rows_ptr": "*i64",
    "num_junctions_ptr": "*i32", "junction_ids_ptr": "*i64", "junction_logprobs_ptr": "*fp32",
}


def _bin(tool: str) -> str:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    if not path.exists():
        raise FileNotFoundError(f"{tool} not found in Triton's wheel at {path}")
    return str(path)


@functools.lru_cache(maxsize=None)
def compile_kernel(name: str, arch: int, dtype: torch.dtype, meta_items: tuple,
                   divisible: tuple = ()) -> tuple[str, dict]:
    """(SASS text, {regs, local}) of kernel ``name`` compiled for sm_``arch`` with ``meta``;
    the int arguments in ``divisible`` are specialised as multiples of 16."""
    fn = jsk.KERNELS[name]
    meta = dict(meta_items)
    options = {opt: meta.pop(opt) for opt in ("num_warps", "maxnreg") if opt in meta}  # launch options
    sig, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in meta:
            sig[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            sig[arg] = _ARG_TYPES[arg] or "*" + _TL[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[arg] = "i32"
            if arg in divisible:  # what Triton's launcher specialises an int divisible by 16 to
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=meta, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([_bin("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                             check=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|LOCAL|SHARED):(\d+)", res)}
    return sass, usage


class Instr(NamedTuple):
    addr: int
    text: str
    target: int | None  # branch target
    uncond: bool  # unconditional branch or exit: no fall-through


def parse_sass(sass: str) -> list[Instr]:
    out = []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass):
        addr, text = int(m.group(1), 16), m.group(2).strip()
        op = text.split()[1] if text.startswith("@") else text.split()[0]
        if op.startswith("NOP"):
            continue
        br = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        target = int(br.group(1), 16) if br else None
        out.append(Instr(addr, text, target, not text.startswith("@") and op in ("BRA", "EXIT")
                         and "P" not in text.split()[-1][:2]))
    return out


class Cfg(NamedTuple):
    blocks: list[tuple[int, int]]  # [first, last] instruction indices
    succ: list[list[int]]
    loops: list[tuple[int, int, frozenset]]  # (header, latch, body blocks), largest body first


def build_cfg(code: list[Instr]) -> Cfg:
    """Basic blocks, edges, dominators and natural loops of the SASS (loops may have blocks
    laid out after their back edge: Triton/ptxas move cold code out of line)."""
    pos = {ins.addr: i for i, ins in enumerate(code)}
    leaders = {0}
    for i, ins in enumerate(code):
        if ins.target is not None and ins.target in pos:
            leaders.add(pos[ins.target])
        if ins.target is not None or ins.text.split()[-1].startswith("EXIT") or "EXIT" in ins.text:
            leaders.add(i + 1)
    starts = sorted(x for x in leaders if x < len(code))
    blocks = [(a, (starts[n + 1] if n + 1 < len(starts) else len(code)) - 1) for n, a in enumerate(starts)]
    block_of = {a: n for n, (a, _) in enumerate(blocks)}
    succ = []
    for n, (a, b) in enumerate(blocks):
        last = code[b]
        out = []
        if last.target is not None and last.target in pos:
            out.append(block_of[pos[last.target]])
        is_exit = "EXIT" in last.text and not last.text.startswith("@")
        if not last.uncond and not is_exit and n + 1 < len(blocks):
            out.append(n + 1)
        succ.append(out)
    n_blocks = len(blocks)
    dom = [set(range(n_blocks)) for _ in range(n_blocks)]
    dom[0] = {0}
    pred = [[] for _ in range(n_blocks)]
    for u, vs in enumerate(succ):
        for v in vs:
            pred[v].append(u)
    changed = True
    while changed:
        changed = False
        for v in range(1, n_blocks):
            new = set.intersection(*(dom[u] for u in pred[v])) if pred[v] else set()
            new = new | {v}
            if new != dom[v]:
                dom[v], changed = new, True
    loops = []
    for u, vs in enumerate(succ):
        for v in vs:
            if v in dom[u]:  # back edge u -> v
                body, stack = {v, u}, ([u] if u != v else [])
                while stack:
                    x = stack.pop()
                    for p in pred[x]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
                loops.append((v, u, frozenset(body)))
    size = lambda lp: sum(blocks[x][1] - blocks[x][0] + 1 for x in lp[2])
    return Cfg(blocks, succ, sorted(loops, key=size, reverse=True))


def _size(cfg: Cfg, x: int) -> int:
    return cfg.blocks[x][1] - cfg.blocks[x][0] + 1


def _dist(cfg: Cfg, body, src: int, back: set) -> dict[int, float]:
    """Fewest instructions from the start of block ``src`` to the end of each block of
    ``body``, without the back edges ``back`` (Dijkstra)."""
    import heapq

    dist = {src: _size(cfg, src)}
    heap = [(dist[src], src)]
    while heap:
        d, x = heapq.heappop(heap)
        if d > dist.get(x, math.inf):
            continue
        for y in cfg.succ[x]:
            if y in body and (x, y) not in back and d + _size(cfg, y) < dist.get(y, math.inf):
                dist[y] = d + _size(cfg, y)
                heapq.heappush(heap, (dist[y], y))
    return dist


def _through(cfg: Cfg, body, back: set, src: int, stops: list[int]) -> float:
    """Fewest instructions from ``src`` through ``stops`` (in order), end of the last included."""
    total, at = 0.0, src
    for x in stops:
        dist = _dist(cfg, body, at, back)
        if x not in dist:
            return math.inf
        total += dist[x] - (_size(cfg, at) if total else 0)
        at = x
    return total


def loop_costs(code: list[Instr]) -> dict:
    """Costs (instructions a warp issues) of the partials kernel, by path. The kernel peels a
    split's head tile (straight-line code) and its masked tail tiles (the tail loop, loads
    predicated per column) off the body tiles (128-bit loads issued one tile ahead; unrolled,
    plus a one-tile remainder loop; the last body tile peeled); every tile holds the same
    selection, a *round* loop (one gathered vector per slot) around a *step* loop (one
    candidate each).

    ``stream``: one body-loop iteration on the cheapest path (no tile leaves the fast path),
    with ``loads`` its global loads (the tiles it covers). ``extract``: a body tile that takes
    the selection with one round and no step (the one-tile loop); ``round`` / ``step``: one
    more iteration of those loops. ``outside``: entry to exit outside every loop, through the
    head tile's exact path (the block with the most MUFU.EX2: the (m, d, s) recompute), the
    floor (``_seed``) and one of its rounds; ``first_body``: the floor's read of the first body
    tile (the head's blocks with 128-bit loads), taken when the split has a body tile.
    ``tail``: one tail-loop iteration through its exact path and one round.
    Without round loops (the bitonic top-k, K_PAD > 64: one loop for every tile, its body loads
    in one branch) ``extract``, the head tile and ``tail`` take the loop's costliest forward path
    (a bitonic sort of the tile) and the rounds and steps cost 0. ``path``: the stream path's
    instructions."""
    cfg = build_cfg(code)
    n = len(cfg.blocks)
    instrs = lambda x: code[cfg.blocks[x][0]:cfg.blocks[x][1] + 1]  # noqa: E731
    loads = lambda blocks: [ins for x in blocks for ins in instrs(x) if re.search(r"\bLDG\b", ins.text)]  # noqa: E731
    back = {(lp[1], lp[0]) for lp in cfg.loops}
    ldg_loops = [lp for lp in cfg.loops if loads(lp[2])]
    # a body tile's loads are 128-bit and unmasked (at most one predicate, for the whole tile);
    # a masked (head or tail) tile's carry a predicate per column
    preds = lambda blocks: {i.text.split()[0] for i in loads(blocks) if i.text.startswith("@")}  # noqa: E731
    body_load = lambda x: bool(loads([x])) and len(preds([x])) <= 1 and all(".128" in i.text for i in loads([x]))  # noqa: E731
    body_loops = [lp for lp in ldg_loops if any(body_load(x) for x in lp[2])]
    tail_loops = [lp for lp in ldg_loops if lp not in body_loops]
    inner = [lp for lp in cfg.loops if lp not in ldg_loops]
    rounds = [lp for lp in inner if any(o is not lp and o[0] in lp[2] for o in inner)]
    steps = [lp for lp in inner if lp not in rounds and any(lp[0] in r[2] for r in rounds)]
    iteration = lambda lp: _dist(cfg, lp[2], lp[0], back)[lp[1]]  # noqa: E731
    ex2 = lambda x: sum("MUFU.EX2" in ins.text for ins in instrs(x))  # noqa: E731

    def stream_path(lp, through=body_load):  # cheapest head -> latch through the (body) load blocks
        head, latch, body = lp
        stops = sorted((x for x in body if through(x) and x != head), key=lambda x: cfg.blocks[x][0]) + [latch]
        path, total, at = [head], 0.0, head
        for stop in stops:
            fwd = _dist(cfg, body, at, back)
            leg, x = [], stop
            while x != at:
                leg.append(x)
                x = min((p for p in body if x in cfg.succ[p] and (p, x) not in back and p in fwd), key=lambda p: fwd[p])
            total += fwd[stop] - (_size(cfg, at) if total else 0)
            path += leg[::-1]
            at = stop
        return total, path

    main = max(body_loops, key=lambda lp: len(loads(stream_path(lp)[1])))
    single = min(body_loops, key=lambda lp: len(loads(stream_path(lp)[1])))
    stream, path = stream_path(main)
    nested = lambda region: [lp for lp in inner if lp[0] in region]  # noqa: E731

    def fix_block(region, path_blocks):  # the exact path's recompute: most exp2 off the stream path
        cands = [x for x in region if x not in path_blocks and not any(x in lp[2] for lp in nested(region))]
        return max(cands, key=ex2) if cands else None

    def longest(region, src, dst):
        order = sorted(region, key=lambda x: cfg.blocks[x][0])
        best = {src: _size(cfg, src)}
        for _ in range(len(order)):
            for x in order:
                for y in cfg.succ[x]:
                    if x in best and y in region and (x, y) not in back:
                        best[y] = max(best.get(y, 0), best[x] + _size(cfg, y))
        return best.get(dst, math.inf)

    outside_region = frozenset(x for x in range(n) if not any(x in lp[2] for lp in ldg_loops))
    # the head tile: the code before the first tile loop (the peeled last body tile comes after it)
    first_loop = min(cfg.blocks[lp[0]][0] for lp in ldg_loops)
    head_region = frozenset(x for x in outside_region if cfg.blocks[x][0] < first_loop)
    exits = [x for x in range(n) if not cfg.succ[x]]
    head_rounds = [lp for lp in rounds if lp[0] in head_region]
    all_blocks = frozenset(range(n))
    fix_head = fix_block(head_region, set())
    to_exit = lambda dist: min(dist.get(x, math.inf) for x in exits)  # noqa: E731
    if rounds:
        s_round = next(lp for lp in rounds if lp[0] in single[2])
        stp = next(lp for lp in steps if lp[0] in s_round[2])
        round_cost, step_cost = iteration(s_round), iteration(stp)
        # a step whose slot holds another candidate rescans it: the step loop's costliest path
        rescan = longest(stp[2], stp[0], stp[1]) - step_cost
        extract = _through(cfg, single[2], back, single[0], [s_round[0], single[1]])
        # the head's floor (``_seed``): the block with the most REDUX.SUM (its counts)
        seed = max(head_region, key=lambda x: sum("REDUX.SUM" in ins.text for ins in instrs(x)))
        via = sorted({fix_head, seed, head_rounds[0][0]}, key=lambda x: cfg.blocks[x][0])
        # the floor's read of the first body tile (taken when the split has one): its 128-bit loads
        first_body = sum(_size(cfg, x) for x in head_region if x not in via and body_load(x))
        outside = _through(cfg, all_blocks, back, 0, via) + to_exit(_dist(cfg, all_blocks, head_rounds[0][0], back)) \
            - _size(cfg, head_rounds[0][0])
    else:
        round_cost = step_cost = rescan = first_body = 0
        extract = longest(single[2], single[0], single[1])
        outside = to_exit(_dist(cfg, all_blocks, 0, back))
    tail = 0.0
    if not tail_loops:  # one loop for every tile (the bitonic top-k): the head is a selection tile too
        outside, tail = outside + extract, extract
    else:
        tl_ = tail_loops[0]
        fix_t = fix_block(tl_[2], set(stream_path(tl_, lambda x: bool(loads([x])))[1]))
        t_round = [lp for lp in rounds if lp[0] in tl_[2]]
        stops = [fix_t] + ([t_round[0][0]] if t_round else []) + [tl_[1]]
        tail = _through(cfg, tl_[2], back, tl_[0], stops) if t_round else longest(tl_[2], tl_[0], tl_[1])
    return dict(stream=stream, loads=len(loads(path)), extract=extract, single=stream_path(single)[0],
                round=round_cost, step=step_cost, rescan=rescan, outside=outside, tail=tail, first_body=first_body,
                path=[ins for b in path for ins in instrs(b)])


def loads_vectorized(path: list[Instr]) -> bool:
    """Every global load on the streaming path is 128-bit (LDG.E.128)."""
    lds = [ins.text for ins in path if re.search(r"\bLDG\b", ins.text)]
    return bool(lds) and all(".128" in t for t in lds)


def _extract_tile(x: np.ndarray, best: list, k: int, tt: int, floor: float) -> tuple[int, int, int]:
    """One row's tile ``x`` [nv, vec] through the kernel's selection, ``best`` (the kept
    values) updated in place: while the row holds fewer than k, ``floor`` (``_seed``'s) picks
    the hot vectors; once it holds k, the tile gate does (a vector whose sum of e^z reaches
    e^(k-th best), less the 1e-4 margin). Rounds: each of the ``tt`` slots gathers its next
    hot vector (vector v is slot v % tt's), the candidates are those above the floor or the
    k-th best at the round's start; steps take the largest while it beats the k-th best, a
    step whose slot holds another candidate rescans it. Returns (rounds, steps, rescans)."""
    nv = len(x)
    if len(best) < k:
        hot = x.max(1) >= floor
    else:
        kth = min(best)
        hot = np.exp(x - kth).sum(1) >= 0.9999
    rounds = steps = rescans = 0
    while hot.any():
        rounds += 1
        picked = [next(v for v in range(t, nv, tt) if hot[v]) for t in range(tt) if hot[t::tt].any()]
        full = len(best) >= k
        thr = min(best) if full else floor
        slots = [c for c in (sorted((y for y in x[v] if (y > thr if full else y >= thr)), reverse=True)
                             for v in picked) if c]
        while slots:
            i = max(range(len(slots)), key=lambda n: slots[n][0])
            if len(best) >= k:
                if slots[i][0] <= min(best):
                    break
                best.remove(min(best))
            best.append(slots[i][0])
            steps += 1
            rescans += len(slots[i]) > 1
            slots[i] = slots[i][1:]
            if not slots[i]:
                slots.pop(i)
        hot[picked] = False
    return rounds, steps, rescans


def selection_model(n_tiles: int, nv: int, vec: int, tt: int, k: int, rows: int, floor_tiles: int,
                    std: float = STD, trials: int = 32) -> dict:
    """The selection of a whole split (``n_tiles`` tiles of ``nv`` vectors), run on iid normal
    logits (standard deviation ``std``) exactly as the kernel does it (``_extract_tile``; the
    floor: the k-th largest vector maximum of the first ``floor_tiles`` tiles, -inf if they
    have fewer than k vectors; a fixed seed). Per tile, the mean of: whether it runs the
    selection (``sel``), its rounds, steps and rescans; with ``rows`` rows in a program, the
    busiest row's (control flow is shared). Entry 0 is the head tile. Not modelled: an f32
    floor's rounding down to 16 monotone bits (a few more candidates)."""
    rng = np.random.default_rng(0)
    out = np.zeros((n_tiles, 4))
    for _ in range(trials):
        worst = np.zeros((n_tiles, 4))
        for _ in range(rows):
            x = (std * rng.standard_normal((n_tiles, nv, vec))).astype(np.float32)
            vmax = np.sort(x[:floor_tiles].max(2).ravel())
            floor = vmax[-k] if len(vmax) >= k else -np.inf
            best: list[float] = []
            for t in range(n_tiles):
                r, st, rs = _extract_tile(x[t], best, k, tt, floor)
                worst[t] = np.maximum(worst[t], [r > 0, r, st, rs])
        out += worst
    sel, rounds, steps, rescans = (out / trials).T
    return dict(sel=sel.tolist(), rounds=rounds.tolist(), steps=steps.tolist(), rescans=rescans.tolist())


def issue_time_s(warp_instr: float, programs: int, warps: int, gpu: Gpu) -> float:
    per_sm = math.ceil(programs / gpu.sms)
    return warp_instr * max(1.0, per_sm * warps / 4) / gpu.clock_hz


def budget(arch: int, dtype_name: str, b: int, k: int, v: int, sample_full: bool = False,
           logit_std: float = STD) -> list[dict]:
    gpu, dtype = GPUS[arch], DTYPES[dtype_name]
    p = jsk.plan_scan(b, v, k, num_sms=gpu.sms)
    meta = jsk.kernel_meta(p, dtype, scope_full=False, sample_full=sample_full)
    floor = b * v * torch.empty((), dtype=dtype).element_size() / gpu.hbm_bytes_per_s
    rows, total_instr, total_s = [], 0.0, 0.0
    base = dict(arch=arch, dtype=dtype_name, B=b, k=k, V=v)

    # ---- partials
    sass, use = compile_kernel("partials", arch, dtype, tuple(sorted(meta["partials"].items())))
    c = loop_costs(parse_sass(sass))
    mp = meta["partials"]
    threads = 32 * p.warps1
    per_thread = p.rows1 * p.block_v / threads
    per_iter = c["loads"] * mp["VEC"]  # elements a thread loads per body-loop iteration
    stream = c["stream"] * per_thread / per_iter  # per tile
    n_tiles = math.ceil((p.split_len + mp["VEC"] - 1) / p.block_v)
    body_tiles = max(p.split_len // p.block_v, 1) - 1
    # the floor sees the head tile and the first body tile (if the split has one)
    sel = selection_model(n_tiles, p.block_v // mp["VEC"], mp["VEC"], mp["TT"], k, p.rows1, 1 + (body_tiles > 0),
                          logit_std)
    extra = c["extract"] - c["single"]  # a tile's selection (one round, no step) over its fast path
    more = lambda t: max(sel["rounds"][t] - sel["sel"][t], 0.0) * c["round"]  # noqa: E731  rounds past the first
    body = range(1, 1 + body_tiles)
    w1 = (c["outside"] + more(0)  # the head: straight-line code, its first round in ``outside``
          + (body_tiles > 0) * c["first_body"]
          + sum(stream + sel["sel"][t] * extra + more(t) for t in body)
          + sum(c["tail"] + more(t) for t in range(1 + body_tiles, n_tiles))
          + sum(sel["steps"]) * c["step"] + sum(sel["rescans"]) * c["rescan"])
    programs1 = math.ceil(b / p.rows1) * p.splits
    t1 = issue_time_s(w1, programs1, p.warps1, gpu)
    instr1 = w1 * threads * programs1
    rows.append(dict(base, kernel="partials", regs=use.get("reg", 0), spill_bytes=use.get("local", 0),
                     vectorized=loads_vectorized(c["path"]), instr_per_elem=round(c["stream"] / per_iter, 2),
                     issue_bound_us=round(t1 * 1e6, 3), hbm_floor_us=round(floor * 1e6, 3)))
    total_instr += instr1
    total_s += t1

    # ---- merge (+ compaction by the last program)
    sass, use = compile_kernel("merge", arch, dtype, tuple(sorted(meta["merge"].items())),
                               ("k",) if k % 16 == 0 else ())
    code = parse_sass(sass)
    in_loops = sum(sum(_size(cfg, x) for x in lp[2]) for cfg in [build_cfg(code)] for lp in cfg.loops)
    programs2 = math.ceil(b / p.rows2)
    w2 = len(code) - in_loops
    t2 = issue_time_s(w2, programs2, p.warps2, gpu)
    compact = in_loops * math.ceil(b / meta["merge"]["CROWS"])
    t2 += compact / gpu.clock_hz
    instr2 = (w2 * programs2 + compact) * 32 * p.warps2
    rows.append(dict(base, kernel="merge", regs=use.get("reg", 0), spill_bytes=use.get("local", 0),
                     vectorized="", instr_per_elem=round(instr2 / (b * v), 2),
                     issue_bound_us=round(t2 * 1e6, 3), hbm_floor_us=round(floor * 1e6, 3)))
    total_instr += instr2
    total_s += t2
    rows.append(dict(base, kernel="total", regs=max(r["regs"] for r in rows),
                     spill_bytes=sum(r["spill_bytes"] for r in rows), vectorized=rows[0]["vectorized"],
                     instr_per_elem=round(total_instr / (b * v), 2), issue_bound_us=round(total_s * 1e6, 3),
                     hbm_floor_us=round(floor * 1e6, 3)))
    rows[0]["_detail"] = dict(plan=p, per_thread=per_thread, n_tiles=n_tiles, w1=w1,
                              **{"head_" + x: sel[x][0] for x in ("rounds", "steps", "rescans")},
                              sel_tiles=sum(sel["sel"][1:]), rounds=sum(sel["rounds"][1:]),
                              steps=sum(sel["steps"][1:]), rescans=sum(sel["rescans"][1:]),
                              **{x: c[x] for x in ("stream", "loads", "extract", "single", "round", "step", "rescan",
                                                   "outside", "tail")})
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", choices=sorted(GPUS), default=sorted(GPUS, reverse=True))
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "f32"])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--k", type=int, nargs="+", default=[10, 64])
    ap.add_argument("--V", type=int, nargs="+", default=[151936, 151646, 32000])
    ap.add_argument("--sample-from", choices=["topk", "full"], default="topk")
    ap.add_argument("--logit-std", type=float, default=STD,
                    help="standard deviation of the selection model's iid normal logits")
    ap.add_argument("--csv", action="store_true", help="print CSV rows with the columns " + ",".join(COLUMNS))
    ap.add_argument("--out", help="also write the CSV rows to this file")
    args = ap.parse_args(argv)
    for name in ("B", "k", "V"):
        if any(x < 1 for x in getattr(args, name)):
            raise SystemExit(f"--{name} takes positive integers")
    if not 0 < args.logit_std < 100:
        raise SystemExit("--logit-std takes a number in (0, 100)")
    rows = []
    for arch in args.arch:
        for dtype in args.dtype:
            for v in args.V:
                for b in args.B:
                    for k in args.k:
                        rows += budget(arch, dtype, b, k, v, sample_full=args.sample_from == "full",
                                       logit_std=args.logit_std)
    lines = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    if args.csv:
        print("\n".join(lines))
    else:
        print(f"{'arch':>4} {'dtype':>5} {'B':>4} {'k':>3} {'V':>7} {'regs':>4} {'spill':>5} {'vec':>5} "
              f"{'stream/el':>9} {'all/el':>7} {'issue us':>9} {'floor us':>9} {'x floor':>7}")
        for r in rows:
            if r["kernel"] == "partials":
                part = r
            if r["kernel"] == "total":
                print(f"{r['arch']:>4} {r['dtype']:>5} {r['B']:>4} {r['k']:>3} {r['V']:>7} {r['regs']:>4} "
                      f"{r['spill_bytes']:>5} {str(r['vectorized']):>5} {part['instr_per_elem']:>9} "
                      f"{r['instr_per_elem']:>7} {r['issue_bound_us']:>9} {r['hbm_floor_us']:>9} "
                      f"{r['issue_bound_us'] / r['hbm_floor_us']:>7.2f}")
    return rows


if __name__ == "__main__":
    main()

"""SIA inside vLLM: a logits-processor plugin (DESIGN.md §4b).

Engine-wide settings come from ``additional_config={"sia": {...}}`` (``--additional-config`` on the
server)::

    value_model         directory written by ValueModel.save_pretrained (required for SIA requests)
    dtype               "auto" (the served model's dtype), "float32", "bfloat16" or "float16"
    backend             junction_scan backend (None: automatic)
    max_junction_batch  junction rows per value forward (default 64)
    log_every           one log line per this many steps with SIA rows (default 1000; 0: never)

A request opts in with ``SamplingParams(extra_args={"sia": {"tau": 1.0, "beta": 1.0, "k": 10}})``,
or over HTTP with flat ``vllm_xargs`` keys ``sia_tau``, ``sia_beta``, ``sia_k``, ... (the server
types ``vllm_xargs`` as a flat dict). Keys: ``tau``, ``beta``, ``k``, ``entropy_scope``,
``sample_from`` (as in :class:`~sia_kernels.config.SIAConfig`; ``tau``/``beta`` may be strings such
as ``"-inf"``, which JSON cannot carry as numbers) and ``id`` (an opaque label kept in the request's
accounting). A request without them is untouched.

Per step, the opted-in rows go through :func:`~sia_kernels.ops.junction_scan` (grouped by ``k`` and
``entropy_scope``); the junction rows' top-k candidates are scored by the
:class:`~sia_kernels.value.ValueModel` on prompt + output so far (prefix mode); the processor
returns logits that make vLLM's own sampler draw SIA's distribution: a junction row gets ``-inf``
outside its top-k and ``logprob + beta * V`` inside, so that vLLM's temperature gives
``softmax((logprob + beta * V) / T)`` and greedy decoding takes SIA's choice; other opted-in rows
keep their logits, restricted to their top-k when ``sample_from="topk"`` (the default, as in SIA).

vLLM runs ``validate_params`` in the front end at admission and turns its ``ValueError`` into HTTP
400. Request-only problems (unknown keys, tau NaN, k < 1, beta not finite) are caught there; so are
the engine's (no value model configured, k > vocabulary, a value model whose tokenizer differs from
the served model's, Model Runner V2 active), read from the front end's engine config.

Model Runner V2 (vLLM's default on GPUs with Triton) has a different processor interface. This class
also subclasses it, so that installing the plugin never breaks a V2 engine, but under V2 it stands
aside (one log line) and SIA requests are rejected with the setting to use:
``VLLM_USE_V2_MODEL_RUNNER=0``.
"""
from __future__ import annotations

import inspect
import json
import math
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

try:
    from vllm.logger import init_logger
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
except ImportError as e:
    raise ImportError("sia_kernels.integrations.vllm needs vLLM (its V1 engine): on CPUs "
                      "`pip install -r requirements-vllm.txt` in its own environment (see .ci/vllm.sh), "
                      "on GPUs the matching `vllm` build") from e

from ..config import SIAConfig
from ..ops import junction_scan

try:  # Model Runner V2's interface (vLLM >= 0.30); import-light by design
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Base
    _BASES: tuple = (LogitsProcessor, _V2Base)
except ImportError:
    _BASES = (LogitsProcessor,)

__all__ = ["SIALogitsProcessor", "RequestStats", "RequestOptions", "EngineSettings", "request_options", "engine_settings",
           "request_stats", "REQUEST_KEYS", "ENGINE_KEYS"]

logger = init_logger("vllm.sia_kernels")  # under "vllm": vLLM's log handlers and format apply

REQUEST_KEYS = ("tau", "beta", "k", "entropy_scope", "sample_from", "id")
ENGINE_KEYS = ("value_model", "dtype", "backend", "max_junction_batch", "log_every")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
V2_MESSAGE = ("vLLM's Model Runner V2 is active; the SIA plugin supports the V1 runner only and stands aside. "
              "Start vLLM with VLLM_USE_V2_MODEL_RUNNER=0 to serve SIA requests.")
NO_VALUE_MODEL = ("this request asks for SIA but the engine has no value model configured: start vLLM with "
                  "additional_config={'sia': {'value_model': '<dir written by ValueModel.save_pretrained>'}}")
FINISHED_KEPT = 4096  # accounting records of finished requests kept per processor


# ---------------------------------------------------------------- options

@dataclass(frozen=True)
class RequestOptions:
    """A request's validated SIA options: the SIAConfig fields it sets, and its label."""

    config: SIAConfig
    id: object = None


def _number(name: str, x) -> float:
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            raise ValueError(f"sia option {name!r} must be a number, got the string {x!r}") from None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"sia option {name!r} must be a number, got {x!r}")
    return float(x)


def _integer(name: str, x) -> int:
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"sia option {name!r} must be an integer, got {x!r}")
    return x


def request_options(sampling_params) -> RequestOptions | None:
    """The SIA options of a request (``None``: it did not opt in), validated.

    Reads ``extra_args["sia"]`` (a dict) and flat ``extra_args["sia_<key>"]``; raises ValueError
    for unknown keys, a non-dict ``"sia"`` entry, or values SIAConfig rejects.
    """
    extra = getattr(sampling_params, "extra_args", None) or {}
    if not isinstance(extra, dict):
        raise ValueError(f"extra_args must be a dict, got {type(extra).__name__}")
    nested = extra.get("sia")
    flat = {k[4:]: v for k, v in extra.items() if isinstance(k, str) and k.startswith("sia_")}
    if nested is None and not flat:
        return None
    if nested is not None and not isinstance(nested, dict):
        raise ValueError(f"extra_args['sia'] must be a dict of SIA options, got {type(nested).__name__}")
    opts = dict(nested or {})
    both = sorted(set(opts) & set(flat))
    if both:
        raise ValueError(f"sia option(s) {both} given both nested and flat (sia_<key>); give each once")
    opts.update(flat)
    unknown = sorted(set(opts) - set(REQUEST_KEYS))
    if unknown:
        raise ValueError(f"unknown sia option(s) {unknown}; known: {list(REQUEST_KEYS)}")
    label = opts.pop("id", None)
    if label is not None and not isinstance(label, (str, int)):
        raise ValueError(f"sia option 'id' must be a string or an integer, got {label!r}")
    kw = {}
    for name in ("tau", "beta"):
        if name in opts:
            kw[name] = _number(name, opts[name])
    if "k" in opts:
        kw["k"] = _integer("k", opts["k"])
    for name in ("entropy_scope", "sample_from"):
        if name in opts:
            kw[name] = opts[name]
    if "tau" in kw and math.isnan(kw["tau"]):
        raise ValueError("sia option 'tau' is NaN; use 'inf' (never steer) or '-inf' (always steer)")
    try:
        return RequestOptions(SIAConfig(**kw), label)
    except (TypeError, ValueError) as e:  # vLLM answers HTTP 400 for ValueError only
        raise ValueError(f"invalid sia options: {e}") from None


@dataclass(frozen=True)
class EngineSettings:
    """The engine-wide ``additional_config["sia"]`` entry, validated."""

    value_model: str | None = None
    dtype: str = "auto"
    backend: str | None = None
    max_junction_batch: int = 64
    log_every: int = 1000


def engine_settings(additional_config) -> EngineSettings | None:
    """``additional_config["sia"]`` as :class:`EngineSettings` (``None`` when absent); ValueError on
    unknown keys or bad values (an engine configured wrongly fails at start)."""
    if not additional_config or "sia" not in additional_config:
        return None
    raw = additional_config["sia"]
    if isinstance(raw, str):  # a JSON string, as some front ends pass it
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"additional_config['sia'] must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ENGINE_KEYS))
    if unknown:
        raise ValueError(f"unknown additional_config['sia'] key(s) {unknown}; known: {list(ENGINE_KEYS)}")
    s = EngineSettings(**raw)
    if s.value_model is not None and not isinstance(s.value_model, (str, Path)):
        raise ValueError(f"additional_config['sia']['value_model'] must be a path, got {s.value_model!r}")
    if s.dtype != "auto" and s.dtype not in DTYPES:
        raise ValueError(f"additional_config['sia']['dtype'] must be 'auto' or one of {list(DTYPES)}, got {s.dtype!r}")
    for name, lo in (("max_junction_batch", 1), ("log_every", 0)):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"additional_config['sia'][{name!r}] must be an int >= {lo}, got {v!r}")
    if s.backend is not None:
        SIAConfig(backend=s.backend)  # validates the name (ValueError)
    return s


# ---------------------------------------------------------------- engine checks (front end)

def _vocab_problem(served_tokenizer, value_dir: str) -> str | None:
    """Why the value model at ``value_dir`` cannot score the served model's ids (None: it can), read
    from the files alone (the front end does not load weights)."""
    d = Path(value_dir)
    if not (d / "value_config.json").exists():
        return f"the SIA value model directory {str(d)!r} holds no value_config.json (ValueModel.save_pretrained)"
    if served_tokenizer is None or not (d / "tokenizer_config.json").exists():
        return None  # the worker compares vocabulary sizes on the loaded model
    from transformers import AutoTokenizer

    value_vocab = AutoTokenizer.from_pretrained(str(d)).get_vocab()
    if dict(served_tokenizer.get_vocab()) != value_vocab:
        return (f"the SIA value model at {str(d)!r} has a different tokenizer from the served model's; "
                "SIA needs a value model on the served model's vocabulary")
    return None


_ENGINE_PROBLEMS: dict[int, tuple] = {}  # id(vllm_config) -> (weakref or config, problem or None, vocab)


def _engine_problem(vllm_config, tokenizer) -> tuple[str | None, int]:
    """``(why this engine cannot serve SIA requests or None, vocabulary size)``, once per engine."""
    vocab = vllm_config.model_config.get_vocab_size()
    if vllm_config.use_v2_model_runner:  # a property of the environment: read every time
        return V2_MESSAGE, vocab
    key = id(vllm_config)
    hit = _ENGINE_PROBLEMS.get(key)
    if hit is not None and hit[0] is vllm_config:
        return hit[1], hit[2]
    settings = engine_settings(vllm_config.additional_config)
    if settings is None or settings.value_model is None:
        problem = NO_VALUE_MODEL
    else:
        problem = _vocab_problem(tokenizer, str(settings.value_model))
    _ENGINE_PROBLEMS[key] = (vllm_config, problem, vocab)
    return problem, vocab


def _front_end():
    """The caller's ``(vllm_config, tokenizer)``: vLLM's input processor calls ``validate_params``
    with only the sampling params, so the engine is found as ``self`` a few frames up (vLLM 0.32:
    ``InputProcessor._validate_params``). ``(None, None)`` if not found."""
    from vllm.config import VllmConfig

    frame = inspect.currentframe()
    try:
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            cfg = getattr(owner, "vllm_config", None)
            if isinstance(cfg, VllmConfig):
                return cfg, getattr(owner, "tokenizer", None)
    finally:
        del frame
    return None, None


# ---------------------------------------------------------------- accounting

@dataclass
class RequestStats:
    """SIA accounting of one request. ``steps``: decode steps that went through SIA; ``junctions``:
    steps steered by the value model; ``value_token_forwards``: value-model token-forwards spent
    (prefix + k candidates per junction, prefix mode); ``output_tokens``: tokens generated when read."""

    id: object
    prompt_tokens: int
    output_tokens: int = 0
    steps: int = 0
    junctions: int = 0
    value_token_forwards: int = 0
    finished: bool = False

    @property
    def intervention_rate(self) -> float:
        return self.junctions / self.steps if self.steps else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "intervention_rate": self.intervention_rate}


class _Row:
    """A SIA request in the persistent batch: its options, live token lists and accounting."""

    def __init__(self, options: RequestOptions, prompt: list[int], output: list[int]):
        self.config = options.config
        self.prompt = prompt
        self.output = output  # vLLM's live list of the request's generated tokens
        self.stats = RequestStats(id=options.id, prompt_tokens=len(prompt))

    def close(self) -> RequestStats:
        self.stats.output_tokens = len(self.output)
        self.stats.finished = True
        return self.stats


# ---------------------------------------------------------------- the processor

def _left_pad(seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, L - len(s):] = True
    return ids.to(device), mask.to(device)


class SIALogitsProcessor(*_BASES):
    """vLLM logits processor that steers the junction rows of SIA requests (see the module docstring).

    vLLM builds it: ``__init__(vllm_config, device, is_pin_memory)`` under the V1 model runner (the
    working path) or ``__init__(vllm_config, req_states)`` under Model Runner V2 (stands aside).
    Without ``additional_config["sia"]`` it loads quietly and changes nothing. Registered twice in
    one engine (entry point and ``logits_processors=[...]``), the second copy does nothing.
    """

    _claimed: dict[int, weakref.ref] = {}  # id(vllm_config) -> the processor that serves it

    def __init__(self, vllm_config, *args):
        self.vllm_config = vllm_config
        self.rows: dict[int, _Row] = {}
        self.finished: deque[RequestStats] = deque(maxlen=FINISHED_KEPT)
        self.value_model = None
        self.problem: str | None = None  # why SIA requests cannot be served here
        self.steps = 0
        self._window = {"steps": 0, "rows": 0, "junctions": 0, "value_token_forwards": 0, "value_s": 0.0}
        self._warned: set[str] = set()
        self.standing_aside = True  # V2 runner or a second registration: ignores every request
        if len(args) == 1:  # Model Runner V2: (vllm_config, req_states)
            self.problem = V2_MESSAGE
            if engine_settings(vllm_config.additional_config) is not None:
                logger.warning("SIA: %s", V2_MESSAGE)
            else:
                logger.info("SIA: %s", V2_MESSAGE)
            return
        if len(args) != 2:
            raise TypeError("SIALogitsProcessor(vllm_config, device, is_pin_memory) is built by vLLM")
        self.device = torch.device(args[0])
        prev = self._claimed.get(id(vllm_config))
        if prev is not None and prev() is not None and prev().vllm_config is vllm_config:
            self.problem = "registered twice: another copy of the plugin serves this engine"
            logger.warning("SIA: the plugin is registered twice in this engine (entry point and logits_processors); "
                           "this copy does nothing")
            return
        self._claimed[id(vllm_config)] = weakref.ref(self)
        self.standing_aside = False
        self.settings = engine_settings(vllm_config.additional_config)
        if self.settings is None or self.settings.value_model is None:
            self.problem = NO_VALUE_MODEL
            return  # quiet: an engine that did not ask for SIA
        self._load_value_model(vllm_config)

    def _load_value_model(self, vllm_config) -> None:
        from transformers import AutoTokenizer

        from ..value import ValueModel, check_compatible

        s = self.settings
        dtype = vllm_config.model_config.dtype if s.dtype == "auto" else DTYPES[s.dtype]
        t0 = time.perf_counter()
        vm = ValueModel.from_pretrained(str(s.value_model), torch_dtype=dtype).to(self.device).eval()
        mc = vllm_config.model_config
        self.vocab_size = mc.get_vocab_size()
        try:
            tok = AutoTokenizer.from_pretrained(mc.tokenizer, revision=mc.tokenizer_revision,
                                                trust_remote_code=mc.trust_remote_code)
            check_compatible(tok, vm)
            if vm.bridge is None and self.vocab_size > vm.vocab_size:
                raise ValueError(f"the served model's vocabulary ({self.vocab_size}) is larger than the value "
                                 f"model's ({vm.vocab_size})")
        except ValueError as e:
            self.problem = f"the SIA value model cannot score the served model's tokens: {e}"
            logger.error("SIA: %s; SIA requests are rejected", self.problem)
            return
        self.value_model = vm
        logger.info("SIA: value model %s loaded (%s, %s) in %.1f s", s.value_model, dtype, self.device,
                    time.perf_counter() - t0)

    # -------------------------------------------------------- vLLM's interface
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Admission check in the front end: the request's options, then whether this engine can
        serve SIA at all (ValueError, which vLLM answers with HTTP 400)."""
        opts = request_options(sampling_params)
        if opts is None:
            return
        vllm_config, tokenizer = _front_end()
        if vllm_config is None:
            return  # checked again in the worker
        problem, vocab = _engine_problem(vllm_config, tokenizer)
        if problem is not None:
            raise ValueError(problem)
        if opts.config.k > vocab:
            raise ValueError(f"sia option 'k' = {opts.config.k} exceeds the vocabulary size {vocab}")

    def is_argmax_invariant(self) -> bool:
        return self.value_model is None  # an engine without SIA keeps vLLM's greedy fast path

    def add_request(self, req_idx, sampling_params) -> bool:  # Model Runner V2
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow the persistent batch. A request replaced at its index by an ``added`` or
        ``moved`` entry has finished even when it is not listed in ``removed``."""
        if batch_update is None or self.standing_aside:
            return
        for i in batch_update.removed:
            self._close(i)
        for i, params, prompt, output in batch_update.added:
            self._close(i)
            try:
                opts = request_options(params)
            except ValueError as e:
                self._refuse(str(e))
                continue
            if opts is None:
                continue
            if self.value_model is None:
                self._refuse(self.problem or NO_VALUE_MODEL)
            elif prompt is None:
                self._refuse("no prompt token ids (a prompt given as embeddings)")
            elif opts.config.k > self.vocab_size:
                self._refuse(f"k = {opts.config.k} exceeds the vocabulary size {self.vocab_size}")
            else:
                self.rows[i] = _Row(opts, list(prompt), output)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if direction == MoveDirectionality.SWAP:
                if rb is not None:
                    self.rows[a] = rb
            elif rb is not None:
                self.finished.append(rb.close())
            if ra is not None:
                self.rows[b] = ra

    def _close(self, i: int) -> None:
        row = self.rows.pop(i, None)
        if row is not None:
            self.finished.append(row.close())

    def _refuse(self, why: str) -> None:
        """A SIA request the front end should have rejected (its check relies on vLLM 0.32's call
        layout) is decoded without SIA, with one error line per reason: raising here would stop
        the engine for every request."""
        if why not in self._warned:
            self._warned.add(why)
            logger.error("SIA: a request asking for SIA is decoded without it: %s", why)

    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        if ctx is not None or not self.rows:  # Model Runner V2 (stands aside), or no SIA row
            return logits
        groups: dict[tuple, list[int]] = {}
        for i in sorted(self.rows):
            if i >= logits.shape[0]:  # not in this step's batch (vLLM condenses with moves first)
                continue
            cfg = self.rows[i].config
            groups.setdefault((cfg.k, cfg.entropy_scope), []).append(i)
        with torch.no_grad():
            for (k, scope), idx in groups.items():
                self._steer(logits, idx, k, scope)
        self.steps += 1
        self._maybe_log(len(self.rows))
        return logits

    # -------------------------------------------------------- the step
    def _steer(self, logits: torch.Tensor, idx: list[int], k: int, scope: str) -> None:
        rows = [self.rows[i] for i in idx]
        dev = logits.device
        index = torch.tensor(idx, dtype=torch.long, device=dev)
        sub = logits.index_select(0, index).float()
        tau = torch.tensor([r.config.tau for r in rows], dtype=torch.float32, device=dev)
        # The gate reads the untempered distribution (DESIGN.md §1); vLLM samples, so the scan's
        # own base token is not used (greedy: no random draw).
        scan = junction_scan(sub, k=k, tau=tau, entropy_scope=scope, greedy=True, backend=self.settings.backend)
        J = int(scan.num_junctions)
        restrict = [j for j, r in enumerate(rows) if r.config.sample_from == "topk"]
        if restrict:
            r = torch.tensor(restrict, dtype=torch.long, device=dev)
            ids = scan.topk_ids.index_select(0, r)
            kept = torch.full_like(sub.index_select(0, r), float("-inf"))
            kept.scatter_(1, ids, sub.index_select(0, r).gather(1, ids))
            sub.index_copy_(0, r, kept)
        for r in rows:
            r.stats.steps += 1
        if J:
            jrows = scan.junction_rows[:J].tolist()
            cand = scan.junction_ids[:J]
            values = self._values([rows[j] for j in jrows], cand)
            beta = torch.tensor([rows[j].config.beta for j in jrows], dtype=torch.float32, device=dev)
            steered = torch.full((J, sub.shape[1]), float("-inf"), dtype=sub.dtype, device=dev)
            steered.scatter_(1, cand, scan.junction_logprobs[:J] + beta[:, None] * values)
            sub.index_copy_(0, scan.junction_rows[:J], steered)
        logits.index_copy_(0, index, sub.to(logits.dtype))

    def _values(self, rows: list[_Row], cand: torch.Tensor) -> torch.Tensor:
        """Values ``[J, k]`` f32 of the candidates, prefix mode, in chunks of max_junction_batch."""
        vm, k = self.value_model, cand.shape[1]
        chunk = self.settings.max_junction_batch
        t0 = time.perf_counter()
        out = []
        for a in range(0, len(rows), chunk):
            part = rows[a:a + chunk]
            seqs = [r.prompt + list(r.output) for r in part]
            ids, mask = _left_pad(seqs, vm.device)
            out.append(vm.score_candidates(ids, mask, cand[a:a + len(part)].to(vm.device), mode="prefix"))
            for r, s in zip(part, seqs):
                r.stats.junctions += 1
                r.stats.value_token_forwards += len(s) + k
                self._window["value_token_forwards"] += len(s) + k
        self._window["junctions"] += len(rows)
        self._window["value_s"] += time.perf_counter() - t0
        return torch.cat(out).to(device=cand.device, dtype=torch.float32)

    def _maybe_log(self, n_rows: int) -> None:
        w = self._window
        w["steps"] += 1
        w["rows"] += n_rows
        every = self.settings.log_every
        if not every or w["steps"] < every:
            return
        logger.info("SIA: %d steps, %d SIA row-steps, %d junctions (%.1f %%), %d value token-forwards, "
                    "value model %.2f s", w["steps"], w["rows"], w["junctions"],
                    100.0 * w["junctions"] / max(w["rows"], 1), w["value_token_forwards"], w["value_s"])
        self._window = {key: 0 for key in w} | {"value_s": 0.0}

    # -------------------------------------------------------- accounting
    def stats(self, clear: bool = False) -> list[RequestStats]:
        """Accounting of the requests seen: finished ones (oldest first; a request counts as
        finished once vLLM removes or replaces it), then those still in the batch."""
        for r in self.rows.values():
            r.stats.output_tokens = len(r.output)
        out = list(self.finished) + [r.stats for r in self.rows.values()]
        if clear:
            self.finished.clear()
        return out


def _worker_stats(worker, clear: bool) -> list[dict]:
    runner = getattr(worker, "model_runner", worker)
    batch = getattr(runner, "input_batch", None)
    procs = getattr(getattr(batch, "logitsprocs", None), "all", ())
    return [s.to_dict() for p in procs if isinstance(p, SIALogitsProcessor) for s in p.stats(clear)]


def request_stats(llm, clear: bool = True) -> list[dict]:
    """Per-request SIA accounting of an offline ``vllm.LLM`` (first worker), as dicts of
    :class:`RequestStats` fields plus ``intervention_rate``. The requests of the last ``generate``
    call may still show ``finished=False`` (vLLM reports their removal with the next batch).
    ``clear``: drop the finished records returned. With multiprocessing engines vLLM needs
    ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` to send this function to the worker."""
    if not hasattr(llm, "collective_rpc"):
        raise TypeError(f"llm must be a vllm.LLM, got {type(llm).__name__}")
    if not isinstance(clear, bool):
        raise TypeError(f"clear must be a bool, got {clear!r}")
    return llm.collective_rpc(_worker_stats, args=(clear,))[0]

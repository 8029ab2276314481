"""The logits processor (:class:`SIALogitsProcessor`) and :func:`request_stats`, which reads its
accounting from an offline ``vllm.LLM``; the behaviour is described in the package docstring."""
from __future__ import annotations

import time
import weakref
from collections import deque

import torch
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from ...ops import junction_scan
from ...value.padding import pad_left
from .accounting import RequestRow, RequestStats
from .admission import NO_VALUE_MODEL, V2_MESSAGE, engine_problem, front_end
from .options import DTYPES, engine_settings, request_options

try:  # Model Runner V2's interface (vLLM >= 0.30); import-light by design
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Base
    _BASES: tuple = (LogitsProcessor, _V2Base)
except ImportError:
    _BASES = (LogitsProcessor,)

logger = init_logger("vllm.sia_kernels")  # under "vllm": vLLM's log handlers and format apply

FINISHED_KEPT = 4096  # accounting records of finished requests kept per processor


class SIALogitsProcessor(*_BASES):
    """vLLM logits processor that steers the junction rows of SIA requests (see the package docstring).

    vLLM builds it: ``__init__(vllm_config, device, is_pin_memory)`` under the V1 model runner (the
    working path) or ``__init__(vllm_config, req_states)`` under Model Runner V2 (stands aside).
    Without ``additional_config["sia"]`` it loads quietly and changes nothing. Registered twice in
    one engine (entry point and ``logits_processors=[...]``), the second copy does nothing.
    """

    _claimed: dict[int, weakref.ref] = {}  # id(vllm_config) -> the processor that serves it

    def __init__(self, vllm_config, *args):
        self.vllm_config = vllm_config
        self.rows: dict[int, RequestRow] = {}
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

        from ...value import ValueModel, check_compatible

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
        vllm_config, tokenizer = front_end()
        if vllm_config is None:
            return  # checked again in the worker
        problem, vocab = engine_problem(vllm_config, tokenizer)
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
                self.rows[i] = RequestRow(opts, list(prompt), output)
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
        # The gate reads the untempered distribution (docs/design.md §1); vLLM samples, so the scan's
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

    def _values(self, rows: list[RequestRow], cand: torch.Tensor) -> torch.Tensor:
        """Values ``[J, k]`` f32 of the candidates, prefix mode, in chunks of max_junction_batch."""
        vm, k = self.value_model, cand.shape[1]
        chunk = self.settings.max_junction_batch
        t0 = time.perf_counter()
        out = []
        for a in range(0, len(rows), chunk):
            part = rows[a:a + chunk]
            seqs = [r.prompt + list(r.output) for r in part]
            ids, mask = pad_left(seqs, 0, vm.device)
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

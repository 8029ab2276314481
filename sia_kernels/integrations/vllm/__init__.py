"""SIA inside vLLM: a logits-processor plugin (docs/design.md §4b).

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

Layout: :mod:`.options` (request and engine options, validated), :mod:`.admission` (the front end's
check that this engine can serve SIA), :mod:`.accounting` (per-request records), :mod:`.processor`
(the processor itself and :func:`request_stats`). Everything a caller uses is importable from here.
"""
from __future__ import annotations

try:  # checked here, before any submodule imports vLLM
    from vllm.logger import init_logger  # noqa: F401
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality  # noqa: F401
except ImportError as e:
    raise ImportError("sia_kernels.integrations.vllm needs vLLM (its V1 engine): on CPUs "
                      "`pip install -r requirements-vllm.txt` in its own environment (see .ci/vllm.sh), "
                      "on GPUs the matching `vllm` build") from e

from .accounting import RequestStats
from .admission import NO_VALUE_MODEL, V2_MESSAGE  # noqa: F401  (public constants, importable from here too)
from .options import DTYPES, ENGINE_KEYS, REQUEST_KEYS, EngineSettings, RequestOptions, engine_settings, request_options
from .processor import FINISHED_KEPT, SIALogitsProcessor, request_stats  # noqa: F401

__all__ = ["SIALogitsProcessor", "RequestStats", "RequestOptions", "EngineSettings", "request_options", "engine_settings",
           "request_stats", "REQUEST_KEYS", "ENGINE_KEYS"]

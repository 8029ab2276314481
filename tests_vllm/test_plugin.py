"""The SIA plugin inside vLLM: equivalence with the package's own generate, options, accounting, guards."""
import math

import pytest
import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError  # what vLLM makes of validate_params' ValueError

from sia_kernels import SIAConfig, ValueModel, generate
from sia_kernels.integrations.vllm import SIALogitsProcessor, request_options, request_stats

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [20, 21, 22]]


def greedy(n, sia=None):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                          extra_args={"sia": sia} if sia is not None else None)


def run(llm, params):
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS[:len(params)]], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def hf(models):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(models["base"]), dtype=torch.float32).eval()
    return base, ValueModel.from_pretrained(str(models["value"]), torch_dtype=torch.float32)


def package_generate(hf, prompt, n, tau, beta, k):
    base, vm = hf
    cfg = SIAConfig(gate="entropy", tau=tau, beta=beta, k=k, greedy=True, eos_token_id=None, max_new_tokens=n)
    return generate(base, vm, input_ids=torch.tensor([prompt]), config=cfg)


def tau_with_margin(hf, rows, k):
    """A tau for the gated ``rows`` ``[(prompt, max_tokens, beta)]`` that steers 20-80 % of the
    first row's steps and sits as far as possible from every step entropy of the package's own
    decodes of all rows at that tau: vLLM's logits differ from Hugging Face's by ~1e-6, which must
    not flip a gate."""
    best = None
    for tau in [x / 20 for x in range(2, 46)]:
        runs = [package_generate(hf, p, n, tau, beta, k) for p, n, beta in rows]
        margin = min(abs(float(st.entropy[0]) - tau) for r in runs for st in r.steps)
        rate = runs[0].row_stats[0].junctions / runs[0].row_stats[0].tokens
        if 0.2 <= rate <= 0.8 and (best is None or margin > best[1]):
            best = (tau, margin)
    assert best is not None and best[1] > 1e-3, f"no tau with a safe margin: {best}"
    return best[0]


def test_greedy_equals_package_generate_in_a_mixed_batch(sia_llm, plain_llm, hf):
    k = 5
    tau = tau_with_margin(hf, [(PROMPTS[1], 10, 1.5), (PROMPTS[3], 9, 0.0)], k)
    plan = [  # (max_tokens, sia options or None): mixed opt-in, different lengths
        (6, None),
        (10, {"tau": tau, "beta": 1.5, "k": k, "id": "sparse"}),
        (7, {"tau": float("-inf"), "beta": 2.0, "k": 3, "id": "dense"}),
        (9, {"tau": tau, "beta": 0.0, "k": k, "id": "beta0"}),
    ]
    request_stats(sia_llm)  # drop earlier records
    got = run(sia_llm, [greedy(n, o) for n, o in plan])
    plain = run(plain_llm, [greedy(n) for n, _ in plan])
    stats = {s["id"]: s for s in request_stats(sia_llm)}
    assert got[0] == plain[0]  # a row that did not opt in is untouched
    assert got[3] == plain[3]  # beta = 0 is vLLM's plain greedy
    for row, (n, o) in enumerate(plan):
        if o is None:
            continue
        ref = package_generate(hf, PROMPTS[row], n, o["tau"], o["beta"], o["k"])
        assert got[row] == ref.new_tokens[0].tolist(), f"row {row} ({o['id']})"
        assert stats[o["id"]]["junctions"] == ref.row_stats[0].junctions
        assert stats[o["id"]]["steps"] == n
    assert stats["dense"]["junctions"] == 7
    assert 0 < stats["sparse"]["junctions"] < 10
    assert got[1] != plain[1] or got[2] != plain[2]  # steering changed something


def test_accounting_counts_value_token_forwards(sia_llm):
    request_stats(sia_llm)
    run(sia_llm, [greedy(5, {"tau": "-inf", "k": 4, "id": 7})])
    (s,) = [s for s in request_stats(sia_llm) if s["id"] == 7]
    P = len(PROMPTS[0])
    # prefix mode: each junction runs the prompt + tokens so far, plus k candidates
    assert s["value_token_forwards"] == sum(P + t + 4 for t in range(5))
    assert (s["steps"], s["junctions"], s["output_tokens"], s["intervention_rate"]) == (5, 5, 5, 1.0)


def test_flat_options_equal_nested(sia_llm):
    nested = run(sia_llm, [greedy(6, {"tau": "-inf", "beta": 1.0, "k": 4})])
    flat = sia_llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(
        temperature=0.0, max_tokens=6, ignore_eos=True,
        extra_args={"sia_tau": "-inf", "sia_beta": "1.0", "sia_k": 4}), use_tqdm=False)
    assert nested[0] == list(flat[0].outputs[0].token_ids)


@pytest.mark.parametrize("sia, match", [
    ({"temperatur": 1.0}, "unknown sia option"),
    ({"tau": float("nan")}, "NaN"),
    ({"tau": "nan"}, "NaN"),
    ({"k": 0}, "SIAConfig.k"),
    ({"k": 97}, "exceeds the vocabulary size 96"),
    ({"beta": float("inf")}, "beta must be finite"),
    ({"beta": "abc"}, "must be a number"),
    ({"entropy_scope": "half"}, "entropy_scope"),
])
def test_bad_options_are_rejected_and_the_engine_keeps_serving(sia_llm, plain_llm, sia, match):
    with pytest.raises(VLLMValidationError, match=match):
        sia_llm.generate([{"prompt_token_ids": PROMPTS[0]}], greedy(3, sia), use_tqdm=False)
    assert run(sia_llm, [greedy(3)]) == run(plain_llm, [greedy(3)])


def test_request_options_forms():
    assert request_options(SamplingParams()) is None
    assert request_options(SamplingParams(extra_args={"other_plugin": 1})) is None
    o = request_options(SamplingParams(extra_args={"sia_tau": "-inf", "sia_k": "3"}))
    assert (o.config.tau, o.config.k, o.config.beta) == (-math.inf, 3, 1.0)
    with pytest.raises(ValueError, match="both nested and flat"):
        request_options(SamplingParams(extra_args={"sia": {"k": 3}, "sia_k": 3}))
    with pytest.raises(ValueError, match="must be a dict"):
        request_options(SamplingParams(extra_args={"sia": 3}))


def test_engine_without_sia_is_quiet_and_rejects_sia_requests(plain_llm, sia_llm):
    procs = plain_llm.collective_rpc(_processors)[0]
    assert procs and all(p == {"active": False, "argmax_invariant": True} for p in procs)  # greedy fast path kept
    with pytest.raises(VLLMValidationError, match="no value model configured"):
        plain_llm.generate([{"prompt_token_ids": PROMPTS[0]}], greedy(3, {"tau": 1.0}), use_tqdm=False)
    # registered twice (or three times, with the entry point installed): one copy steers, the others stand aside
    procs = sia_llm.collective_rpc(_processors)[0]
    assert len(procs) >= 2 and procs.count({"active": True, "argmax_invariant": False}) == 1
    assert procs.count({"active": False, "argmax_invariant": True}) == len(procs) - 1


def _processors(worker):
    procs = worker.model_runner.input_batch.logitsprocs.all
    return [{"active": p.value_model is not None, "argmax_invariant": p.is_argmax_invariant()}
            for p in procs if isinstance(p, SIALogitsProcessor)]


def test_value_model_with_another_tokenizer_is_rejected_per_request(mismatched_llm, plain_llm):
    with pytest.raises(VLLMValidationError, match="different tokenizer"):
        mismatched_llm.generate([{"prompt_token_ids": PROMPTS[0]}], greedy(3, {"tau": 1.0}), use_tqdm=False)
    assert run(mismatched_llm, [greedy(3)]) == run(plain_llm, [greedy(3)])  # other requests are served


class _FrontEnd:
    """Stands in for vLLM's input processor, which calls validate_params with the engine as ``self``."""

    def __init__(self, vllm_config):
        self.vllm_config = vllm_config
        self.tokenizer = None

    def admit(self, params):
        SIALogitsProcessor.validate_params(params)


def test_model_runner_v2_gets_a_processor_that_stands_aside(sia_llm, monkeypatch):
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    cfg = sia_llm.llm_engine.vllm_config
    # V2's loader accepts the class (a V1-only class would stop every V2 engine from starting)
    assert issubclass(SIALogitsProcessor, V2)
    assert _load_v2_logitsprocs_by_fqcns(["sia_kernels.integrations.vllm:SIALogitsProcessor"]) == [SIALogitsProcessor]
    proc = SIALogitsProcessor(cfg, object())  # V2 builds (vllm_config, req_states)
    logits = torch.randn(3, 96)
    assert proc.apply(logits, object()) is logits
    assert proc.add_request(0, greedy(3, {"tau": 1.0})) is False
    # with V2 active the front end rejects SIA requests with the setting to use, and admits the others
    # (vLLM caches its environment once an engine runs: switch the runner on the config itself)
    monkeypatch.setattr(type(cfg), "use_v2_model_runner", property(lambda self: True))
    with pytest.raises(ValueError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        _FrontEnd(cfg).admit(greedy(3, {"tau": 1.0}))
    _FrontEnd(cfg).admit(greedy(3))
    monkeypatch.undo()
    _FrontEnd(cfg).admit(greedy(3, {"tau": 1.0}))


def test_one_log_line_per_log_every_steps(sia_llm):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("vllm.sia_kernels")
    log.addHandler(handler)
    try:
        run(sia_llm, [greedy(8, {"tau": "-inf", "k": 3})])  # sia_llm logs every 4 steps
    finally:
        log.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    # 8 steps make exactly two lines whatever earlier requests left in the window; nothing per token
    assert len(lines) == 2 and all(m.startswith("SIA: 4 steps, ") and "junctions" in m for m in lines), lines


def _bookkeeping(worker):
    """Drive the engine's own processor with batch updates at indices the engine never uses (>= 100):
    implicit removals (replaced by ``added`` / ``moved``), swaps, and a bad request in the worker."""
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    (p,) = [p for p in worker.model_runner.input_batch.logitsprocs.all
            if isinstance(p, SIALogitsProcessor) and p.value_model is not None]
    p.stats(clear=True)

    def update(removed=(), added=(), moved=()):
        p.update_state(BatchUpdate(batch_size=0, removed=list(removed), added=list(added), moved=list(moved)))

    def req(label, **extra):
        return SamplingParams(extra_args={"sia": {"tau": 1.0, "id": label}, **extra})

    update(added=[(100, req("a"), [5, 6], [7]), (101, req("b"), [5], []), (102, SamplingParams(), [5], [])])
    update(moved=[(100, 101, MoveDirectionality.SWAP)])
    assert (p.rows[100].stats.id, p.rows[101].stats.id) == ("b", "a")
    update(moved=[(100, 101, MoveDirectionality.UNIDIRECTIONAL)])  # "a" at 101 is replaced: finished
    update(added=[(101, req("c"), [5], [])])  # "b" (moved to 101) is replaced by "c": finished
    update(added=[(103, SamplingParams(extra_args={"sia": {"tau": "nan"}}), [5], [])])  # not admitted, no raise
    update(removed=[101])
    finished = [(s.id, s.finished, s.output_tokens) for s in p.stats()]
    leftover = sorted(i for i in p.rows if i >= 100)
    return finished, leftover


def test_batch_bookkeeping_treats_replaced_requests_as_finished(sia_llm):
    finished, leftover = sia_llm.collective_rpc(_bookkeeping)[0]
    assert [f for f in finished if f[0] in ("a", "b", "c")] == [("a", True, 1), ("b", True, 0), ("c", True, 0)]
    assert leftover == []

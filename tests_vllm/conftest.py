"""vLLM engines on tiny local models, started once per session (in-process, one thread, eager)."""
import os

# vLLM reads these when an engine starts: in-process engine core (fast start, reachable processors),
# a small KV cache, and one thread on a shared machine.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny import save_base, save_value, word_tokenizer  # noqa: E402

torch.set_num_threads(1)


def engine(model_dir, sia=None, processors=2, **kw):
    """An offline ``vllm.LLM`` on ``model_dir`` (f32, eager, seed 0). ``sia``: the
    ``additional_config["sia"]`` entry (None: an engine that did not ask for SIA). ``processors``:
    times the plugin is passed in ``logits_processors`` (2: as when the entry point is installed and
    the user also names it; the second copy must stand aside)."""
    from vllm import LLM

    from sia_kernels.integrations.vllm import SIALogitsProcessor

    return LLM(model=str(model_dir), dtype="float32", enforce_eager=True, max_model_len=128, max_num_seqs=8,
               seed=0, logits_processors=[SIALogitsProcessor] * processors,
               additional_config={"sia": sia} if sia is not None else {}, **kw)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    other = word_tokenizer([f"x{i}" for i in range(3, 96)])  # same size, different words
    return {
        "base": save_base(root / "base"),
        "value": save_value(root / "value"),
        "value_other_tokenizer": save_value(root / "value_other", tokenizer=other),
    }


@pytest.fixture(scope="session")
def sia_llm(models):
    return engine(models["base"], {"value_model": str(models["value"]), "log_every": 4})


@pytest.fixture(scope="session")
def plain_llm(models):
    return engine(models["base"], processors=1)


# Engines live for the whole session: an in-process engine that is garbage-collected tears down
# vLLM's process-wide parallel state, which the other engines still use.
@pytest.fixture(scope="session")
def mismatched_llm(models):
    return engine(models["base"], {"value_model": str(models["value_other_tokenizer"])}, processors=1)

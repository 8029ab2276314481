"""The front end's check, at admission, that this engine can serve SIA requests: it finds the
engine's config from the caller (``front_end``) and reads the value model's files
(``engine_problem``); the processor's ``validate_params`` uses both."""
from __future__ import annotations

import inspect
from pathlib import Path

from .options import engine_settings

V2_MESSAGE = ("vLLM's Model Runner V2 is active; the SIA plugin supports the V1 runner only and stands aside. "
              "Start vLLM with VLLM_USE_V2_MODEL_RUNNER=0 to serve SIA requests.")
NO_VALUE_MODEL = ("this request asks for SIA but the engine has no value model configured: start vLLM with "
                  "additional_config={'sia': {'value_model': '<dir written by ValueModel.save_pretrained>'}}")


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


def engine_problem(vllm_config, tokenizer) -> tuple[str | None, int]:
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


def front_end():
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

"""Best-of-N: n samples per prompt decoded together in one batch, the best kept by a scorer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SIAConfig
from ..value import ValueModel
from ..value.padding import pad_left
from .generate import GenerationResult, check_models, generate, prepare_inputs, resolve_special_tokens

__all__ = ["best_of_n", "BestOfNResult", "score_sequences"]


@dataclass
class BestOfNResult:
    """``sequences [P, W]``: each prompt's best sample (Hugging Face layout). ``scores [P, n]``
    f32 and ``best [P]`` i64 (index among the prompt's n samples). ``generation``: all ``P·n``
    samples, prompt-major (sample j of prompt i is row ``i·n + j``)."""

    sequences: torch.Tensor
    texts: list[str] | None
    scores: torch.Tensor
    best: torch.Tensor
    generation: GenerationResult


def score_sequences(scorer, result: GenerationResult) -> torch.Tensor:
    """Score every generated row ``[R]`` f32: prompt + new tokens up to and including EOS.

    scorer: a :class:`~sia_kernels.value.ValueModel` (its value of the whole sequence — a
    reward model loaded with ``ValueModel.from_reward_model`` gives the reward), or a callable
    ``(ids [R, L], mask [R, L]) -> [R]`` on left-padded rows.
    """
    P = result.prompt_width
    seq, prompt_mask = result.sequences.tolist(), result.prompt_mask.tolist()
    rows = [[t for t, m in zip(seq[b][:P], prompt_mask[b]) if m] + seq[b][P:P + r.tokens]
            for b, r in enumerate(result.row_stats)]
    bridge = getattr(scorer, "bridge", None)
    if bridge is not None:
        ids, m = bridge.encode(rows, device=scorer.device)
    else:
        device = getattr(scorer, "device", result.sequences.device)
        ids, m = pad_left(rows, 0, device)
    if isinstance(scorer, ValueModel):
        with torch.no_grad():
            return scorer.values(ids, m)[:, -1].float()  # left-padded: the whole sequence's value
    if callable(scorer):
        return torch.as_tensor(scorer(ids, m), dtype=torch.float32)
    raise TypeError(f"scorer must be 'value', a ValueModel or a callable, got {type(scorer).__name__}")


def best_of_n(model, value_model=None, *, input_ids=None, attention_mask=None, prompts=None, tokenizer=None,
              config: SIAConfig, n: int, scorer="value") -> BestOfNResult:
    """Decode ``n`` samples of every prompt together (SIA with ``config``; ``gate="never"`` for
    plain sampling) and keep the best by ``scorer``: ``"value"`` (the value model's final value
    ``V(x, y)``), a reward model wrapped as a ``ValueModel`` (``from_reward_model``), or a callable
    ``(ids, mask) -> [R]``."""
    if not isinstance(config, SIAConfig):
        raise TypeError(f"config must be an SIAConfig, got {type(config).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if n > 1 and (config.greedy or config.temperature == 0):
        raise ValueError("best_of_n with greedy decoding gives n identical samples; set greedy=False and temperature > 0")
    if isinstance(scorer, str):
        if scorer != "value":
            raise ValueError(f"scorer must be 'value', a ValueModel or a callable, got {scorer!r}")
        if value_model is None:
            raise ValueError("scorer='value' needs a value model")
        scorer = value_model
    check_models(model, value_model, tokenizer, config)
    _, pad = resolve_special_tokens(model, tokenizer, config)
    ids, mask = prepare_inputs(model, input_ids=input_ids, attention_mask=attention_mask, prompts=prompts,
                               tokenizer=tokenizer, config=config, pad_token_id=pad)
    num = ids.shape[0]
    result = generate(model, value_model, input_ids=ids.repeat_interleave(n, 0),
                      attention_mask=mask.repeat_interleave(n, 0), tokenizer=tokenizer, config=config)
    scores = score_sequences(scorer, result).to(ids.device).view(num, n)
    best = scores.argmax(-1)
    pick = torch.arange(num, device=ids.device) * n + best
    texts = [result.texts[i] for i in pick.tolist()] if result.texts is not None else None
    return BestOfNResult(sequences=result.sequences[pick], texts=texts, scores=scores, best=best, generation=result)

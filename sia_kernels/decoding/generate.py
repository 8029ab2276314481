"""The batched SIA generation loop: small pure functions and one loop (gpt-fast style).

``prefill`` runs the prompt through the base model (its Hugging Face KV cache, position ids from
the attention mask so left padding is exact); ``decode_one_token`` feeds one token per row;
:func:`~sia_kernels.decoding.step.decode_step` does gate → scan → value → steer → append.
Rows stop independently at EOS (padded after it, as Hugging Face does); the loop ends when every
row has finished or ``max_new_tokens`` is reached. One host sync per step (``read_step``).
"""
from __future__ import annotations

import functools
import inspect
import time
from dataclasses import asdict, dataclass, field

import torch

from ..config import MODEL_DEFAULT, SIAConfig
from ..value.hf_cache import cache_keyword, new_cache
from ..value.padding import pad_left, positions_from_mask
from .profiling import phase
from .step import DecodeState, StepStats, decode_step

__all__ = [
    "generate", "GenerationResult", "GenerationStats", "RowStats", "prefill", "decode_one_token",
    "prepare_inputs", "resolve_special_tokens", "calibrate_tau", "count_parameters", "check_models",
    "value_inputs",
]


# ---------------------------------------------------------------- results

@dataclass
class RowStats:
    """One row. ``tokens`` counts generated tokens up to and including EOS; ``base_token_forwards``
    the row's real tokens run through the base model (counted: the prompt, then each generated
    token fed back, EOS included when the batch went on); ``value_token_forwards`` the value-model
    token-forwards spent on the row (its pending / prefix tokens, plus k per junction)."""

    tokens: int
    junctions: int
    intervention_rate: float
    base_token_forwards: int
    value_token_forwards: int
    finished: bool  # stopped at EOS


@dataclass
class GenerationStats:
    """Totals. ``*_padded_token_forwards`` count every position computed (padding included);
    ``base_forwards`` / ``value_forwards`` count model forwards (calls of the backbone: on a GPU
    at decode batch sizes each reads all weights, so this is the cost that matters);
    FLOPs are ``2 · parameters · padded token-forwards`` for each model. Times are host wall
    seconds per phase (see :mod:`~sia_kernels.decoding.profiling` on CUDA timing)."""

    rows: int
    tokens: int
    junctions: int
    intervention_rate: float
    steps: int
    tau: float
    base_token_forwards: int
    base_padded_token_forwards: int
    value_token_forwards: int
    value_padded_token_forwards: int
    value_calls: int
    value_rows_scored: int
    base_parameters: int
    value_parameters: int
    flops_base: float
    flops_value: float
    flops_total: float
    wall_time: float
    tokens_per_s: float
    times: dict = field(default_factory=dict)
    base_forwards: int = 0
    value_forwards: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    """``sequences [B, P + T]``: Hugging Face's layout (the prompt left-padded as given, then the
    new tokens, pad after EOS). ``texts``: the decoded new tokens (with a tokenizer)."""

    sequences: torch.Tensor
    prompt_width: int
    prompt_mask: torch.Tensor  # [B, P] bool: the prompt's real tokens
    texts: list[str] | None
    row_stats: list[RowStats]
    stats: GenerationStats
    steps: list[StepStats]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width:]


# ---------------------------------------------------------------- inputs

def _context_length(model) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def resolve_special_tokens(model, tokenizer, config: SIAConfig) -> tuple[list[int] | None, int]:
    """``(eos ids or None, pad id)``: config's EOS, else the model's generation_config / config,
    else the tokenizer's; pad from generation_config, the tokenizer, the first EOS, else 0."""
    gen = getattr(model, "generation_config", None)

    def first(*xs):
        return next((x for x in xs if x is not None), None)

    if config.eos_token_id is MODEL_DEFAULT:
        eos = first(getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                    getattr(tokenizer, "eos_token_id", None))
    else:
        eos = config.eos_token_id
    eos = None if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = first(getattr(gen, "pad_token_id", None), getattr(tokenizer, "pad_token_id", None),
                eos[0] if eos else None, 0)
    return eos, int(pad if isinstance(pad, int) else list(pad)[0])


def prepare_inputs(model, *, input_ids=None, attention_mask=None, prompts=None, tokenizer=None,
                   config: SIAConfig, pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``ids [B, P]`` i64 and ``mask [B, P]`` bool on the model's device: a non-empty
    batch, ids within the base model's vocabulary, prompt + max_new_tokens within its context
    (one host read). Empty prompts and left padding are checked once, by :class:`DecodeState`."""
    device = _device_of(model)
    if (input_ids is None) == (prompts is None):
        raise ValueError("give exactly one of input_ids= or prompts=")
    if prompts is not None:
        ids, mask = pad_left(_tokenize("prompts", prompts, tokenizer), pad_token_id, device)
        longest = int(mask.shape[1])
    else:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("input_ids must be an int64 tensor [B, P]")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty [B, P] tensor, got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}")
        ids, mask = input_ids.to(device).long(), attention_mask.to(device).bool()
        real = torch.where(mask, ids, 0)
        lo, hi, longest = torch.stack([real.amin(), real.amax(), mask.long().sum(-1).amax()]).tolist()
        vocab = model.config.get_text_config().vocab_size
        if lo < 0 or hi >= vocab:
            raise ValueError(f"input_ids hold token ids outside the base model's vocabulary [0, {vocab})")
    ctx = _context_length(model)
    if ctx is not None and longest + config.max_new_tokens > ctx:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={config.max_new_tokens} exceeds the model's "
            f"context of {ctx} positions" + ("; lower max_new_tokens" if longest < ctx else "; shorten the prompt")
        )
    return ids, mask


def _tokenize(name: str, texts, tokenizer) -> list[list[int]]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"{name} must be a non-empty list of strings")
    if tokenizer is None:
        raise ValueError(f"{name}= needs tokenizer=")
    bad = [i for i, p in enumerate(texts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name[:-1]} {bad[0]} is a {type(texts[bad[0]]).__name__}, not a string")
    return [list(tokenizer(p)["input_ids"]) for p in texts]


def value_inputs(ids: torch.Tensor, mask: torch.Tensor, *, value_prompts=None, value_template: str | None = None,
                 prompts=None, tokenizer=None, pad_token_id: int = 0):
    """The value model's own prompts, left-padded ``[B, Pv]`` (or ``(None, None)``: it sees the prompts).

    value_prompts: one string (tokenized with ``tokenizer``) or id list per row.
    value_template: a format string with ``{prompt}`` (e.g. a chat template's text), applied to each
    prompt's text (``prompts``, or ``input_ids`` decoded with ``tokenizer``) for the value model only.
    """
    if value_prompts is None and value_template is None:
        return None, None
    if value_prompts is not None and value_template is not None:
        raise ValueError("give value_prompts= or value_template=, not both")
    B = ids.shape[0]
    if value_template is not None:
        if not isinstance(value_template, str) or "{prompt}" not in value_template:
            raise ValueError("value_template must be a string containing '{prompt}'")
        if tokenizer is None:
            raise ValueError("value_template= needs tokenizer=")
        if prompts is None:
            prompts = [tokenizer.decode(r, skip_special_tokens=True)
                       for r in _real_rows(ids, mask)]
        value_prompts = [value_template.replace("{prompt}", p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
    if not isinstance(value_prompts, (list, tuple)) or len(value_prompts) != B:
        raise ValueError(f"value_prompts must hold one prompt per row ({B})")
    if all(isinstance(p, str) for p in value_prompts):
        seqs = _tokenize("value_prompts", list(value_prompts), tokenizer)
    elif all(isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
             for p in value_prompts):
        seqs = [list(p) for p in value_prompts]
    else:
        raise TypeError("value_prompts must be strings or lists of token ids")
    return pad_left(seqs, pad_token_id, ids.device)


def _real_rows(ids, mask) -> list[list[int]]:
    return [[t for t, m in zip(r, mr) if m] for r, mr in zip(ids.tolist(), mask.tolist())]


def check_models(model, value_model, tokenizer, config: SIAConfig) -> None:
    """The base and value models can decode together: types, one device, one vocabulary (or a bridge)."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face causal LM, got {type(model).__name__}")
    if config.gate == "never":
        return
    if value_model is None:
        raise TypeError(f"gate={config.gate!r} needs a value model (only gate='never' runs without one)")
    from ..value import check_compatible

    dev, vdev = _device_of(model), value_model.device
    if dev != vdev:
        raise ValueError(f"the base model is on {dev} but the value model is on {vdev}; move them to one device")
    check_compatible(tokenizer if tokenizer is not None else model, value_model)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


# ---------------------------------------------------------------- the base model

def _takes_logits_to_keep(model) -> bool:
    return _takes_logits_to_keep_of(type(model))


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep_of(cls) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, kv, *, padded: bool = True) -> torch.Tensor:
    """Run the prompt ``[B, P]`` into the KV cache ``kv``; return the next-token logits ``[B, V]``.

    Position ids count real tokens (left padding: pads sit at 0), as Hugging Face's generate does.
    ``padded=False`` (the caller knows no row is padded): no mask is passed (all ones: the same
    computation, without Hugging Face reading the mask back to find that out).
    """
    pos = positions_from_mask(attention_mask)
    extra = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask if padded else None, position_ids=pos,
                use_cache=True, **{cache_keyword(model): kv}, **extra)
    return out.logits[:, -1]


def decode_one_token(model, tokens: torch.Tensor, attention_mask: torch.Tensor | None, kv,
                     position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Feed ``tokens [B]`` (``attention_mask [B, L]`` already includes them); logits ``[B, V]``.

    ``position_ids [B, 1]``: the tokens' positions when the caller knows them (default: from the
    mask); ``attention_mask=None`` then means no row is padded (:attr:`DecodeState.base_attention_mask`).
    """
    if position_ids is None:
        position_ids = attention_mask.long().sum(-1, keepdim=True) - 1
    out = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, **{cache_keyword(model): kv})
    return out.logits[:, -1]


# ---------------------------------------------------------------- the loop

def _decode(model, value_model, state: DecodeState, config: SIAConfig) -> tuple[list[StepStats], int]:
    """The one loop. Returns the step stats and the number of base decode forwards (the prefill
    not included); counts each row's base token-forwards into ``state.row_base_tokens``."""
    kv = new_cache(model.config)
    steps: list[StepStats] = []
    forwards = 0
    times = state.times
    with phase("base_forward", times):
        logits = prefill(model, state.ids, state.mask, kv, padded=state.padded)
    for t in range(config.max_new_tokens):
        tokens, st = decode_step(logits, state, value_model, config)
        if st.all_finished:
            break
        steps.append(st)
        if t + 1 == config.max_new_tokens:
            break
        with phase("base_forward", times):
            logits = decode_one_token(model, tokens, state.base_attention_mask, kv, state.last_positions())
        forwards += 1
    state.flush()
    # The forward after step t feeds each row's token t back; it is real for rows still running
    # then, i.e. for the first tokens_generated[b] (EOS included) of the `forwards` forwards.
    generated = state.tokens_generated() if state.eos is not None else [state.step] * state.batch_size
    state.row_base_tokens = [p + min(n, forwards) for p, n in zip(state.prompt_lengths, generated)]
    return steps, forwards


def calibrate_tau(model, *, input_ids, attention_mask, config: SIAConfig, eos_token_id=None,
                  pad_token_id: int = 0) -> float:
    """The entropy threshold that makes a share ``config.rate`` of decode steps junctions.

    Decodes the calibration batch with the base model alone (gate "never"), collects the entropy
    of every active row at every step, and returns its ``1 - rate`` quantile (rate 0: +inf,
    rate 1: -inf).
    """
    if config.rate is None:
        raise ValueError("calibrate_tau needs config.rate")
    if config.rate <= 0:
        return float("inf")
    if config.rate >= 1:
        return float("-inf")
    base = config.replace(gate="never", rate=None, first_n=None)
    state = DecodeState(input_ids, attention_mask, None, base, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    with torch.no_grad():
        steps, _ = _decode(model, None, state, base)
    active = [st.entropy[torch.tensor([not f for f in st.finished], device=st.entropy.device)] for st in steps]
    ent = torch.cat(active).double()
    return float(torch.quantile(ent, 1.0 - config.rate))


def generate(model, value_model=None, *, input_ids=None, attention_mask=None, prompts=None, tokenizer=None,
             config: SIAConfig, teacher_tokens=None, value_prompts=None, value_template: str | None = None
             ) -> GenerationResult:
    """SIA generation for a batch of prompts (docs/design.md §4).

    model: a Hugging Face causal LM. value_model: a :class:`~sia_kernels.value.ValueModel`
    (None only for ``gate="never"``). Give ``input_ids [B, P]`` (+ ``attention_mask``, left
    padding) or ``prompts`` (strings) with ``tokenizer``. ``gate="target_rate"`` first calibrates
    tau on this batch (:func:`calibrate_tau`, one base-only decode).

    teacher_tokens: for tests, ``[B, T]`` tokens to force at steps ``0..T-1``, or a callable
    ``(step, tokens [B]) -> tokens [B] | None``; gates and values still run on the forced path.
    value_prompts / value_template: what the value model sees instead of the prompt (see
    :func:`value_inputs`), e.g. the chat-wrapped prompt a released value model was trained on.
    """
    if not isinstance(config, SIAConfig):
        raise TypeError(f"config must be an SIAConfig, got {type(config).__name__}")
    check_models(model, value_model, tokenizer, config)
    eos, pad = resolve_special_tokens(model, tokenizer, config)
    ids, mask = prepare_inputs(model, input_ids=input_ids, attention_mask=attention_mask, prompts=prompts,
                               tokenizer=tokenizer, config=config, pad_token_id=pad)
    t0 = time.perf_counter()
    tau = None
    if config.gate == "target_rate":
        tau = calibrate_tau(model, input_ids=ids, attention_mask=mask, config=config, eos_token_id=eos, pad_token_id=pad)
    vm = value_model if config.gate != "never" else None
    vids, vmask = value_inputs(ids, mask, value_prompts=value_prompts, value_template=value_template,
                               prompts=prompts, tokenizer=tokenizer, pad_token_id=pad)
    state = DecodeState(ids, mask, vm, config, eos_token_id=eos, pad_token_id=pad, tau=tau,
                        value_input_ids=vids, value_attention_mask=vmask)
    if teacher_tokens is not None:
        state.token_hook = _teacher_hook(teacher_tokens)
    before = _counters(vm)
    with torch.no_grad():
        steps, forwards = _decode(model, vm, state, config)
    wall = time.perf_counter() - t0
    return _result(model, vm, state, steps, forwards, before, wall, tokenizer)


def _teacher_hook(teacher_tokens):
    if callable(teacher_tokens):
        return teacher_tokens
    forced = teacher_tokens

    def hook(step, tokens):
        return forced[:, step] if step < forced.shape[1] else None

    return hook


def _counters(vm) -> tuple[int, int, int, int, int]:
    if vm is None:
        return (0, 0, 0, 0, 0)
    c = vm.counters
    return (c.token_forwards, c.padded_token_forwards, c.calls, c.rows_scored, c.forwards)


def _result(model, vm, state: DecodeState, steps, forwards, before, wall, tokenizer) -> GenerationResult:
    B, P = state.batch_size, state.prompt_width
    tokens = state.tokens_generated()
    finished = state.finished.tolist()
    rows = [
        RowStats(
            tokens=n,
            junctions=state.row_junctions[b],
            intervention_rate=state.row_junctions[b] / n if n else 0.0,
            base_token_forwards=state.row_base_tokens[b],
            value_token_forwards=state.row_value_tokens[b],
            finished=bool(finished[b]),
        )
        for b, n in enumerate(tokens)
    ]
    after = _counters(vm)
    vtok, vpad, vcalls, vrows, vfwd = (a - b for a, b in zip(after, before))
    base_pad = B * P + B * forwards
    p_base, p_value = count_parameters(model), count_parameters(vm)
    total_tokens = sum(tokens)
    junctions = sum(r.junctions for r in rows)
    stats = GenerationStats(
        rows=B, tokens=total_tokens, junctions=junctions,
        intervention_rate=junctions / total_tokens if total_tokens else 0.0,
        steps=len(steps), tau=state.tau,
        base_token_forwards=sum(r.base_token_forwards for r in rows), base_padded_token_forwards=base_pad,
        value_token_forwards=vtok, value_padded_token_forwards=vpad, value_calls=vcalls, value_rows_scored=vrows,
        base_parameters=p_base, value_parameters=p_value,
        flops_base=2.0 * p_base * base_pad, flops_value=2.0 * p_value * vpad,
        flops_total=2.0 * (p_base * base_pad + p_value * vpad),
        wall_time=wall, tokens_per_s=total_tokens / wall if wall > 0 else 0.0, times=dict(state.times),
        base_forwards=forwards + 1, value_forwards=vfwd,
    )
    texts = None
    if tokenizer is not None:
        new = state.ids[:, P:].tolist()
        texts = [tokenizer.decode(new[b][:tokens[b]], skip_special_tokens=True) for b in range(B)]
    return GenerationResult(sequences=state.ids, prompt_width=P, prompt_mask=state.mask[:, :P], texts=texts, row_stats=rows, stats=stats, steps=steps)

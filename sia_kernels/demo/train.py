"""The demo's two models, trained on the CPU and kept in an atomic on-disk cache.

1. The base model: a tiny Llama (2 layers, hidden 64) trained from scratch on the branching grammar
   (:class:`sia_kernels.tasks.BranchingTask`): near-deterministic text with one real choice every
   ``width + 1`` tokens, and a reward (share of topic-aligned choices) that reads the finished text.
2. The value model: the base model's own samples on training prompts, scored with the task reward,
   train a token-level value model with :func:`sia_kernels.value.train_value` (LoRA through peft on
   a copy of the base model, a fresh scalar head; the same function as ``sia train-value``), one row
   per trajectory, with ``loss="token"``: ``mean_t (V(x, y<=t) − R)²``, Monte-Carlo value targets at
   every response position, as controlled decoding's prefix scorers are trained. Why not the paper's
   ``(mean_t V_t − R)²``: it constrains only the mean over a response, so single values have no scale
   of their own. Measured on this task (1024 samples, 12 epochs): its values swing by ~±1 from token
   to token and the final value is no reward model (MSE 1.50 against the reward, where a constant
   scores 0.067), though it does rank a junction's aligned candidates above the misaligned ones.
   Per-position targets give calibrated values in reward units (so β means something, and
   ``V(x, y)`` can pick Best-of-N's winner), and the value model beats a constant.

Models are cached under ``OUT/cache/seed<S>-<key>/`` (key: :meth:`DemoConfig.training_key`), written
atomically and reused; both are always loaded back from disk, so a fresh run and a cached run decode
with identical weights.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import SIAConfig
from ..decoding import generate
from ..tasks import BranchingTask
from ..value import ValueModel, ValueTrainConfig, train_value
from ..value.padding import pad_left
from .config import HELDOUT_POOL, DemoConfig, log, with_backend

__all__ = ["base_config", "train_base_model", "responses", "max_new_tokens", "sample_base", "value_rows",
           "train_value_model", "load_or_train"]


# ---------------------------------------------------------------- the base model

def base_config(task: BranchingTask, cfg: DemoConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=task.vocab_size, hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=64, bos_token_id=task.bos_id, eos_token_id=task.eos_id, pad_token_id=task.pad_id,
    )


def lm_batch(task: BranchingTask, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``ids, mask, labels`` (loss on response tokens only)."""
    L = max(len(p) + len(r) for p, r in batch)
    ids = torch.full((len(batch), L), task.pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), L, dtype=torch.long)
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    for i, (p, r) in enumerate(batch):
        x = p + r
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        labels[i, len(p):len(x)] = torch.tensor(r)
    return ids, mask, labels


def train_base_model(task: BranchingTask, train_prompts, cfg: DemoConfig):
    """A tiny Llama trained from scratch on grammar samples: AdamW, one-cycle lr; returns (model, metrics)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(base_config(task, cfg), attn_implementation="sdpa")
    model.generation_config.eos_token_id = task.eos_id
    model.generation_config.pad_token_id = task.pad_id
    data = task.sample_sequences(cfg.base_steps * cfg.base_batch, train_prompts, seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.base_lr, total_steps=cfg.base_steps, pct_start=0.1)
    model.train()
    losses = []
    for step in range(cfg.base_steps):
        ids, mask, labels = lm_batch(task, data[step * cfg.base_batch:(step + 1) * cfg.base_batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == cfg.base_steps:
            log(f"  base step {step + 1}/{cfg.base_steps}  loss {statistics.mean(losses[-10:]):.4f}")
    model.eval()
    floor = task.segments * math.log(4) / task.response_length  # the grammar's own entropy per token
    return model, {"final_loss": statistics.mean(losses[-10:]), "loss_floor": floor, "steps": cfg.base_steps}


# ---------------------------------------------------------------- sampling the base model

def responses(result) -> list[list[int]]:
    """Each row's generated tokens, up to and including EOS."""
    new = result.new_tokens.tolist()
    return [new[b][:r.tokens] for b, r in enumerate(result.row_stats)]


def max_new_tokens(task: BranchingTask) -> int:
    return task.response_length + task.width + 1  # room for one segment too many


def sample_base(model, task: BranchingTask, prompts, cfg: DemoConfig, seed: int) -> list[list[int]]:
    """The base model's own samples (temperature 1, top-k sampling, as every method of the demo)."""
    ids, mask = pad_left(prompts, task.pad_id)
    conf = SIAConfig(gate="never", k=cfg.k, max_new_tokens=max_new_tokens(task), eos_token_id=task.eos_id,
                     seed=seed, backend=cfg.backend)
    return responses(generate(model, None, input_ids=ids, attention_mask=mask, config=conf))


# ---------------------------------------------------------------- the value model

def value_rows(task: BranchingTask, tokenizer, prompts, resps) -> list[dict]:
    """Training rows for ``train_value``: one per trajectory, ``{prompt: x, response: y, reward: R(x, y)}``."""
    return [{"prompt": tokenizer.decode(p[1:], skip_special_tokens=False),
             "response": tokenizer.decode(r, skip_special_tokens=False), "reward": task.reward(p, r)}
            for p, r in zip(prompts, resps) if r]


def train_value_model(base_model, task: BranchingTask, tokenizer, train_prompts, cfg: DemoConfig):
    """Sample the base model, score with the task reward, train LoRA + head; returns (ValueModel, metrics)."""
    rng = random.Random(f"value-prompts-{cfg.seed}")
    prompts = [rng.choice(train_prompts) for _ in range(cfg.value_trajectories)]
    resps = sample_base(base_model, task, prompts, cfg, seed=cfg.seed + 1)
    rewards = [task.reward(p, r) for p, r in zip(prompts, resps)]
    rows = value_rows(task, tokenizer, prompts, resps)
    log(f"  {len(resps)} base samples (mean reward {statistics.mean(rewards):.3f}, "
        f"well-formed {statistics.mean(task.is_well_formed(r) for r in resps):.1%}) -> {len(rows)} value rows")
    tcfg = ValueTrainConfig(lora_r=cfg.value_lora_r, lora_alpha=cfg.value_lora_scale * cfg.value_lora_r,
                            target_modules=tuple(cfg.value_targets), lr=cfg.value_lr, epochs=cfg.value_epochs,
                            batch_size=cfg.value_batch, lora_dropout=0.0, loss=cfg.value_loss, seed=cfg.seed,
                            max_length=64, progress=False)
    vm, metrics = train_value(copy.deepcopy(base_model), rows, config=tcfg, tokenizer=tokenizer)
    for h in metrics["history"]:
        log(f"  value epoch {h['epoch']}/{cfg.value_epochs}  train {h['train_loss']:.4f}  val {h['val_loss']:.4f}")
    metrics = {k: v for k, v in metrics.items() if k != "config"}
    metrics["sample_reward_mean"] = statistics.mean(rewards)
    return vm, metrics


# ---------------------------------------------------------------- the cache

def cache_dir(out_dir, cfg: DemoConfig) -> Path:
    """Where ``cfg``'s models live (``cfg.backend`` resolved, as :func:`load_or_train` keys it)."""
    return Path(out_dir) / "cache" / f"seed{cfg.seed}-{with_backend(cfg).training_key()}"


def _train_into(cache: Path, cfg: DemoConfig) -> None:
    """Train both models into ``cache``, atomically: an interrupted run never leaves a cache that
    looks complete (``done.json`` is written last, and the directory is renamed into place)."""
    from transformers import AutoModelForCausalLM

    task, tokenizer = cfg.task, cfg.task.tokenizer()
    train_prompts, _ = task.split_prompts(HELDOUT_POOL, seed=cfg.seed)
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        log(f"training the base model ({cfg.layers}-layer Llama, hidden {cfg.hidden}, {cfg.base_steps} steps)")
        base, base_metrics = train_base_model(task, train_prompts, cfg)
        base.save_pretrained(tmp / "base")
        tokenizer.save_pretrained(tmp / "base")
        t1 = time.perf_counter()
        log(f"training the value model (LoRA, sia_kernels.value.train_value, {cfg.value_epochs} epochs)")
        base = AutoModelForCausalLM.from_pretrained(tmp / "base").eval()
        vm, value_metrics = train_value_model(base, task, tokenizer, train_prompts, cfg)
        vm.save_pretrained(tmp / "value", save_backbone=True)
        t2 = time.perf_counter()
        train = {"base": base_metrics, "value": value_metrics, "base_train_s": t1 - t0, "value_train_s": t2 - t1}
        (tmp / "done.json").write_text(json.dumps({"config": asdict(cfg), "train": train}, indent=2) + "\n")
    except BaseException:  # Ctrl-C included: leave no half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)


def load_or_train(out_dir, cfg: DemoConfig):
    """``(base_model, value_model, tokenizer, info)``: from ``out_dir/cache/<key>/`` when complete,
    else trained and written there first. Both are always loaded from disk, so a fresh run and a
    cached run decode with identical weights."""
    from transformers import AutoModelForCausalLM

    cfg = with_backend(cfg)
    cache = cache_dir(out_dir, cfg)
    done = cache / "done.json"
    info = {"cache_dir": str(cache), "cached": done.exists()}
    if not done.exists():
        _train_into(cache, cfg)
    info["train"] = json.loads(done.read_text())["train"]
    tokenizer = cfg.task.tokenizer()
    base = AutoModelForCausalLM.from_pretrained(cache / "base").eval()
    vm = ValueModel.from_pretrained(cache / "value").eval()
    vm.tokenizer = tokenizer
    return base, vm, tokenizer, info

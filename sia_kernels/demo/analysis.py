"""Why the demo's table looks as it does: the base model's entropy at choice steps and elsewhere
(SIA's gate), and the value model's quality on held-out samples (what steering relies on)."""
from __future__ import annotations

import random
import statistics

import torch

from ..tasks.branching import ALIGNED, BranchingTask
from ..value.padding import pad_left, positions_from_mask
from .config import DemoConfig
from .train import sample_base

__all__ = ["value_quality", "choice_step_entropies"]


def value_quality(vm, base, task: BranchingTask, prompts, cfg: DemoConfig) -> dict:
    """Held-out check of the value model: MSE of the final value ``V(x, y)`` against the task reward
    on fresh base samples, next to the best constant (the mean reward); and the mean value gap at
    choice steps between aligned and misaligned choices (expected under the base model: 1/segments)."""
    resps = sample_base(base, task, prompts, cfg, seed=cfg.seed + 2)
    rewards = torch.tensor([task.reward(p, r) for p, r in zip(prompts, resps)])
    ids, mask = pad_left([p + r for p, r in zip(prompts, resps)], task.pad_id)
    with torch.no_grad():
        final = vm.values(ids, mask)[:, -1].cpu()
    gaps = []
    rng = random.Random(f"gap-{cfg.seed}")
    cand = torch.tensor([task.choice_ids])
    with torch.no_grad():
        for p in prompts[:64]:
            r = task.sample_response(rng)
            topic = task.topic_of(p)
            aligned = torch.tensor([c in ALIGNED[topic] for c in range(len(task.choice_ids))])
            pre = [p + r[:s] for s in task.choice_steps()]
            pid, pm = pad_left(pre, task.pad_id)
            v = vm.score_candidates(pid, pm, cand.expand(len(pre), -1), mode="prefix").cpu()
            gaps += (v[:, aligned].mean(-1) - v[:, ~aligned].mean(-1)).tolist()
    vm.reset_counters()
    return {"final_value_mse": float(((final - rewards) ** 2).mean()),
            "constant_mse": float(((rewards - rewards.mean()) ** 2).mean()),
            "choice_value_gap": statistics.mean(gaps), "choice_gap_positive": statistics.mean(g > 0 for g in gaps)}


def choice_step_entropies(base, task: BranchingTask, prompts, k: int = 10, seed: int = 0):
    """Top-k entropy (nats) of the base model's next-token distribution on well-formed responses:
    ``(at choice steps, at every other response step)``, two flat lists."""
    rng = random.Random(f"entropy-{seed}")
    seqs = [p + task.sample_response(rng) for p in prompts]
    ids, mask = pad_left(seqs, task.pad_id)
    pos = positions_from_mask(mask)
    with torch.no_grad():
        logits = base(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits.float()
    top = logits.topk(k, -1).values.log_softmax(-1)
    H = -(top.exp() * top).sum(-1)
    choice, other = [], []
    L, R = ids.shape[1], task.response_length
    steps = set(task.choice_steps())
    for b in range(len(seqs)):
        for t in range(R):  # logits at column c predict column c + 1
            (choice if t in steps else other).append(float(H[b, L - R - 1 + t]))
    return choice, other

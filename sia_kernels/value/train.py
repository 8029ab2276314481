"""Train a token-level value model the paper's way: LoRA (peft) on a backbone plus a scalar head,
loss ``(mean over response tokens of V(x, y<=t) − R(x, y))²`` (``loss="sequence"``), or every
response position regressed on R, ``mean_t (V(x, y<=t) − R)²`` (``loss="token"``).

Python: ``train_value(backbone_or_path, data, out_dir=None, config=ValueTrainConfig(...))``.
CLI: ``sia train-value --backbone PATH --data train.jsonl --out DIR`` (see ``add_train_value_args``).
Data: JSON lines ``{"prompt": str, "response": str, "reward": number}`` (or a list of such dicts).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..jsonl import read_jsonl
from ..runtime import add_runtime_args, check_model_arg
from .backbone import unwrap
from .model import ValueModel
from .padding import pad_left

__all__ = ["ValueTrainConfig", "train_value", "load_rows", "add_train_value_args", "train_value_main"]

# LoRA targets per model family: the attention projections.
DEFAULT_TARGETS = {"gpt2": ("c_attn", "c_proj")}
DEFAULT_TARGETS_OTHER = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class ValueTrainConfig:
    """Training hyper-parameters (defaults follow the paper / the issue)."""

    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None  # None: the attention projections of the family
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 1
    val_fraction: float = 0.1
    seed: int = 0
    max_length: int = 1024
    loss: str = "sequence"  # "sequence": the paper's (mean_t V_t - R)^2; "token": mean_t (V_t - R)^2
    progress: bool = True

    def __post_init__(self):
        for name in ("lora_r", "batch_size", "grad_accum", "epochs", "max_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("lr", "lora_alpha", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)


# ---------------------------------------------------------------------- data
def _check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with prompt, response, reward, got {type(row).__name__}")
    for key in ("prompt", "response"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"{where}: '{key}' must be a string")
    r = row.get("reward")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
        raise ValueError(f"{where}: 'reward' must be a finite number, got {r!r}")
    return {"prompt": row["prompt"], "response": row["response"], "reward": float(r)}


def load_rows(data) -> list[dict]:
    """Rows from a jsonl path or a list of dicts; a malformed row raises ValueError naming its line."""
    if isinstance(data, (str, os.PathLike)):
        return read_jsonl(data, _check_row)
    if isinstance(data, dict) or not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a jsonl path or a list of dicts, got {type(data).__name__}")
    rows = [_check_row(row, f"data row {n}") for n, row in enumerate(data, 1)]
    if not rows:
        raise ValueError("data holds no rows")
    return rows


def _tokenize(rows, tokenizer, max_length):
    """Each row to (ids, response_mask, reward): prompt (with special tokens) + response; the prompt
    is cut from the left, then the response from the right, to fit max_length."""
    out, skipped = [], 0
    for row in rows:
        p = list(tokenizer(row["prompt"])["input_ids"])
        r = list(tokenizer(row["response"], add_special_tokens=False)["input_ids"])[:max_length]
        if not r:
            skipped += 1  # no response token: nothing to average over
            continue
        p = p[len(p) - (max_length - len(r)):] if len(p) + len(r) > max_length else p
        out.append((p + r, [False] * len(p) + [True] * len(r), row["reward"]))
    if not out:
        raise ValueError("no row has a non-empty response after tokenization")
    return out, skipped


def _batch(examples, pad_id, device):
    ids, mask = pad_left([e[0] for e in examples], pad_id, device)
    resp, _ = pad_left([[int(x) for x in e[1]] for e in examples], 0, device)
    reward = torch.tensor([e[2] for e in examples], dtype=torch.float32, device=device)
    return ids, mask, resp.bool(), reward


def _sequence_loss(v, resp, reward):
    """The paper's: ``mean_b (mean_{t in response} V_t − R_b)²``."""
    mean_v = (v * resp).sum(-1) / resp.sum(-1)
    return ((mean_v - reward) ** 2).mean()


def _token_loss(v, resp, reward):
    """Every response position regressed on the trajectory's reward (Monte-Carlo value):
    ``mean_b mean_{t in response} (V_t − R_b)²``. It pins each V_t, not only their mean."""
    err = (v - reward[:, None]) ** 2
    return ((err * resp).sum(-1) / resp.sum(-1)).mean()


LOSSES = {"sequence": _sequence_loss, "token": _token_loss}


def value_loss(vm: ValueModel, ids, mask, resp, reward, kind: str = "sequence") -> torch.Tensor:
    """The training loss ``kind`` (see ``LOSSES``); V from ``vm.values`` ``[B, L]`` f32."""
    return LOSSES[kind](vm.values(ids, mask), resp, reward)


@torch.no_grad()
def _eval_loss(vm, examples, pad_id, batch_size, kind) -> float:
    if not examples:
        return float("nan")
    vm.eval()
    total = 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        total += float(value_loss(vm, *_batch(chunk, pad_id, vm.device), kind)) * len(chunk)
    return total / len(examples)


# ---------------------------------------------------------------------- training
def train_value(backbone_or_path, data, out_dir=None, config: ValueTrainConfig | None = None, tokenizer=None):
    """Train LoRA + head on ``data``; return ``(ValueModel, metrics)``.

    backbone_or_path: a causal LM (it is wrapped in place by peft) or a path/hub id (a local path
    is resolved, so the saved model refers to its backbone by an absolute path).
    tokenizer: required with a model; loaded from the path otherwise. out_dir: if given, the
    model (``save_pretrained``), its tokenizer and ``metrics.json`` are written there.
    metrics: ``val_loss_initial``, ``val_loss`` (held-out), ``train_loss`` (last epoch),
    ``history`` (per epoch), ``num_train``, ``num_val``, ``num_skipped`` (rows whose response
    tokenizes to nothing), ``steps``.
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    config = config or ValueTrainConfig()
    if not isinstance(config, ValueTrainConfig):
        raise TypeError(f"config must be a ValueTrainConfig, got {type(config).__name__}")
    rows = load_rows(data)
    if isinstance(backbone_or_path, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = str(backbone_or_path)
        local = os.path.expanduser(name)
        if os.path.exists(local):  # saved as an absolute path: the model loads from any directory
            name = str(Path(local).resolve())
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
        backbone = AutoModelForCausalLM.from_pretrained(name)
    else:
        backbone = backbone_or_path
    if tokenizer is None:
        raise ValueError("tokenizer is required when backbone_or_path is a model")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    torch.manual_seed(config.seed)
    examples, skipped = _tokenize(rows, tokenizer, config.max_length)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = min(len(examples) - 1, round(config.val_fraction * len(examples)))
    n_val = max(n_val, 1) if config.val_fraction > 0 and len(examples) > 1 else 0
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]

    model_type = unwrap(backbone).config.model_type
    targets = config.target_modules or DEFAULT_TARGETS.get(model_type, DEFAULT_TARGETS_OTHER)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(targets), bias="none", fan_in_fan_out=model_type == "gpt2")
    vm = ValueModel(get_peft_model(backbone, lora))
    vm.head.requires_grad_(True)  # peft freezes a sequence-classification model's own score head
    vm.tokenizer = tokenizer
    params = [p for p in vm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    val_initial = _eval_loss(vm, val, pad_id, config.batch_size, config.loss)
    history, steps = [], 0
    gen = torch.Generator().manual_seed(config.seed + 1)
    n_batches = math.ceil(len(train) / config.batch_size)
    bar = tqdm(total=config.epochs * n_batches, desc="train-value", disable=not config.progress)
    for epoch in range(config.epochs):
        vm.train()
        perm = torch.randperm(len(train), generator=gen).tolist()
        total = 0.0
        for b in range(n_batches):
            chunk = [train[i] for i in perm[b * config.batch_size:(b + 1) * config.batch_size]]
            loss = value_loss(vm, *_batch(chunk, pad_id, vm.device), config.loss)
            (loss / config.grad_accum).backward()
            total += float(loss.detach()) * len(chunk)
            if (b + 1) % config.grad_accum == 0 or b + 1 == n_batches:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        val_loss = _eval_loss(vm, val, pad_id, config.batch_size, config.loss)
        history.append({"epoch": epoch + 1, "train_loss": total / len(train), "val_loss": val_loss})
        bar.set_postfix(loss=f"{total / len(train):.4f}", val=f"{val_loss:.4f}")
    bar.close()
    vm.eval()
    vm.reset_counters()
    metrics = {
        "val_loss_initial": val_initial,
        "val_loss": history[-1]["val_loss"],
        "train_loss": history[-1]["train_loss"],
        "history": history,
        "num_train": len(train),
        "num_val": len(val),
        "num_skipped": skipped,
        "steps": steps,
        "config": asdict(config),
    }
    if out_dir is not None:
        vm.save_pretrained(out_dir)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return vm, metrics


# ---------------------------------------------------------------------- CLI hook
def add_train_value_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sia train-value`` (pass ``formatter_class=sia_kernels.runtime.HelpFormatter`` to
    show the defaults in ``--help``)."""
    parser.add_argument("--backbone", required=True, help="backbone model: a local directory or a Hub id")
    parser.add_argument("--data", required=True, help="jsonl, one object per line with prompt, response, reward")
    parser.add_argument("--out", required=True, help="output model directory (written to a temporary directory "
                        "next to it, moved into place at the end)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    defaults = ValueTrainConfig()
    flags = {"lora_r": ("--lora-r", "LoRA rank"), "lora_alpha": ("--lora-alpha", "LoRA alpha"),
             "lora_dropout": ("--lora-dropout", "LoRA dropout"), "lr": ("--lr", "AdamW learning rate"),
             "weight_decay": ("--weight-decay", "AdamW weight decay"),
             "grad_clip": ("--grad-clip", "gradient norm clip"), "batch_size": ("--batch-size", "rows per step"),
             "grad_accum": ("--grad-accum", "gradient accumulation steps"),
             "epochs": ("--epochs", "passes over the data"),
             "val_fraction": ("--val-fraction", "share of rows held out for the validation loss"),
             "seed": ("--seed", "seed of the split, the order and LoRA's init"),
             "max_length": ("--max-length", "tokens per row at most (prompt cut from the left)")}
    for f in fields(ValueTrainConfig):
        if f.name in flags:
            flag, text = flags[f.name]
            default = getattr(defaults, f.name)
            parser.add_argument(flag, dest=f.name, type=type(default), default=default, help=text)
    parser.add_argument("--loss", choices=sorted(LOSSES), default=defaults.loss,
                        help="sequence: the paper's (mean_t V_t - R)^2; token: mean_t (V_t - R)^2")
    parser.add_argument("--target-modules", nargs="+", default=None,
                        help="LoRA target modules (default: the family's attention projections)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_runtime_args(parser)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _new_dir_next_to(out: Path) -> Path:
    """A fresh hidden directory beside ``out``, mode 0o777 minus the umask (mkdtemp gives 0o700)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _honour_umask(tree: Path) -> None:
    """Give every file under ``tree`` mode 0o666 minus the umask: safetensors writes 0o600."""
    mode = 0o666 & ~_umask()
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def train_value_main(args: argparse.Namespace) -> int:
    """Run ``sia train-value``; print the metrics as JSON; return the exit code. The model is
    written to a temporary directory and moved onto ``--out`` only when training finished, so an
    interrupted run leaves ``--out`` as it was."""
    import shutil

    out = Path(args.out)
    _check_out_dir(out, args.overwrite)
    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such file")
    backbone = check_model_arg(args.backbone, "--backbone")
    names = {f.name for f in fields(ValueTrainConfig)} - {"progress", "target_modules"}
    config = ValueTrainConfig(**{n: getattr(args, n) for n in names},
                              target_modules=args.target_modules, progress=not args.no_progress)
    load_rows(args.data)  # a malformed row fails before the backbone is loaded
    tmp = _new_dir_next_to(out)
    try:
        _, metrics = train_value(backbone, args.data, out_dir=tmp, config=config)
        _honour_umask(tmp)
        if out.exists():
            old = _new_dir_next_to(out)
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
    return 0

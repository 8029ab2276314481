"""Value-model checkpoint formats.

* This package's format (``ValueModel.save_pretrained`` / ``from_pretrained``)::

      value_config.json   {"format": "sia_kernels.value", "version": 1, "backbone_kind":
                           "causal_lm" | "seq_cls", "backbone": path or hub id or null,
                           "hidden_size", "head_bias", "has_adapter", "has_backbone_weights"}
      head.safetensors    "weight" [1, hidden] f32 (+ "bias" [1])
      adapter/            peft adapter (when the backbone is a peft model)
      backbone/           config.json + model.safetensors, base weights without LoRA
                          (when the backbone has no name_or_path to refer to, or on request)
      tokenizer files     (when ValueModel.tokenizer is set)

* The layout the SIA authors released (``from_sia_release``)::

      model_config.json   {"model_type": ..., ...}
      lora_weights/       peft adapter
      token_reward_head.pt  {"token_reward_head": state_dict of Linear(hidden, 1)}

* A plain reward model (``from_reward_model``): ``AutoModelForSequenceClassification`` with
  ``num_labels=1``; its own ``score`` head is the value head (dense mode is then exactly ARGS).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .backbone import is_seq_cls, unwrap

FORMAT = "sia_kernels.value"
CONFIG_NAME, HEAD_NAME, ADAPTER_DIR, BACKBONE_DIR = "value_config.json", "head.safetensors", "adapter", "backbone"
RELEASE_FILES = ("model_config.json", "lora_weights/adapter_config.json", "token_reward_head.pt")


def _require(directory: Path, names) -> None:
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {directory} is missing: {', '.join(missing)}")


def _require_adapter(directory: Path, sub: str) -> None:
    _require(directory, [f"{sub}/adapter_config.json"])
    if not any((directory / sub / f).exists() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise FileNotFoundError(f"checkpoint {directory} is missing: {sub}/adapter_model.safetensors")


def _load_backbone(path_or_model, kind: str, torch_dtype=None, attn_implementation=None):
    """A model given as a path is loaded (``kind``: "seq_cls" or "causal_lm"); a model object is
    used as it is, cast to ``torch_dtype`` when one is given."""
    if not isinstance(path_or_model, (str, os.PathLike)):
        return path_or_model if torch_dtype is None else path_or_model.to(torch_dtype)
    path = path_or_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if kind == "seq_cls" else AutoModelForCausalLM
    kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return cls.from_pretrained(str(path), **kwargs)


def _base_state_dict(model) -> dict[str, torch.Tensor]:
    """Base weights of a (possibly LoRA-injected) HF model under their original names; tied copies dropped."""
    out, seen = {}, set()
    for name, t in unwrap(model).state_dict().items():
        if "lora_" in name:
            continue
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name.replace(".base_layer.", ".")] = t.detach().contiguous().cpu()
    return out


def save_value_model(vm, directory, save_backbone: bool | None = None) -> None:
    """Write the ValueModel ``vm`` in this package's format (see module docstring). A backbone whose
    LoRA adapter was merged (``vm.adapter_merged``) is always written with its weights."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = unwrap(vm.backbone)
    ref = getattr(base.config, "_name_or_path", "") or None
    merged = getattr(vm, "adapter_merged", False)
    if merged and save_backbone is False:
        raise ValueError("the backbone holds a merged LoRA adapter: its weights must be saved (save_backbone=True)")
    if save_backbone is None:  # weights only for a backbone with nothing to refer to (built from a config)
        save_backbone = ref is None or merged
    has_adapter = hasattr(vm.backbone, "peft_config")
    if has_adapter:
        vm.backbone.save_pretrained(str(directory / ADAPTER_DIR))
    if save_backbone:
        (directory / BACKBONE_DIR).mkdir(exist_ok=True)
        base.config.save_pretrained(str(directory / BACKBONE_DIR))
        save_file(_base_state_dict(base), str(directory / BACKBONE_DIR / "model.safetensors"),
                  metadata={"format": "pt"})
    head = {"weight": vm.head.weight.detach().float().contiguous().cpu()}
    if vm.head.bias is not None:
        head["bias"] = vm.head.bias.detach().float().contiguous().cpu()
    save_file(head, str(directory / HEAD_NAME))
    if vm.tokenizer is not None:
        vm.tokenizer.save_pretrained(str(directory))
    config = {
        "format": FORMAT,
        "version": 1,
        "backbone_kind": "seq_cls" if is_seq_cls(vm.backbone) else "causal_lm",
        "backbone": None if save_backbone else ref,
        "model_type": base.config.model_type,
        "hidden_size": vm.head.in_features,
        "head_bias": vm.head.bias is not None,
        "has_adapter": has_adapter,
        "has_backbone_weights": bool(save_backbone),
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def _head_from_state(state: dict, where: str) -> torch.nn.Linear:
    w = state.get("weight")
    if w is None or w.dim() != 2 or w.shape[0] != 1:
        raise ValueError(f"{where}: expected a Linear(hidden, 1) state dict with 'weight' [1, hidden]")
    head = torch.nn.Linear(w.shape[1], 1, bias="bias" in state, dtype=torch.float32)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head


def _maybe_tokenizer(directory: Path):
    if not (directory / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def load_value_model(cls, directory, backbone=None, torch_dtype=None, attn_implementation=None):
    """Load this package's format as a ``cls`` (ValueModel). ``backbone``: a model or path
    overriding the stored reference."""
    from safetensors.torch import load_file

    directory = Path(directory)
    _require(directory, [CONFIG_NAME, HEAD_NAME])
    config = json.loads((directory / CONFIG_NAME).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG_NAME} is not a {FORMAT} config (format={config.get('format')!r})")
    kind = config["backbone_kind"]
    if backbone is None:
        if config.get("has_backbone_weights"):
            _require(directory, [f"{BACKBONE_DIR}/config.json", f"{BACKBONE_DIR}/model.safetensors"])
            backbone = directory / BACKBONE_DIR
        elif config.get("backbone"):
            backbone = config["backbone"]
        else:
            raise ValueError(f"{directory} stores no backbone weights or reference; pass backbone=")
    backbone = _load_backbone(backbone, kind, torch_dtype, attn_implementation)
    if config.get("has_adapter"):
        from peft import PeftModel

        _require_adapter(directory, ADAPTER_DIR)
        backbone = PeftModel.from_pretrained(backbone, str(directory / ADAPTER_DIR))
    vm = cls(backbone, _head_from_state(load_file(str(directory / HEAD_NAME)), str(directory / HEAD_NAME)))
    vm.tokenizer = _maybe_tokenizer(directory)
    return vm.eval()


def load_sia_release(cls, backbone_path_or_model, checkpoint_dir, torch_dtype=None, attn_implementation=None):
    """Load the authors' release layout as a ``cls`` (ValueModel) on a causal-LM backbone (model or path)."""
    from peft import PeftModel

    directory = Path(checkpoint_dir)
    _require(directory, RELEASE_FILES)
    _require_adapter(directory, "lora_weights")
    meta = json.loads((directory / "model_config.json").read_text())
    if "model_type" not in meta:
        raise ValueError(f"{directory / 'model_config.json'} has no 'model_type'")
    backbone = _load_backbone(backbone_path_or_model, "causal_lm", torch_dtype, attn_implementation)
    backbone_type = unwrap(backbone).config.model_type
    if meta["model_type"] != backbone_type and meta["model_type"] in _known_model_types():
        raise ValueError(f"release was trained on model_type {meta['model_type']!r}, backbone is {backbone_type!r}")
    state = torch.load(directory / "token_reward_head.pt", map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "token_reward_head" not in state:
        raise ValueError(f"{directory / 'token_reward_head.pt'} must hold {{'token_reward_head': state_dict}}")
    head = _head_from_state(state["token_reward_head"], str(directory / "token_reward_head.pt"))
    backbone = PeftModel.from_pretrained(backbone, str(directory / "lora_weights"))
    return cls(backbone, head).eval()


def _known_model_types() -> set[str]:
    from transformers import CONFIG_MAPPING

    return set(CONFIG_MAPPING.keys())


def load_reward_model(cls, path_or_model, torch_dtype=None, attn_implementation=None):
    """A sequence-classification reward model (``num_labels=1``) as a ``cls`` (ValueModel), its own head kept."""
    model = _load_backbone(path_or_model, "seq_cls", torch_dtype, attn_implementation)
    if not is_seq_cls(model):
        raise TypeError(f"path_or_model must be an AutoModelForSequenceClassification, got {type(model).__name__}")
    num_labels = unwrap(model).config.num_labels
    if num_labels != 1:
        raise ValueError(f"reward model must have num_labels=1, got {num_labels}")
    vm = cls(model)
    if isinstance(path_or_model, (str, os.PathLike)):
        vm.tokenizer = _maybe_tokenizer(Path(path_or_model))
    return vm.eval()

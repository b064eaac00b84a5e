"""The model of the MAD-X pipeline (SPEC §1): frozen encoder + Stack(language, task) adapters + task head.

`load_encoder` loads any supported Hugging Face encoder by Hub id or local directory, in float32 (an fp16
checkpoint would otherwise compute in fp16, slowly on CPU) and with PyTorch's fused scaled-dot-product attention
(SDPA) where the architecture has it; tr(F) switches to eager attention while it runs, since `vmap` needs it
(fun/fisher.py). `AdapterModel`
owns the encoder, the adapter stack and the head as submodules, so `torch.func.functional_call` on it can
swap task-adapter parameters (fun/fisher.py). Task adapters + head save to safetensors with a JSON config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fun.adapters import AdapterSet, AdapterStack, add_adapters

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "deberta-v2", "roberta")
# Training and evaluation use SDPA where Hugging Face implements it (DeBERTa-v2's disentangled attention has none).
SDPA_ATTENTION = {"bert": "sdpa", "xlm-roberta": "sdpa", "roberta": "sdpa"}


class UsageError(Exception):
    """Bad input from the user: the CLIs print the message alone and exit with code 2."""


def load_encoder(name_or_path: str) -> tuple[nn.Module, object]:
    """(encoder, fast tokenizer) from a Hub id or a local directory, in float32 with SDPA attention where available."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    local = Path(name_or_path)
    if local.exists():
        if not local.is_dir():
            raise UsageError(f"--model {name_or_path}: is a file; pass a directory with config.json, weights and tokenizer files")
        if not (local / "config.json").exists():
            raise UsageError(f"--model {name_or_path}: no config.json in that directory; pass a Hugging Face model directory")
        if not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
            raise UsageError(f"--model {name_or_path}: no weights (*.safetensors or *.bin) in that directory")
        if not any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                   "sentencepiece.bpe.model", "spm.model")):
            raise UsageError(f"--model {name_or_path}: no tokenizer files (tokenizer.json / tokenizer_config.json) in that directory")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise UsageError(f"--model {name_or_path}: not a local directory and could not be loaded from the Hugging Face Hub "
                         f"(offline or unknown id). Download it elsewhere and pass the local directory, e.g. --model /path/to/{Path(name_or_path).name}") from err
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(f"--model {name_or_path}: model type '{config.model_type}' is not supported "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    kwargs = dict(dtype=torch.float32, attn_implementation=SDPA_ATTENTION.get(config.model_type, "eager"))
    if config.model_type != "deberta-v2":
        kwargs["add_pooling_layer"] = False
    encoder = AutoModel.from_pretrained(name_or_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    return encoder, tokenizer


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class AdapterModel(nn.Module):
    """encoder (frozen) → hooks run Stack(lang, task) in every layer → head. forward(batch) → logits (B, H, K)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task_adapter: AdapterSet | None = None,
                 lang_adapter: AdapterSet | None = None):
        super().__init__()
        self.encoder = encoder
        self.adapters = AdapterStack(lang=lang_adapter, task=task_adapter)
        self.head = head
        self.hooks = add_adapters(encoder, self.adapters)
        # DeBERTa-v2 builds its mask with plain tensor ops; BERT/XLM-R call HF's mask utilities, whose
        # data-dependent shortcuts break `vmap` (SPEC §4), so we hand them the finished additive mask.
        self.additive_mask = encoder.config.model_type != "deberta-v2"

    @property
    def task_adapter(self) -> AdapterSet | None:
        return self.adapters.task

    def set_lang_adapter(self, lang_adapter: AdapterSet | None) -> None:
        """Zero-shot transfer (SPEC §1.4): swap the source-language adapter for the target language's."""
        if lang_adapter is not None:
            freeze(lang_adapter)
            lang_adapter.to(next(self.head.parameters()).device)
        self.adapters.lang = lang_adapter

    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"]
        shape = input_ids.shape  # (B, T) or (B, C, T) for multiple choice
        flat = {k: batch[k].reshape(-1, shape[-1]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.additive_mask and "attention_mask" in flat:
            flat["attention_mask"] = additive_attention_mask(flat["attention_mask"], self.head_dtype())
        hidden = self.encoder(**flat).last_hidden_state  # (B·C, T, d)
        return self.head(hidden, shape)


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, T) 0/1 mask → (N, 1, 1, T) additive mask: 0 where attended, dtype-min where padded (as HF's eager mask)."""
    return torch.where(mask[:, None, None, :].bool(), 0.0, torch.finfo(dtype).min).to(dtype)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting each tensor once."""
    params = list({id(p): p for p in model.parameters()}.values())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- saving and loading a trained task adapter + head ------------------------------------------------------

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


def save_task_adapter(model: AdapterModel, directory: str | os.PathLike, meta: dict) -> None:
    """Task adapter + head → `adapter.safetensors` + `adapter_config.json` (written atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    if model.task_adapter is not None:
        tensors.update({f"task.{k}": v for k, v in model.task_adapter.state_dict().items()})
    else:  # full fine-tuning: the encoder itself is what was trained
        tensors.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    config = dict(meta, task_adapter=model.task_adapter.config if model.task_adapter is not None else None)
    tmp = directory / (ADAPTER_WEIGHTS + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / ADAPTER_WEIGHTS)
    tmp = directory / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, directory / ADAPTER_CONFIG)


def read_adapter_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.exists():
        raise UsageError(f"{directory}: no {ADAPTER_CONFIG}; expected a saved task adapter (a run's best/ or final/ directory)")
    return json.loads(path.read_text())


def load_task_adapter_weights(model: AdapterModel, directory: str | os.PathLike) -> None:
    """Load weights saved by `save_task_adapter` into a model built with the same config."""
    tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
    parts = {"head": model.head, "task": model.task_adapter, "encoder": model.encoder}
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if sub:
            module.load_state_dict(sub, strict=prefix != "encoder")

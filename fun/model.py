"""The model of the MAD-X pipeline (paper §3.1): frozen encoder + Stack(language, task) adapters + task head.

`load_encoder` loads any supported Hugging Face encoder by Hub id or local directory, in float32 (an fp16
checkpoint would otherwise compute in fp16, slowly on CPU) and with PyTorch's fused scaled-dot-product attention
(SDPA) where the architecture has it; tr(F) switches to eager attention while it runs, since `vmap` needs it
(fun/fisher.py). `AdapterModel` owns the encoder, the adapter stack and the head as submodules, so
`torch.func.functional_call` on it can swap task-adapter parameters. What a run trains (task adapter + head) saves
to safetensors with a JSON config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fun.adapters import AdapterSet, AdapterStack, add_adapters
from fun.hub import HubError, explain
from fun.lora import LoraSet

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "deberta-v2", "roberta")
# Training and evaluation use SDPA where Hugging Face implements it (DeBERTa-v2's disentangled attention has none).
SDPA_ATTENTION = {"bert": "sdpa", "xlm-roberta": "sdpa", "roberta": "sdpa"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model")


def load_encoder(name_or_path: str) -> tuple[nn.Module, object]:
    """(encoder, fast tokenizer) from a Hub id or a local directory, in float32 with SDPA attention where available.
    A local directory is checked for config, weights and tokenizer first, so a wrong path fails with its reason."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    local = Path(name_or_path)
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"{name_or_path} is a file; expected a directory with config.json, weights and tokenizer")
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"no config.json in {name_or_path}; expected a Hugging Face model directory")
        if not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
            raise FileNotFoundError(f"no weights (*.safetensors or *.bin) in {name_or_path}")
        if not any((local / f).exists() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {name_or_path}")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise HubError(f"{name_or_path}: not a local model directory, and loading it from the Hugging Face Hub "
                       f"failed: {explain(err)}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{name_or_path}: model type '{config.model_type}' is not supported "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    kwargs = dict(dtype=torch.float32, attn_implementation=SDPA_ATTENTION.get(config.model_type, "eager"))
    if config.model_type != "deberta-v2":
        kwargs["add_pooling_layer"] = False
    encoder = AutoModel.from_pretrained(name_or_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    return encoder, tokenizer


def model_dir(name_or_path: str) -> str | None:
    """The absolute path of a local model directory (None for a Hub id): a run stores it next to `--model` as given,
    so that a relative path still finds the model from another working directory."""
    return str(Path(name_or_path).resolve()) if Path(name_or_path).is_dir() else None


def locate_model(name_or_path: str, saved_dir: str | None = None) -> str:
    """The model a run was trained with: `name_or_path` as given when it is a directory here, else the absolute
    `saved_dir` stored at training time, else a Hub id. A run trained on a local directory that is found under
    neither path is a FileNotFoundError naming both, before anything loads."""
    if Path(name_or_path).is_dir() or saved_dir is None:
        return name_or_path
    if Path(saved_dir).is_dir():
        return saved_dir
    raise FileNotFoundError(f"the run's model directory {name_or_path} is not here: tried {Path(name_or_path).resolve()} "
                            f"and {saved_dir}, where it was at training time")


def max_sequence_length(config) -> int | None:
    """The most tokens the encoder's position embeddings cover (None: relative positions only, no limit).
    XLM-R/RoBERTa count positions from padding_idx + 1, so 514 embeddings hold 512 tokens."""
    if config.model_type == "deberta-v2" and not getattr(config, "position_biased_input", True):
        return None
    offset = config.pad_token_id + 1 if config.model_type in ("xlm-roberta", "roberta") else 0
    return config.max_position_embeddings - offset


TASK_ADAPTERS: dict[str, type[nn.Module]] = {"bottleneck": AdapterSet, "lora": LoraSet}


def adapter_suffix(config: dict) -> str:
    """What a run's name adds for its task adapter: '' for the bottleneck one (also a config from before `adapter`
    was recorded), '-lora' for LoRA. Tables and plots name a run's method by it (`gu-lora`)."""
    adapter = config.get("adapter") or "bottleneck"
    return "" if adapter == "bottleneck" else f"-{adapter}"


def build_task_adapter(config: dict) -> nn.Module:
    """A task adapter from its config; the config's `adapter` names the kind (none: a bottleneck `AdapterSet`)."""
    config = dict(config)
    return TASK_ADAPTERS[config.pop("adapter", "bottleneck")](**config)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class AdapterModel(nn.Module):
    """encoder (frozen) → hooks run Stack(lang, task) in every layer → head. forward(batch) → logits (B, H, K).

    A task adapter is any module with `layers` (layer i's unit: what a schedule unfreezes and tr(F) sums over),
    `config` (what `build_task_adapter` rebuilds it from), `output_adapters(i)` (what it runs in layer i's output
    block) and `add_hooks(encoder)` (hooks it needs elsewhere): `AdapterSet` (bottleneck) or `LoraSet`.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, task_adapter: nn.Module | None = None,
                 lang_adapter: AdapterSet | None = None):
        super().__init__()
        self.encoder = encoder
        self.adapters = AdapterStack(lang=lang_adapter, task=task_adapter)
        self.head = head
        self.hooks = add_adapters(encoder, self.adapters)
        # DeBERTa-v2 builds its mask with plain tensor ops; BERT/XLM-R call HF's mask utilities, whose
        # data-dependent shortcuts break `vmap`, so we hand them the finished additive mask.
        self.additive_mask = encoder.config.model_type != "deberta-v2"

    @property
    def task_adapter(self) -> nn.Module | None:
        return self.adapters.task

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_hidden_layers

    @property
    def task_layers(self) -> list[nn.Module]:
        """The per-layer task adapters a schedule unfreezes (index 0 = bottom); none in full fine-tuning."""
        return list(self.task_adapter.layers) if self.task_adapter is not None else []

    def set_lang_adapter(self, lang_adapter: AdapterSet | None) -> None:
        """Zero-shot transfer (paper §3.1): swap the source-language adapter for the target language's."""
        if lang_adapter is not None:
            freeze(lang_adapter)
            lang_adapter.to(next(self.head.parameters()).device)
        self.adapters.lang = lang_adapter

    def trained_parts(self) -> dict[str, nn.Module]:
        """What a run trains, checkpoints and saves: the head and the task adapter (full fine-tuning: the encoder)."""
        return {"head": self.head, "task": self.task_adapter} if self.task_adapter is not None else \
            {"head": self.head, "encoder": self.encoder}

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder output (N, T, d) for `batch`; multiple-choice inputs (B, C, T) are flattened to N = B·C rows."""
        length = batch["input_ids"].shape[-1]
        flat = {k: batch[k].reshape(-1, length) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.additive_mask and "attention_mask" in flat:
            flat["attention_mask"] = additive_attention_mask(flat["attention_mask"], next(self.head.parameters()).dtype)
        return self.encoder(**flat).last_hidden_state

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encode(batch), batch["input_ids"].shape)  # (B, H, K)


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, T) 0/1 mask → (N, 1, 1, T) additive mask: 0 where attended, dtype-min where padded (as HF's eager mask)."""
    return torch.where(mask[:, None, None, :].bool(), 0.0, torch.finfo(dtype).min).to(dtype)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting each tensor once."""
    params = list({id(p): p for p in model.parameters()}.values())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- saving and loading what a run trained --------------------------------------------------------------------------

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


def save_adapter(directory: str | os.PathLike, parts: dict[str, nn.Module], adapter_config: dict | None,
                 meta: dict) -> None:
    """`parts` → `adapter.safetensors` (keys `head.*`, `task.*` — the adapter the run trained, for --task mlm the
    language adapter — or `encoder.*`) + `adapter_config.json` (`meta` and the adapter's config), atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().contiguous().cpu() for name, part in parts.items()
               for k, v in part.state_dict().items()}
    tmp = directory / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / ADAPTER_WEIGHTS)
    tmp = directory / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(dict(meta, task_adapter=adapter_config), indent=2))
    os.replace(tmp, directory / ADAPTER_CONFIG)


def read_adapter_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory}; expected a saved task adapter "
                                "(a run's best/ or final/ directory)")
    return json.loads(path.read_text())


def load_adapter_weights(model: AdapterModel, directory: str | os.PathLike) -> None:
    """Load weights saved by `save_adapter` into a model built with the same config (RuntimeError if they do not fit)."""
    tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
    parts = {"head": model.head, "task": model.task_adapter, "encoder": model.encoder}
    for prefix, module in parts.items():
        sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if sub:
            module.load_state_dict(sub, strict=prefix != "encoder")

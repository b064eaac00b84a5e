"""LoRA task adapters by forward hooks (Hu et al. 2022), with PEFT's math, initialisation and file layout.

A forward hook on each targeted `nn.Linear` of every Transformer layer adds PEFT's update (`peft.tuners.lora.layer.
Linear.forward`, PEFT 0.20.0):  h = W x + b + (alpha / r) · B(A(dropout(x))),  A Kaiming-uniform (a = √5), B zero.
Layer i's LoRA modules are one unit, `layers[i]`: what a schedule unfreezes (Algorithm 1) and tr(F)_i sums over
(Eq. 1). `save_peft` / `load_peft` write and read PEFT's layout: `PeftModel.from_pretrained(AutoModel..., DIR)`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fun.adapters import get_encoder_parts

# target → its Linear inside a Transformer layer (BERT, XLM-R; DeBERTa-v2 names q, k, v `query_proj`, ...)
TARGETS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
           "attention_output": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense"}
PEFT_CONFIG, PEFT_WEIGHTS, PEFT_PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."


class LoraLinear(nn.Module):
    """The LoRA update of one Linear, with PEFT's parameter names (`lora_A`, `lora_B`) and init."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init_lora_weights=True
        nn.init.zeros_(self.lora_B.weight)  # so a new LoRA leaves the model as it was

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (..., d_out)

    def add_to_output(self, linear: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """The forward hook on the target: W x + b → W x + b + LoRA(x). A bound method, so a deep copy of the model
        hooks the copy's LoRA."""
        return output + self(args[0])


def get_target(layer: nn.Module, target: str) -> nn.Linear:
    """The Linear that `target` names in a Transformer layer."""
    for path in (TARGETS[target], TARGETS[target] + "_proj"):
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(f"{type(layer).__name__} has no {TARGETS[target]}: LoRA target '{target}' does not fit it")


class LoraSet(nn.Module):
    """A task LoRA across the encoder: layers[i] = {target: LoraLinear}, PEFT's LoRA on every layer."""

    invertible = None  # only a language adapter transforms the embeddings

    def __init__(self, hidden_size: int, num_layers: int, intermediate_size: int, rank: int = 8, alpha: float = 8.0,
                 dropout: float = 0.0, targets: Sequence[str] = ("query", "value")):
        super().__init__()
        if not targets or set(targets) - set(TARGETS):
            raise ValueError(f"LoRA targets {','.join(targets)}: choose among {', '.join(TARGETS)}")
        targets = [t for t in TARGETS if t in targets]
        self.config = dict(adapter="lora", hidden_size=hidden_size, num_layers=num_layers,
                           intermediate_size=intermediate_size, rank=rank, alpha=alpha, dropout=dropout, targets=targets)
        shapes = {"intermediate": (hidden_size, intermediate_size), "output": (intermediate_size, hidden_size)}
        self.layers = nn.ModuleList(
            nn.ModuleDict({t: LoraLinear(*shapes.get(t, (hidden_size, hidden_size)), rank, alpha, dropout)
                           for t in targets}) for _ in range(num_layers))

    def output_adapters(self, i: int) -> list:
        return []  # LoRA runs inside the Linear layers, not in the output block's adapter step

    def add_hooks(self, encoder: nn.Module) -> list:
        return [get_target(layer, target).register_forward_hook(lora.add_to_output)
                for layer, loras in zip(get_encoder_parts(encoder)[1], self.layers) for target, lora in loras.items()]


def module_names(encoder: nn.Module) -> dict[str, tuple[int, str]]:
    """{the encoder's name of each possible target Linear: (layer, target)}: PEFT's keys use these names."""
    names = {id(m): name for name, m in encoder.named_modules()}
    return {names[id(get_target(layer, t))]: (i, t) for i, layer in enumerate(get_encoder_parts(encoder)[1])
            for t in TARGETS}


def save_peft(lora: LoraSet, encoder: nn.Module, directory: str | os.PathLike, base_model: str) -> None:
    """PEFT's layout (0.20.0): adapter_model.safetensors keyed `base_model.model.<module>.lora_A.weight`, and
    adapter_config.json, a LoraConfig with the targeted modules' full names."""
    where = {v: k for k, v in module_names(encoder).items()}
    tensors = {f"{PEFT_PREFIX}{where[i, t]}.{k}": v.detach().contiguous().cpu()
               for i, layer in enumerate(lora.layers) for t, m in layer.items() for k, v in m.state_dict().items()}
    c = lora.config
    config = dict(peft_type="LORA", task_type=None, base_model_name_or_path=base_model, revision=None,
                  inference_mode=True, r=c["rank"], lora_alpha=c["alpha"], lora_dropout=c["dropout"],
                  target_modules=sorted({k.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0] for k in tensors}),
                  bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False, init_lora_weights=True,
                  modules_to_save=None, layers_to_transform=None, layers_pattern=None, rank_pattern={}, alpha_pattern={})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / PEFT_WEIGHTS), metadata={"format": "pt"})
    (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2))


def load_peft(directory: str | os.PathLike, encoder: nn.Module) -> LoraSet:
    """A LoRA in PEFT's layout (by `save_peft`, or by PEFT on this encoder with one rank on every layer)."""
    directory = Path(directory)
    for name in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"no {name} in {directory}; expected a PEFT LoRA adapter directory")
    config = json.loads((directory / PEFT_CONFIG).read_text())
    other = [k for k in ("use_dora", "use_rslora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "lora_bias")
             if config.get(k)]
    if config.get("peft_type") != "LORA" or config.get("bias", "none") != "none" or other:
        raise ValueError(f"{directory}: not a plain LoRA (peft_type {config.get('peft_type')}, bias "
                         f"{config.get('bias')}{', ' + ', '.join(other) if other else ''}); only that loads")
    where, found = module_names(encoder), {}
    for key, value in load_file(str(directory / PEFT_WEIGHTS)).items():
        module, _, param = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if module not in where:
            raise ValueError(f"{directory}: {key} is not a LoRA of a Linear in {type(encoder).__name__}'s layers")
        found[(*where[module], "lora_" + param)] = value  # (layer, target, "lora_A.weight")
    c = encoder.config
    lora = LoraSet(c.hidden_size, c.num_hidden_layers, c.intermediate_size, config["r"], config["lora_alpha"],
                   config.get("lora_dropout", 0.0), sorted({t for _, t, _ in found}))
    try:
        lora.layers.load_state_dict({f"{i}.{t}.{p}": v for (i, t, p), v in found.items()})
    except RuntimeError as err:  # LoRA on some layers only, or ranks that differ
        raise ValueError(f"{directory}: not one rank on every layer's {', '.join(lora.config['targets'])} "
                         f"({' '.join(str(err).split())[:300]})") from None
    return lora

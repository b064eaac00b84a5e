"""MAD-X bottleneck adapters, injected into a frozen Hugging Face encoder with forward hooks.

Implements paper §3.1 and Fig. 6 (Pfeiffer et al. 2020, "MAD-X"): one bottleneck adapter per
Transformer layer, placed in the layer's output block, and AdapterHub's `Stack(language, task)`
composition; plus the NICE invertible adapter that a MAD-X language adapter applies to the embeddings.

Parameter names mirror AdapterHub's (`adapter_down.0`, `adapter_up`, `F.0`, `F.2`, `G.0`, `G.2`) so that
loading AdapterHub files is a key rename, not a conversion (see `fun/adapterhub.py`).

Nothing in the Hugging Face classes is edited: `add_adapters(model)` registers hooks and returns one
handle that removes them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.activations import ACT2FN


def init_bert(module: nn.Module, std: float = 0.02) -> None:
    """AdapterHub's "bert" init: every Linear weight ~ N(0, 0.02), biases 0 (so a new adapter is *not* the identity)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            nn.init.zeros_(m.bias)


class BottleneckAdapter(nn.Module):
    """f(z) = W_up · act(W_down · z + b_down) + b_up, bottleneck = hidden // reduction_factor."""

    def __init__(self, hidden_size: int, reduction_factor: int = 16, activation: str = "relu"):
        super().__init__()
        bottleneck = hidden_size // reduction_factor
        self.adapter_down = nn.Sequential(nn.Linear(hidden_size, bottleneck), ACT2FN[activation])
        self.adapter_up = nn.Linear(bottleneck, hidden_size)
        init_bert(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.adapter_up(self.adapter_down(z))


class InvertibleAdapter(nn.Module):
    """NICE coupling block on the embedding output (MAD-X `pfeiffer+inv`).

    e = [e1, e2];  y1 = e1 + F(e2);  y2 = e2 + G(y1).  F, G: Linear(d/2, d/4) → act → Linear(d/4, d/2).
    """

    def __init__(self, hidden_size: int, reduction_factor: int = 2, activation: str = "relu"):
        super().__init__()
        self.split = hidden_size // 2
        d1, d2 = self.split, hidden_size - self.split

        def subnet(d_in: int, d_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(d_in, d_in // reduction_factor), ACT2FN[activation],
                                 nn.Linear(d_in // reduction_factor, d_out))

        self.F = subnet(d2, d1)
        self.G = subnet(d1, d2)
        init_bert(self)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        e1, e2 = e[..., :self.split], e[..., self.split:]
        y1 = e1 + self.F(e2)
        y2 = e2 + self.G(y1)
        return torch.cat([y1, y2], dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Used before the MLM output layer when training a language adapter (fun/mlm.py)."""
        y1, y2 = y[..., :self.split], y[..., self.split:]
        e2 = y2 - self.G(y1)
        e1 = y1 - self.F(e2)
        return torch.cat([e1, e2], dim=-1)


class AdapterSet(nn.Module):
    """One named adapter across the encoder: a bottleneck adapter per layer (+ optional invertible adapter).

    A MAD-X language adapter is `AdapterSet(d, L, reduction_factor=2, activation=<from config>, invertible=True)`;
    a task adapter is `AdapterSet(d, L, reduction_factor=16, activation="relu")`.
    """

    def __init__(self, hidden_size: int, num_layers: int, reduction_factor: int = 16,
                 activation: str = "relu", invertible: bool = False, inv_reduction_factor: int = 2):
        super().__init__()
        self.config = dict(hidden_size=hidden_size, num_layers=num_layers, reduction_factor=reduction_factor,
                           activation=activation, invertible=invertible, inv_reduction_factor=inv_reduction_factor)
        self.layers = nn.ModuleList(BottleneckAdapter(hidden_size, reduction_factor, activation)
                                    for _ in range(num_layers))
        self.invertible = InvertibleAdapter(hidden_size, inv_reduction_factor, activation) if invertible else None

    def output_adapters(self, i: int) -> list[BottleneckAdapter]:
        """What this set runs in layer i's output block, where the stack's hooks compute `madx_output`."""
        return [self.layers[i]]

    def add_hooks(self, encoder: nn.Module) -> list:
        """Hooks of its own besides the output block's: none, the stack's hooks run a bottleneck adapter."""
        return []


def madx_output(h: torch.Tensor, x: torch.Tensor, layer_norm: nn.Module,
                adapters: list[BottleneckAdapter]) -> torch.Tensor:
    """The MAD-X output-block step (docs/design.md), for a Stack of adapters (bottom of the stack first).

    h: FFN output before residual and LayerNorm, dropout(dense(ffn)), (B, T, d); x: attention output, (B, T, d).
    Returns a_top such that the block's own code finishes with out = LN(a_top + x):
        a_0 = h;  a_{i+1} = a_i + f_i(LN(a_i + x))     (the same frozen LN at every step)
    With no adapters it returns h unchanged, so the block computes LN(h + x) exactly as without hooks.
    """
    a = h
    for f in adapters:
        a = a + f(layer_norm(a + x))  # (B, T, d)
    return a


@dataclass
class AdapterHandle:
    """Everything `add_adapters` registered; `remove()` restores the plain model."""
    hooks: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def get_encoder_parts(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(embeddings module, [Transformer layer i]) for BertModel, XLMRobertaModel, DebertaV2Model."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not hasattr(base, "embeddings") or layers is None or not all(hasattr(layer, "output") for layer in layers):
        raise ValueError(f"{type(model).__name__} is not a supported encoder: expected `.embeddings` and "
                         "`.encoder.layer[i].output` (BERT, XLM-R, mDeBERTa-v2/v3)")
    return base.embeddings, list(layers)


class _BlockHooks:
    """The two hooks of one output block. An object, not a closure: `copy.deepcopy(model)` deep-copies a bound
    method's `self`, so a copied model's hooks drive the copied adapters (closures would keep the originals)."""

    def __init__(self, stack: "AdapterStack", block: nn.Module, index: int):
        self.stack, self.block, self.index, self.x = stack, block, index, None

    def capture_x(self, module, args, kwargs):
        self.x = args[1] if len(args) > 1 else kwargs["input_tensor"]

    def apply_stack(self, module, args, h):
        x, self.x = self.x, None  # never keep activations alive after the call
        return madx_output(h, x, self.block.LayerNorm, self.stack.layer(self.index))


class _EmbeddingHook:
    def __init__(self, stack: "AdapterStack"):
        self.stack = stack

    def __call__(self, module, args, output):
        inv = self.stack.invertible()
        return output if inv is None else inv(output)


def add_adapters(model: nn.Module, stack: "AdapterStack") -> AdapterHandle:
    """Inject `stack` into `model` with forward hooks; return the one handle that removes them.

    Per layer i, the output block computes LN(dropout(dense(ffn)) + x). We capture x with a forward
    pre-hook on the block, and replace h = dropout(dense(ffn)) by `madx_output(h, x, ...)` in a forward
    hook on the block's `dropout` — so the dense layer runs once and the block's own LN(· + x) finishes.
    The hooks read `stack` at call time, so swapping the language adapter needs no re-registration.
    """
    embeddings, layers = get_encoder_parts(model)
    handle = AdapterHandle()
    handle.hooks.append(embeddings.register_forward_hook(_EmbeddingHook(stack)))
    for i, layer in enumerate(layers):
        hooks = _BlockHooks(stack, layer.output, i)
        handle.hooks.append(layer.output.register_forward_pre_hook(hooks.capture_x, with_kwargs=True))
        handle.hooks.append(layer.output.dropout.register_forward_hook(hooks.apply_stack))
    for adapter in stack.adapters():  # adapters placed elsewhere than the output block bring their own hooks
        handle.hooks += adapter.add_hooks(model)
    return handle


class AdapterStack(nn.Module):
    """MAD-X `Stack(language, task)`: an optional language adapter below an optional task adapter.

    Either may be None (task adapter alone is the common variant without language adapters). The
    invertible adapter of the *first* adapter in the stack runs on the embeddings.
    """

    def __init__(self, lang: AdapterSet | None = None, task: AdapterSet | None = None):
        super().__init__()
        self.lang = lang
        self.task = task

    def adapters(self) -> list[AdapterSet]:
        return [a for a in (self.lang, self.task) if a is not None]

    def layer(self, i: int) -> list[BottleneckAdapter]:
        """The bottleneck adapters of layer i's output block, bottom of the stack first."""
        return [f for a in self.adapters() for f in a.output_adapters(i)]

    def invertible(self) -> InvertibleAdapter | None:
        first = self.adapters()[:1]
        return first[0].invertible if first else None

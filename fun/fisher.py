"""tr(F), the trace of the Fisher information per task-adapter layer: paper §3.3, Eq. 1 and Algorithm 2 (App. D).

    tr(F)_i = E_{x ~ data} E_{y ~ p_w(y|x)} ||∇_{w_i} log p_w(y|x)||²        (w_i = task adapter of layer i)

Eq. 1 takes the gradient over all weights w; restricted to w_i it is the trace of F's diagonal block for layer i.
Traces add over blocks, so tr(F) of all task-adapter weights is Σ_i tr(F)_i: Algorithm 2 aggregates by adapter
block the same way (and then averages over the trainable ones).

`fisher_trace` computes it the way the torch.func per-sample-gradients tutorial computes per-example gradients:
`grad` of one example's log-likelihood, `vmap` over the batch, with the task-adapter tensors passed in as a dict
to `functional_call`. So frozen adapters are measured like trainable ones and nothing the training loop owns
moves: no `requires_grad` flip, no `.grad`, no optimizer, no model copy, no global RNG draw.

Logits have one shape for every task, (B, H, K): H independent categorical heads over K outcomes (fun/heads.py),
so log p(y|x) = Σ_h log_softmax(logits)[h, y_h] covers classification (H=1), multiple choice (H=1, y = the
choice) and span QA (H=2: start + end, each sampled independently).

Label modes (which y): sample (Eq. 1: y ~ p_w(y|x)), exact (the expectation over y in closed form,
`exact_fisher_trace`), argmax (the released code), true (gold labels: the "empirical Fisher", Kunstner et al.
2019 — for comparison only). Estimators: per-sample (Eq. 1) and batch (`batch_fisher_trace`, Algorithm 2 as
released: ||∇_{w_i} mean-batch NLL||² / |b|, whose label expectation is tr(F)/|b|² — a different, smaller quantity).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from fun.data import to_device
from fun.device import full_fp32

LABEL_MODES = ("sample", "exact", "argmax", "true")
ESTIMATORS = ("per-sample", "batch")
Batch = dict[str, torch.Tensor]


def fisher_trace(model: nn.Module, batches: Sequence[Batch], *, labels: str = "sample",
                 estimator: str = "per-sample", generator: torch.Generator | None = None,
                 chunk_size: int | None = None, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None) -> dict[int, float]:
    """tr(F) per task-adapter layer i (the sum over the parameters of `model.task_adapter.layers[i]`), averaged over
    every example of `batches` (collated dicts; `labels` needed for labels="true"). `generator` (CPU) drives label
    sampling (None: a fixed seed, never the global RNG); `chunk_size` bounds memory: examples per vmap chunk, and for
    labels="exact" also outputs per jacrev chunk (at most chunk_size² gradients at once)."""
    check_arguments(labels, estimator, batches)
    if estimator == "batch":
        return batch_fisher_trace(model, batches, labels, generator, chunk_size, device, autocast_dtype)
    if labels == "exact":
        return exact_fisher_trace(model, batches, generator, chunk_size, device, autocast_dtype)
    params, layers = task_adapter_params(model)  # {name: tensor}, [names of layer i's parameters]
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def log_likelihood(params, example, u, gold):  # log p(y|x) for one example, y chosen by `labels`
        logp = log_probs(model, params, unsqueeze(example), autocast_dtype)[0]  # (H, K)
        y = choose_labels(logp, labels, u, gold)  # (H,)
        return logp.gather(-1, y[:, None]).sum()  # Σ_h log p_h(y_h|x); gather, not indexing, under vmap

    def sq_grad_norms(params, example, u, gold):  # ||∇_{w_i} log p(y|x)||² for each layer i → (L,)
        return layer_sq_norms(grad(log_likelihood)(params, example, u, gold), layers)

    per_example = vmap(sq_grad_norms, in_dims=(None, 0, 0, 0), chunk_size=chunk_size)
    total, count = torch.zeros(len(layers), dtype=torch.float64), 0
    with measuring(model):  # eval mode (F is the predictive distribution's), eager attention, no graph
        for batch in batches:
            batch, uniform, gold = prepare(model, batch, labels, generator, device)
            total += per_example(params, batch, uniform, gold).double().sum(0).cpu()  # Σ_n over the batch
            count += len(uniform)
    return {i: float(v) for i, v in enumerate(total / count)}  # E_x: the mean over all examples


def exact_fisher_trace(model: nn.Module, batches: Sequence[Batch], generator: torch.Generator | None = None,
                       chunk_size: int | None = None, device: torch.device | str = "cpu",
                       autocast_dtype: torch.dtype | None = None, per_batch: bool = False) -> dict[int, float]:
    """Eq. 1 with the inner expectation over y in closed form, instead of one sampled y per example.

    y = (y_1..y_H) is independent across heads given x, and E_{y_h} ∇log p_h(y_h) = ∇Σ_k p_hk = 0, so the cross
    terms of ||Σ_h ∇log p_h(y_h)||² vanish in expectation:  E_y ||∇log p(y|x)||² = Σ_h Σ_k p_hk ||∇log p_hk||².
    That is one gradient per (h, k): H·K backward passes per example (jacrev) — cheap for 2–3 classes or a few
    choices, but for span QA K = T, so ~2T backward passes per example; `chunk_size` bounds both loops, the examples
    (vmap) and the H·K outputs of each (jacrev), so QA's memory stays bounded. `per_batch`: the expectation of the batch
    estimator instead, E_y ||(1/B) Σ_n g_n||² / B = (1/B³) Σ_n E_y ||g_n||² (labels independent across examples).
    """
    params, layers = task_adapter_params(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def log_probs_and_weights(params, example):
        logp = log_probs(model, params, unsqueeze(example), autocast_dtype)[0]  # (H, K)
        return logp, logp.detach()  # differentiate the first, keep the second as the weights p_hk

    def expected_sq_grad_norms(params, example, u, gold):  # Σ_h Σ_k p_hk ||∇_{w_i} log p_hk||² → (L,)
        jac, logp = jacrev(log_probs_and_weights, has_aux=True, chunk_size=chunk_size)(params, example)  # (H, K, *shape)
        p = logp.exp()  # (H, K)
        return torch.stack([sum((p * jac[n].float().pow(2).flatten(2).sum(-1)).sum() for n in layer)
                            for layer in layers])

    per_example = vmap(expected_sq_grad_norms, in_dims=(None, 0, 0, 0), chunk_size=chunk_size)
    total, count = torch.zeros(len(layers), dtype=torch.float64), 0
    with measuring(model):
        for batch in batches:
            batch, uniform, gold = prepare(model, batch, "exact", generator, device)
            size = len(uniform)
            total += per_example(params, batch, uniform, gold).double().sum(0).cpu() / (size ** 3 if per_batch else 1)
            count += 1 if per_batch else size
    return {i: float(v) for i, v in enumerate(total / count)}


def batch_fisher_trace(model: nn.Module, batches: Sequence[Batch], labels: str = "sample",
                       generator: torch.Generator | None = None, chunk_size: int | None = None,
                       device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> dict[int, float]:
    """Algorithm 2 as released: ||∇_{w_i} (mean NLL of the batch)||² / |b|, averaged over batches."""
    if labels == "exact":
        return exact_fisher_trace(model, batches, generator, chunk_size, device, autocast_dtype, per_batch=True)
    params, layers = task_adapter_params(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def batch_nll(params, batch, uniform, gold):
        logp = log_probs(model, params, batch, autocast_dtype)  # (B, H, K)
        y = choose_labels(logp, labels, uniform, gold)  # (B, H)
        return -logp.gather(-1, y[..., None]).sum((-1, -2)).mean()  # NLL averaged over the batch (Alg. 2, line 9)

    total, count = torch.zeros(len(layers), dtype=torch.float64), 0
    with measuring(model):
        for batch in batches:
            batch, uniform, gold = prepare(model, batch, labels, generator, device)
            total += layer_sq_norms(grad(batch_nll)(params, batch, uniform, gold), layers).double().cpu() / len(uniform)
            count += 1
    return {i: float(v) for i, v in enumerate(total / count)}


# --- the pieces ------------------------------------------------------------------------------------------------------

def check_arguments(labels: str, estimator: str, batches: Sequence[Batch]) -> None:
    if labels not in LABEL_MODES:
        raise ValueError(f"labels={labels!r}: choose one of {', '.join(LABEL_MODES)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: choose one of {', '.join(ESTIMATORS)}")
    if not batches:
        raise ValueError("tr(F) needs at least one batch")


def task_adapter_params(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Detached task-adapter tensors keyed by their names in `model.named_parameters()`, and those names
    grouped per layer (index 0 = bottom). The invertible adapter is not a per-layer block, so it is left out."""
    task = getattr(model, "task_adapter", None)
    if task is None:
        raise ValueError("tr(F) is measured on task adapters; this model has none (full fine-tuning?)")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    params: dict[str, torch.Tensor] = {}
    layers: list[list[str]] = []
    for layer in task.layers:
        group = []
        for p in layer.parameters():
            params[names[id(p)]] = p.detach()  # detach: grad() differentiates its own copies, never p.grad
            group.append(names[id(p)])
        layers.append(group)
    return params, layers


def log_probs(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch,
              autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """log p_w(·|x) of the model with the task-adapter tensors `params`: (B, H, K), in fp32 even under autocast."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = functional_call(model, params, (batch,))  # (B, H, K)
    return torch.log_softmax(logits.float(), dim=-1)  # fp32: tr(F) under bf16 stays within 1% of fp32


def unsqueeze(example: Batch) -> Batch:
    """Inside vmap each example is unbatched: give the model back its batch dimension of 1."""
    return {k: v[None] for k, v in example.items()}


def choose_labels(logp: torch.Tensor, mode: str, uniform: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """The y of log p(y|x) per head: (..., H, K) log-probs → (..., H) indices.

    `sample` draws y_h ~ p_h by inverse CDF, y_h = #{k : cdf_hk < u_h} with u ~ U(0, 1) drawn *outside* (from
    the caller's generator): the draw happens inside the same forward that is differentiated — no extra
    forward pass just to sample — and is the same whether or not `vmap` chunks the batch.
    """
    logp = logp.detach()
    if mode == "true":
        return gold
    if mode == "argmax":
        return logp.argmax(-1)
    cdf = logp.exp().cumsum(-1)  # (..., H, K), fp32
    # clamp: cdf[-1] may round to just below 1 and a u above it must still pick the last outcome
    return (cdf < uniform[..., None]).sum(-1).clamp(max=logp.shape[-1] - 1)


def layer_sq_norms(grads: dict[str, torch.Tensor], layers: list[list[str]]) -> torch.Tensor:
    """Σ over each layer's parameters of the squared gradient → (L,)."""
    return torch.stack([sum(grads[n].float().pow(2).sum() for n in layer) for layer in layers])


def prepare(model: nn.Module, batch: Batch, labels: str, generator: torch.Generator, device: torch.device | str) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """(model inputs on `device`, one U(0,1) per (example, head), gold labels (B, H) or zeros).
    The uniforms come from `generator`, drawn on CPU so that they do not depend on the device."""
    batch = to_device(batch, torch.device(device))
    gold = batch.pop("labels", None)
    size = batch["input_ids"].shape[0]
    if labels == "true" and gold is None:
        raise ValueError("labels='true' needs gold labels in every batch")
    heads = gold.reshape(size, -1).shape[1] if gold is not None else model({k: v[:1] for k, v in batch.items()}).shape[1]
    gold = gold.reshape(size, heads) if gold is not None else torch.zeros(size, heads, dtype=torch.long, device=device)
    uniform = torch.rand(size, heads, generator=generator, dtype=torch.float32).to(device)
    return batch, uniform, gold


@contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off: F is the Fisher of the model's predictive distribution), eager attention, full fp32
    (no TF32: fun/device.py), and no_grad — the forward must not record a graph for anything outside `params` (e.g.
    the trainable head); torch.func.grad/jacrev ignore an *outer* no_grad, so the gradients are unaffected. Modes are
    restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), eager_attention(model), full_fp32():
            yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the encoder with eager attention inside the block, then restore its implementation (SDPA for training).

    `vmap` has no batching rule for SDPA's fused backward (it falls back to a slow per-example loop), and eager
    attention keeps tr(F) identical to the plain autograd loop it is tested against."""
    config = model.encoder.config
    before = config._attn_implementation
    if before != "eager":
        model.encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.encoder.set_attn_implementation(before)

"""tr(F), the trace of the Fisher information per task-adapter layer: paper §3.3, Eq. 1 and Algorithm 2 (App. D).

    tr(F)_i = E_{x ~ data} E_{y ~ p_w(y|x)} ||∇_{w_i} log p_w(y|x)||²        (Eq. 1, w_i = task adapter of layer i)

computed functionally on a dict of detached task-adapter tensors (`torch.func.functional_call` +
`vmap(grad(...))`), so frozen adapters are measured like trainable ones and nothing the training loop owns
moves: no `requires_grad` flip, no `.grad`, no optimizer, no model copy, no global RNG draw (STYLE 5).

Logits have one shape for every task, (B, H, K): H independent categorical heads over K outcomes (fun/heads.py),
so log p(y|x) = Σ_h log_softmax(logits)[h, y_h] covers classification (H=1), multiple choice (H=1, y = the
choice) and span QA (H=2: start + end, each sampled independently).

Estimators (SPEC §4):
  per-sample  exactly Eq. 1: per-example gradients, squared, averaged over all examples.
  batch       Algorithm 2 as released: ||∇_{w_i} mean-batch NLL||² / |b|, averaged over batches. Its label
              expectation is tr(F)/|b|² (cross-example terms vanish), so it is a different, smaller quantity.
Label modes: sample (Eq. 1), exact (the expectation over y in closed form), argmax (the released code),
true (gold labels: the "empirical Fisher", Kunstner et al. 2019 — for comparison only).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from fun.data import to_device

LABEL_MODES = ("sample", "exact", "argmax", "true")
ESTIMATORS = ("per-sample", "batch")


def task_adapter_params(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Detached task-adapter tensors keyed by their names in `model.named_parameters()`, and those names
    grouped per layer (index 0 = bottom). The invertible adapter is not a per-layer block, so it is left out."""
    task = getattr(model, "task_adapter", None)
    if task is None:
        raise ValueError("tr(F) is measured on task adapters; this model has none (full fine-tuning?)")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    params: dict[str, torch.Tensor] = {}
    groups: list[list[str]] = []
    for layer in task.layers:
        group = []
        for p in layer.parameters():
            params[names[id(p)]] = p.detach()  # detach: grad() differentiates its own copies, never p.grad
            group.append(names[id(p)])
        groups.append(group)
    return params, groups


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


def _layer_sq_norms(grads: dict[str, torch.Tensor], groups: list[list[str]]) -> torch.Tensor:
    """Σ over each layer's parameters of the squared gradient → (L,)."""
    return torch.stack([sum(grads[n].float().pow(2).sum() for n in group) for group in groups])


def fisher_trace(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], *, labels: str = "sample",
                 estimator: str = "per-sample", generator: torch.Generator | None = None,
                 chunk_size: int | None = None, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None) -> dict[int, float]:
    """tr(F) per task-adapter layer i (sum over the parameters of `model.task_adapter.layers[i]`).

    batches: collated dicts (fun.data.collate): input_ids (B, T) or (B, C, T), attention_mask, [token_type_ids],
    labels (needed for labels="true"). per-sample averages over all examples of all batches; batch averages
    over batches. `generator` (CPU) drives label sampling; None means a fixed seed, never the global RNG.
    chunk_size bounds memory (examples per vmap chunk). Runs in eval() mode (dropout off — F is the
    Fisher of the model's predictive distribution) and restores each module's previous mode.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels={labels!r}: choose one of {', '.join(LABEL_MODES)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: choose one of {', '.join(ESTIMATORS)}")
    if not batches:
        raise ValueError("tr(F) needs at least one batch")
    params, groups = task_adapter_params(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = torch.device(device)

    def log_probs(params: dict, batch: dict) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = functional_call(model, params, (batch,))  # (B, H, K)
        return torch.log_softmax(logits.float(), dim=-1)  # fp32 even under autocast: tr(F) within 1% of fp32

    def example_log_probs(params: dict, example: dict) -> torch.Tensor:
        # inside vmap each example is unbatched: give the model back its batch dim of 1
        return log_probs(params, {k: v[None] for k, v in example.items()})[0]  # (H, K)

    def example_log_likelihood(params, example, uniform, gold):
        logp = example_log_probs(params, example)  # (H, K)
        y = choose_labels(logp, labels, uniform, gold)  # (H,)
        return logp.gather(-1, y[:, None]).sum()  # log p(y|x) = Σ_h log p_h(y_h|x); gather, not indexing, under vmap

    def example_sample(params, example, uniform, gold):
        return _layer_sq_norms(grad(example_log_likelihood)(params, example, uniform, gold), groups)  # (L,)

    def example_log_probs_with_aux(params, example):
        logp = example_log_probs(params, example)
        return logp, logp.detach()  # differentiate the first, keep the second as the weights p_hk

    def example_exact(params, example, uniform, gold):
        # E_y ||∇ log p(y|x)||² with y = (y_1..y_H) independent across heads given x:
        #   ||Σ_h g_h(y_h)||² = Σ_h ||g_h||² + Σ_{h≠h'} g_h·g_h',  and E_{y_h} g_h = Σ_k p_hk ∇log p_hk = ∇Σ_k p_hk = 0,
        # so the cross terms vanish in expectation and  E_y||∇log p||² = Σ_h Σ_k p_hk ||∇ log p_hk||².
        # That is one gradient per (h, k): H·K backward passes per example (jacrev) — cheap for 2–3 classes
        # or a few choices, but for span QA K = T, so exact QA costs ~2T backward passes per example.
        jac, logp = jacrev(example_log_probs_with_aux, has_aux=True)(params, example)  # jac[n]: (H, K, *shape)
        p = logp.exp()  # (H, K)
        return torch.stack([sum((p * jac[n].float().pow(2).flatten(2).sum(-1)).sum() for n in group)
                            for group in groups])  # (L,)

    def batch_nll(params, batch, uniform, gold):
        logp = log_probs(params, batch)  # (B, H, K)
        y = choose_labels(logp, labels, uniform, gold)  # (B, H)
        return -logp.gather(-1, y[..., None]).sum((-1, -2)).mean()  # NLL averaged over the batch (Alg. 2, line 9)

    per_example = vmap(example_exact if labels == "exact" else example_sample, in_dims=(None, 0, 0, 0),
                       chunk_size=chunk_size)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    total = torch.zeros(len(groups), dtype=torch.float64)
    count = 0
    try:
        # no_grad: the forward must not record an autograd graph for anything outside `params` (e.g. the
        # trainable head). torch.func.grad/jacrev ignore an *outer* no_grad, so the gradients are unaffected.
        with torch.no_grad(), eager_attention(model):
            for batch in batches:
                batch = to_device(batch, device)
                gold = batch.pop("labels", None)
                size = batch["input_ids"].shape[0]
                if labels == "true" and gold is None:
                    raise ValueError("labels='true' needs gold labels in every batch")
                heads = gold.reshape(size, -1).shape[1] if gold is not None else _num_heads(model, batch)
                gold = gold.reshape(size, heads) if gold is not None else torch.zeros(size, heads, dtype=torch.long, device=device)
                # one U(0,1) per (example, head), from the caller's generator, drawn on CPU for reproducibility
                uniform = torch.rand(size, heads, generator=generator, dtype=torch.float32).to(device)
                if estimator == "per-sample":
                    total += per_example(params, batch, uniform, gold).double().sum(0).cpu()
                    count += size
                elif labels == "exact":
                    # E_y ||(1/B) Σ_n g_n||² / B = (1/B³) Σ_n E_y||g_n||²: labels are independent across
                    # examples and zero-mean, so only the per-example terms survive the expectation
                    total += per_example(params, batch, uniform, gold).double().sum(0).cpu() / size ** 3
                    count += 1
                else:
                    total += _layer_sq_norms(grad(batch_nll)(params, batch, uniform, gold), groups).double().cpu() / size
                    count += 1
    finally:
        for m, training in modes.items():
            m.training = training
    return {i: float(v) for i, v in enumerate(total / count)}


def _num_heads(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """H of the (B, H, K) logits when the batch carries no labels: one forward of a single example."""
    return model({k: v[:1] for k, v in batch.items()}).shape[1]

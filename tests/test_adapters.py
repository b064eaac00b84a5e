"""Adapter math (paper §3.1, Fig. 6; MAD-X) against a hand-written reference, and the hooks' invariants."""

import copy

import pytest
import torch

from fun.adapters import AdapterSet, AdapterStack, InvertibleAdapter, add_adapters
from fun.heads import ClassificationHead
from fun.model import AdapterModel, freeze
from fun.schedules import set_trainable
from tiny import tiny_encoder


def f_ref(adapter, z):
    """f(z) = W_up · relu(W_down · z + b_down) + b_up, written out."""
    down, up = adapter.adapter_down[0], adapter.adapter_up
    return torch.relu(z @ down.weight.T + down.bias) @ up.weight.T + up.bias


def nice_ref(inv, e):
    half = e.shape[-1] // 2
    e1, e2 = e[..., :half], e[..., half:]
    F = lambda v: torch.relu(v @ inv.F[0].weight.T + inv.F[0].bias) @ inv.F[2].weight.T + inv.F[2].bias
    G = lambda v: torch.relu(v @ inv.G[0].weight.T + inv.G[0].bias) @ inv.G[2].weight.T + inv.G[2].bias
    y1 = e1 + F(e2)
    return torch.cat([y1, e2 + G(y1)], -1)


def reference_model(encoder, lang, task):
    """A copy of `encoder` whose output blocks / embeddings compute the MAD-X formulas explicitly (no hooks)."""
    ref = copy.deepcopy(encoder)
    stack = [a for a in (lang, task) if a is not None]
    for i, layer in enumerate(ref.encoder.layer):
        block = layer.output

        def forward(ffn, x, block=block, i=i):
            h = block.dense(ffn)  # eval mode: dropout is the identity
            a = h
            for adapter_set in stack:  # a_L = h + f_L(LN(h + x)); a_T = a_L + f_T(LN(a_L + x))
                a = a + f_ref(adapter_set.layers[i], block.LayerNorm(a + x))
            return block.LayerNorm(a + x)  # out = LN(a_T + x)

        block.forward = forward
    if stack and stack[0].invertible is not None:
        embed_forward = ref.embeddings.forward
        ref.embeddings.forward = lambda *a, **k: nice_ref(stack[0].invertible, embed_forward(*a, **k))
    return ref


def inputs():
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("kind", ["bert", "xlmr", "deberta"])
@pytest.mark.parametrize("config", ["task", "lang", "lang+inv", "stack", "stack+inv"])
def test_adapter_math_matches_reference(kind, config):
    encoder = tiny_encoder(kind)
    torch.manual_seed(2)
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    lang = AdapterSet(d, n, reduction_factor=2, invertible="inv" in config) if "lang" in config or "stack" in config else None
    task = AdapterSet(d, n, reduction_factor=16) if config in ("task", "stack", "stack+inv") else None
    ids, mask = inputs()
    expected = reference_model(encoder, lang, task)(input_ids=ids, attention_mask=mask).last_hidden_state
    handle = add_adapters(encoder, AdapterStack(lang, task))
    got = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    handle.remove()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "xlmr", "deberta"])
def test_no_adapters_is_bit_identical(kind):
    encoder = tiny_encoder(kind)
    ids, mask = inputs()
    plain = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    handle = add_adapters(encoder, AdapterStack())
    hooked = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    handle.remove()
    assert torch.equal(plain, hooked)
    # AdapterModel with no adapters builds the attention mask itself (vmap-safe): still bit-identical
    model = AdapterModel(encoder, ClassificationHead(encoder.config.hidden_size, 3)).eval()
    hidden = []
    encoder.register_forward_hook(lambda m, a, out: hidden.append(out.last_hidden_state))
    model({"input_ids": ids, "attention_mask": mask})
    assert torch.equal(plain, hidden[0])


def test_remove_restores_plain_model_and_dense_runs_once():
    encoder = tiny_encoder("bert")
    ids, mask = inputs()
    plain = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    handle = add_adapters(encoder, AdapterStack(AdapterSet(d, n, 2, invertible=True), AdapterSet(d, n)))
    calls = []
    counters = [layer.output.dense.register_forward_hook(lambda *a: calls.append(1)) for layer in encoder.encoder.layer]
    adapted = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert len(calls) == n  # the output block's dense layer is never recomputed by the hooks
    assert not torch.allclose(adapted, plain)  # fresh adapters are not the identity (AdapterHub "bert" init)
    handle.remove()
    for c in counters:
        c.remove()
    assert torch.equal(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, plain)


def test_invertible_adapter_inverse():
    inv = InvertibleAdapter(33, activation="gelu_new")  # odd width: unequal halves
    with torch.no_grad():
        for p in inv.parameters():
            p.normal_(std=0.5)
    x = torch.randn(4, 7, 33)
    torch.testing.assert_close(inv.inverse(inv(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(inv(inv.inverse(x)), x, atol=1e-5, rtol=0)
    assert (inv(x) - x).abs().max() > 0.1


def test_adapter_sizes_and_init():
    task = AdapterSet(768, 12, reduction_factor=16)
    assert task.layers[0].adapter_down[0].weight.shape == (48, 768)  # rf 16: 48 for hidden 768
    lang = AdapterSet(768, 12, reduction_factor=2, invertible=True)
    assert lang.layers[0].adapter_up.weight.shape == (768, 384)
    assert lang.invertible.F[0].weight.shape == (192, 384)  # F, G: Linear(d/2, d/4) → Linear(d/4, d/2)
    w = torch.cat([a.adapter_up.weight.flatten() for a in task.layers])
    assert abs(w.std().item() - 0.02) < 0.002 and task.layers[0].adapter_up.bias.abs().sum() == 0


def test_language_adapter_swap_needs_no_rehooking():
    encoder = tiny_encoder("bert")
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    torch.manual_seed(3)
    en, de, task = AdapterSet(d, n, 2, invertible=True), AdapterSet(d, n, 2, invertible=True), AdapterSet(d, n)
    model = AdapterModel(encoder, ClassificationHead(d, 3), task, en).eval()
    ids, mask = inputs()
    batch = {"input_ids": ids, "attention_mask": mask}
    out_en = model(batch)
    model.set_lang_adapter(de)
    out_de = model(batch)
    fresh = AdapterModel(tiny_encoder("bert"), model.head, task, de).eval()
    assert not torch.allclose(out_en, out_de)
    torch.testing.assert_close(out_de, fresh(batch), rtol=0, atol=1e-6)


def test_deepcopy_gives_an_independent_model():
    encoder = tiny_encoder("bert")
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    model = AdapterModel(encoder, ClassificationHead(d, 3), AdapterSet(d, n)).eval()
    ids, mask = inputs()
    batch = {"input_ids": ids, "attention_mask": mask}
    before = model(batch)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.task_adapter.parameters():
            p.add_(0.5)
    assert torch.equal(model(batch), before)  # the original does not see the copy's adapters
    assert not torch.allclose(clone(batch), before)  # the copy's hooks drive the copy's adapters


@pytest.mark.parametrize("trainable", [{3}, {2, 3}, {0, 1, 2, 3}, set()])
def test_backward_stops_at_the_lowest_trainable_adapter(trainable):
    """Frozen adapters below the lowest trainable one add no autograd graph: the GU fast path."""
    encoder = tiny_encoder("bert")
    freeze(encoder)
    d, n = encoder.config.hidden_size, encoder.config.num_hidden_layers
    task = AdapterSet(d, n)
    set_trainable(task.layers, trainable)
    model = AdapterModel(encoder, ClassificationHead(d, 3), task).train()
    needs_grad = []
    hooks = [layer.register_forward_hook(lambda m, a, out: needs_grad.append(out[0].requires_grad if isinstance(out, tuple) else out.requires_grad))
             for layer in encoder.encoder.layer]
    ids, mask = inputs()
    model({"input_ids": ids, "attention_mask": mask}).sum().backward()
    lowest = min(trainable, default=n)
    assert needs_grad == [i >= lowest for i in range(n)]
    for i, layer in enumerate(task.layers):  # frozen adapters get no .grad at all
        assert all((p.grad is not None) == (i in trainable) for p in layer.parameters())


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_sdpa_and_eager_attention_agree_with_padding(kind):
    """Training and evaluation run SDPA attention, tr(F) eager: with adapters and padding they agree to 1e-5."""
    encoder = tiny_encoder(kind)
    torch.manual_seed(0)
    lang, task = AdapterSet(32, 4, 2, invertible=True), AdapterSet(32, 4, 4)
    model = AdapterModel(encoder, ClassificationHead(32, 3), task, lang).eval()
    ids, mask = inputs()
    batch = dict(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        eager = model(batch)
        encoder.set_attn_implementation("sdpa")
        sdpa = model(batch)
    assert encoder.config._attn_implementation == "sdpa"
    assert torch.allclose(eager, sdpa, atol=1e-5, rtol=0)


def test_load_encoder_uses_sdpa_where_hugging_face_has_it(tmp_path):
    from fun.model import load_encoder
    from tiny import save_tiny_model
    for kind, expected in (("bert", "sdpa"), ("xlmr", "sdpa"), ("deberta", "eager")):
        encoder, _ = load_encoder(str(save_tiny_model(tmp_path / kind, kind)))
        assert encoder.config._attn_implementation == expected

"""LoRA task adapters (fun/lora.py): the formula and init against a hand computation, hooks that come off without
a trace, MAD-X language adapters underneath, a run where only the scheduled LoRA modules move, exact resume,
evaluation, and PEFT's file layout both ways. The tr(F) exactness tests for LoRA are in test_fisher.py."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertModel

import evaluate
import fisher
import train
from fun.adapters import AdapterSet, AdapterStack, add_adapters
from fun.heads import ClassificationHead
from fun.lora import TARGETS, LoraLinear, LoraSet, load_peft, module_names, save_peft
from fun.model import AdapterModel, build_task_adapter
from tiny import assert_resume_bit_identical, recording, tiny_encoder

LAYERS, HIDDEN = 4, 32


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return dict(input_ids=ids, attention_mask=mask)


def trained_lora(targets=tuple(TARGETS), seed: int = 0) -> LoraSet:
    """A LoRA with B drawn at random, as after training (a new one has B = 0 and changes nothing)."""
    torch.manual_seed(seed)
    lora = LoraSet(HIDDEN, LAYERS, 2 * HIDDEN, rank=4, alpha=6, targets=list(targets))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    return lora


# --- the math ------------------------------------------------------------------------------------------------

def test_formula_against_hand_computation():
    """h = W x + b + (alpha / r) · B A x, on numbers small enough to check by hand."""
    linear = torch.nn.Linear(2, 2)
    lora = LoraLinear(2, 2, rank=1, alpha=4.0)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        linear.bias.copy_(torch.tensor([0.5, -0.5]))
        lora.lora_A.weight.copy_(torch.tensor([[1.0, -1.0]]))    # A x = x1 - x2
        lora.lora_B.weight.copy_(torch.tensor([[2.0], [0.25]]))  # B (A x), then · alpha / r = 4
    linear.register_forward_hook(lora.add_to_output)
    x = torch.tensor([[3.0, 1.0]])
    # W x + b = [3 + 2 + 0.5, 9 + 4 - 0.5] = [5.5, 12.5];  A x = 2;  B A x = [4, 0.5];  · 4 = [16, 2]
    assert torch.equal(linear(x), torch.tensor([[21.5, 14.5]]))


def test_dropout_acts_on_the_lora_input_only():
    torch.manual_seed(0)
    linear, lora = torch.nn.Linear(8, 8), LoraLinear(8, 8, rank=2, alpha=2.0, dropout=0.5)
    torch.nn.init.normal_(lora.lora_B.weight)
    linear.register_forward_hook(lora.add_to_output)
    x = torch.randn(4, 8)
    torch.manual_seed(1)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    torch.manual_seed(1)
    got = linear(x)  # the LoRA's dropout is the forward's only random draw
    plain = torch.nn.functional.linear(x, linear.weight, linear.bias)
    torch.testing.assert_close(got, plain + dropped @ lora.lora_A.weight.T @ lora.lora_B.weight.T, rtol=0, atol=1e-6)
    lora.eval()
    torch.testing.assert_close(linear(x), plain + lora.lora_B(lora.lora_A(x)), rtol=0, atol=1e-6)  # no dropout in eval


def test_init_is_peft_s():
    """A: Kaiming-uniform with a = √5, i.e. U(±1/√d_in) (nn.Linear's default, which PEFT keeps); B: 0."""
    torch.manual_seed(0)
    lora = LoraLinear(400, 300, rank=64, alpha=16.0)
    bound = 1 / math.sqrt(400)  # gain √(2 / (1 + 5)) · √(3 / fan_in)
    a = lora.lora_A.weight
    assert a.shape == (64, 400) and lora.lora_B.weight.shape == (300, 64)
    assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound and abs(a.mean()) < 0.01 * bound
    assert a.var().item() == pytest.approx(bound ** 2 / 3, rel=0.02)  # the variance of U(-b, b)
    assert not lora.lora_B.weight.any() and lora.scaling == 16 / 64


# --- hooks ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "xlmr", "deberta"])
def test_removing_the_hooks_gives_back_the_exact_base_model(kind):
    encoder = tiny_encoder(kind, hidden=HIDDEN, layers=LAYERS)
    plain = encoder(**inputs()).last_hidden_state
    handle = add_adapters(encoder, AdapterStack(task=LoraSet(HIDDEN, LAYERS, 2 * HIDDEN, targets=list(TARGETS))))
    assert torch.equal(encoder(**inputs()).last_hidden_state, plain)  # B = 0: a new LoRA changes nothing
    handle.remove()
    handle = add_adapters(encoder, AdapterStack(task=trained_lora()))
    assert len(handle.hooks) == 1 + 2 * LAYERS + len(TARGETS) * LAYERS  # embeddings, output blocks, LoRA targets
    assert not torch.allclose(encoder(**inputs()).last_hidden_state, plain)
    handle.remove()
    assert torch.equal(encoder(**inputs()).last_hidden_state, plain)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in encoder.modules())


def test_every_target_hooks_its_linear():
    """Each target adapts the Linear it names, and only it: LoRA(x) of exactly that layer's input is added."""
    encoder = tiny_encoder("bert", hidden=HIDDEN, layers=LAYERS)
    layer = encoder.encoder.layer[1]
    for target, path in TARGETS.items():
        lora = trained_lora([target])
        linear = layer.get_submodule(path)
        seen = {}
        linear.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))  # runs before the LoRA hook
        handle = add_adapters(encoder, AdapterStack(task=lora))
        captured = {}
        probe = linear.register_forward_hook(lambda m, args, out: captured.update(out=out))  # after the LoRA hook
        encoder(**inputs())
        torch.testing.assert_close(captured["out"], seen["out"] + lora.layers[1][target](seen["x"]), rtol=0, atol=0)
        probe.remove()
        handle.remove()
        linear._forward_hooks.clear()


def test_deepcopy_drives_the_copied_lora():
    encoder = tiny_encoder("bert", hidden=HIDDEN, layers=LAYERS)
    model = AdapterModel(encoder, ClassificationHead(HIDDEN, 3), trained_lora()).eval()
    batch = inputs()
    copied = copy.deepcopy(model)
    torch.testing.assert_close(copied(batch), model(batch), rtol=0, atol=0)
    with torch.no_grad():
        for p in copied.task_adapter.parameters():
            p.zero_()
    assert not torch.allclose(copied(batch), model(batch))  # the copy's hooks read the copy's LoRA


def test_language_adapter_underneath():
    """MAD-X with LoRA: the language adapter runs in each output block, the task LoRA in the attention; the two
    compose independently, and swapping the language adapter leaves the LoRA in place."""
    encoder = tiny_encoder("bert", hidden=HIDDEN, layers=LAYERS)
    torch.manual_seed(1)
    lang, other = AdapterSet(HIDDEN, LAYERS, 2, invertible=True), AdapterSet(HIDDEN, LAYERS, 2, invertible=True)
    batch = inputs()

    def hidden(lang_adapter, lora):
        handle = add_adapters(encoder, AdapterStack(lang_adapter, lora))
        out = encoder(**batch).last_hidden_state
        handle.remove()
        return out

    fresh, lora = LoraSet(HIDDEN, LAYERS, 2 * HIDDEN), trained_lora(["query", "value"])
    assert torch.equal(hidden(lang, fresh), hidden(lang, None))  # a new LoRA leaves the MAD-X language adapter alone
    model = AdapterModel(encoder, ClassificationHead(HIDDEN, 3), lora, lang).eval()
    states = []
    encoder.register_forward_hook(lambda m, a, out: states.append(out.last_hidden_state))
    model(batch)
    model.set_lang_adapter(other)
    model(batch)
    model.hooks.remove()
    torch.testing.assert_close(states[0], hidden(lang, lora), rtol=0, atol=0)
    torch.testing.assert_close(states[1], hidden(other, lora), rtol=0, atol=0)
    assert not torch.allclose(states[0], states[1]) and not torch.allclose(states[0], hidden(lang, None))


# --- training ------------------------------------------------------------------------------------------------

def run_args(model_dir, nli_files, out, *extra):
    train_file, dev_file = nli_files
    return ["--model", str(model_dir), "--train-file", str(train_file), "--dev-file", str(dev_file),
            "--output-dir", str(out), "--batch-size", "8", "--no-progress", "--threads", "1", "--adapter", "lora",
            "--lora-rank", "4", "--lora-alpha", "8", *extra]


@pytest.fixture(scope="module")
def gu_run(tiny_bert_dir, nli_files, tmp_path_factory):
    """GU with k=4 for 6 steps: layer 3's LoRA trains from step 1, layer 2's from step 4, layers 0 and 1 stay
    frozen. Records the model train.py built, and its weights before step 1."""
    Recording, built = recording(AdapterModel)
    out = tmp_path_factory.mktemp("lora") / "gu"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "AdapterModel", Recording)
        assert train.main(run_args(tiny_bert_dir, nli_files, out, "--schedule", "gu", "--k", "4", "--max-steps", "6",
                                   "--lora-targets", "query,value,output", "--eval-every", "3")) == 0
    return dict(dir=out, **built)


def test_only_the_scheduled_lora_and_the_head_move(gu_run):
    init, after = gu_run["init"], gu_run["model"].state_dict()
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    moved = ("head.", "adapters.task.layers.2.", "adapters.task.layers.3.")
    assert changed == {k for k in init if k.startswith(moved)}  # A and B of every target, head; nothing else
    assert {k.rsplit(".", 2)[0].split(".")[-1] for k in changed if "lora" in k} == {"query", "value", "output"}
    # one AdamW over head + every LoRA, created once; state only for what ever had a gradient
    optimizer = torch.load(gu_run["dir"] / "checkpoint.pt", weights_only=False)["parts"]["optimizer"]
    assert len(optimizer["state"]) == sum(1 for k in init if k.startswith(moved))
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == sum(
        1 for k in init if k.startswith(("head.", "adapters.task.")))


def test_run_directory_and_both_layouts(gu_run, tiny_bert_dir):
    """best/ and final/ hold our layout and PEFT's (peft/); the two hold the same LoRA tensors."""
    run = gu_run["dir"]
    config = json.loads((run / "config.json").read_text())
    assert (config["adapter"], config["lora_rank"], config["lora_targets"]) == ("lora", 4, "query,value,output")
    events = json.loads((run / "schedule.json").read_text())
    assert [(e["step"], e["layers"]) for e in events] == [(4, [2])]
    ours = load_file(run / "final" / "adapter.safetensors")
    peft = load_file(run / "final" / "peft" / "adapter_model.safetensors")
    assert torch.equal(ours["task.layers.2.output.lora_B.weight"],
                       peft["base_model.model.encoder.layer.2.output.dense.lora_B.weight"])
    assert len(peft) == 2 * 3 * LAYERS and {k for k in ours if k.startswith("task.")} == {
        f"task.layers.{i}.{t}.lora_{m}.weight" for i in range(LAYERS) for t in ("query", "value", "output") for m in "AB"}
    saved = json.loads((run / "best" / "adapter_config.json").read_text())["task_adapter"]
    assert saved == dict(adapter="lora", hidden_size=HIDDEN, num_layers=LAYERS, intermediate_size=2 * HIDDEN, rank=4,
                         alpha=8.0, dropout=0.0, targets=["query", "value", "output"])
    assert isinstance(build_task_adapter(saved), LoraSet)


def test_evaluate_reloads_the_lora_exactly(gu_run, nli_files, tmp_path):
    """The source score on the dev file equals the best dev score train.py logged."""
    test_dir = tmp_path / "xnli"
    test_dir.mkdir()
    (test_dir / "dev-de.tsv").write_text(nli_files[1].read_text())
    out = tmp_path / "res.json"
    assert evaluate.main([str(gu_run["dir"]), "--test-dir", str(test_dir), "--test-split", "dev", "--source-file",
                          str(nli_files[1]), "--languages", "de", "--output", str(out), "--no-progress"]) == 0
    best = json.loads((gu_run["dir"] / "summary.json").read_text())["best"]
    results = json.loads(out.read_text())
    assert results["source"] == best["metrics"] and results["per_language"]["de"] == best["metrics"]


def test_fisher_cli_on_a_lora_run(gu_run, tiny_bert_dir, nli_files, tmp_path):
    out = tmp_path / "fisher.json"
    assert fisher.main(["compute", "--adapter", str(gu_run["dir"] / "final"), "--data", str(nli_files[0]),
                        "--batches", "2", "--batch-size", "4", "--out", str(out)]) == 0
    values = json.loads(out.read_text())["fisher"]
    assert sorted(map(int, values)) == list(range(LAYERS)) and all(v > 0 for v in values.values())
    assert fisher.main(["plot", str(gu_run["dir"]), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "schedules.png").exists()


def test_fun_with_dropout_resumes_bit_identically(tiny_bert_dir, nli_files, tmp_path):
    """FUN picks by tr(F) of layer i's LoRA; with LoRA dropout on, tr(F) logged, killed at step 8 and resumed."""
    common = ["--schedule", "fun", "--k", "5", "--fisher-batches", "2", "--fisher-every", "7", "--fisher-log-batches",
              "1", "--lora-dropout", "0.1", "--max-steps", "24", "--log-every", "1", "--eval-every", "10",
              "--save-every", "1000"]
    _, out = assert_resume_bit_identical(lambda d: run_args(tiny_bert_dir, nli_files, d, *common), tmp_path, 8)
    events = json.loads((out / "schedule.json").read_text())
    assert [e["step"] for e in events] == [5, 10, 15] and all(len(e["fisher"]) == LAYERS for e in events)


@pytest.mark.parametrize("flags, field", [
    (["--lora-targets", "query,gate"], "--lora-targets"), (["--lora-dropout", "1.5"], "--lora-dropout"),
    (["--lora-alpha", "0"], "--lora-alpha"), (["--schedule", "full"], "--adapter"),
    (["--task", "mlm", "--lang", "sw"], "--adapter")])
def test_bad_lora_settings(tiny_bert_dir, nli_files, tmp_path, capsys, flags, field):
    assert train.main(run_args(tiny_bert_dir, nli_files, tmp_path / "run", *flags)) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}: ")
    assert not (tmp_path / "run").exists()


# --- PEFT's layout -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "deberta"])
def test_peft_layout_round_trip(kind, tmp_path):
    """Key names and adapter_config.json as PEFT 0.20.0 writes them for a LoRA on a bare encoder (AutoModel), and
    load_peft gives back the same LoRA, which gives the same hidden states."""
    encoder = tiny_encoder(kind, hidden=HIDDEN, layers=LAYERS)
    lora = trained_lora(["query", "value", "intermediate"])
    save_peft(lora, encoder, tmp_path, "org/base-model")
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    q = "query_proj" if kind == "deberta" else "query"
    assert tensors[f"base_model.model.encoder.layer.3.attention.self.{q}.lora_A.weight"].shape == (4, HIDDEN)
    assert tensors["base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight"].shape == (2 * HIDDEN, 4)
    assert len(tensors) == 2 * 3 * LAYERS
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "use_dora",
                                   "base_model_name_or_path", "init_lora_weights")} == dict(
        peft_type="LORA", r=4, lora_alpha=6, lora_dropout=0.0, bias="none", use_rslora=False, use_dora=False,
        base_model_name_or_path="org/base-model", init_lora_weights=True)
    assert len(config["target_modules"]) == 3 * LAYERS and f"encoder.layer.2.attention.self.{q}" in config["target_modules"]
    loaded = load_peft(tmp_path, encoder)
    assert loaded.config == lora.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), lora.state_dict().values()))
    states = []
    for adapter in (lora, loaded):
        handle = add_adapters(encoder, AdapterStack(task=adapter))
        states.append(encoder(**inputs()).last_hidden_state)
        handle.remove()
    assert torch.equal(*states)


def test_peft_layout_refusals(tmp_path):
    encoder = tiny_encoder("bert", hidden=HIDDEN, layers=LAYERS)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft(tmp_path, encoder)
    save_peft(trained_lora(), encoder, tmp_path, "base")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(config, use_dora=True)))
    with pytest.raises(ValueError, match="not a plain LoRA.*use_dora"):
        load_peft(tmp_path, encoder)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".layer.0." not in k}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="not one rank on every layer"):
        load_peft(tmp_path, encoder)


FIXTURES = Path(__file__).parent / "fixtures" / "peft"  # written by PEFT 0.20.0: tests/fixtures/make_peft_fixtures.py


def test_a_lora_saved_by_peft_loads_and_computes_what_peft_computed(tmp_path):
    """A LoRA that PEFT itself saved (on query, key, intermediate and output), loaded without PEFT: the same hidden
    states bit for bit; PEFT's initial A, drawn after seed 0, is ours after seed 0; and saving it again writes
    PEFT's file: the same keys and tensors."""
    expected = load_file(FIXTURES / "expected.safetensors")
    encoder = BertModel.from_pretrained(FIXTURES / "model", add_pooling_layer=False).eval()
    lora = load_peft(FIXTURES / "lora", encoder)
    assert (lora.config["rank"], lora.config["alpha"], lora.config["targets"]) == (
        4, 6, ["query", "key", "intermediate", "output"])
    handle = add_adapters(encoder, AdapterStack(task=lora))
    batch = {k: expected[k] for k in ("input_ids", "attention_mask")}
    assert torch.equal(encoder(**batch).last_hidden_state, expected["hidden"])
    handle.remove()
    torch.manual_seed(0)
    fresh = LoraSet(32, 2, 64, rank=4, alpha=6, targets=["query", "key", "intermediate", "output"])
    init = {k.removeprefix("init.base_model.model.").removesuffix(".lora_A.default.weight"): v
            for k, v in expected.items() if k.startswith("init.")}
    names = module_names(encoder)
    assert len(init) == 2 * 4 and all(torch.equal(v, fresh.layers[names[k][0]][names[k][1]].lora_A.weight)
                                      for k, v in init.items())
    save_peft(lora, encoder, tmp_path, "tests/fixtures/peft/model")
    ours, theirs = load_file(tmp_path / "adapter_model.safetensors"), load_file(FIXTURES / "lora" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

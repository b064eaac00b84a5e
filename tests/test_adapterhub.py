"""AdapterHub files without the library (fun/adapterhub.py): parity with the real `adapters` library on fixtures it
produced (tests/fixtures/make_adapterhub_fixtures.py), legacy files, round trips, and refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from fun.adapterhub import (CONFIG_NAME, WEIGHTS_NAME, load_adapterhub, load_lang_adapter, load_lang_adapter_arg,
                            save_adapterhub)
from fun.adapters import AdapterSet, AdapterStack, add_adapters
from fun.hub import HubError
from tiny import tiny_encoder

FIXTURES = Path(__file__).parent / "fixtures" / "adapterhub"
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def fixture_encoder(kind: str) -> torch.nn.Module:
    return AutoModel.from_pretrained(FIXTURES / kind / "model", attn_implementation="eager",
                                     dtype=torch.float32).eval()


def randomise(adapter: AdapterSet, seed: int) -> AdapterSet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return adapter


def run(encoder, stack: AdapterStack, inputs: dict) -> torch.Tensor:
    handle = add_adapters(encoder, stack)
    try:
        with torch.no_grad():
            return encoder(**inputs).last_hidden_state
    finally:
        handle.remove()


# --- parity with the `adapters` library (the MAD-X formulas) -------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("setup", ["none", "lang", "task", "stack"])
def test_parity_with_adapterhub_library(kind, setup):
    """Our hooks + loaded files reproduce the library's last hidden states (padding included) to 1e-5."""
    encoder = fixture_encoder(kind)
    expected = load_file(str(FIXTURES / kind / "expected.safetensors"))
    lang = load_lang_adapter(str(FIXTURES / kind / "lang"), encoder)
    task = load_lang_adapter(str(FIXTURES / kind / "task"), encoder)
    assert lang.invertible is not None and task.invertible is None
    stack = AdapterStack(lang=lang if setup in ("lang", "stack") else None,
                         task=task if setup in ("task", "stack") else None)
    got = run(encoder, stack, {k: expected[k] for k in MODEL_KEYS if k in expected})
    torch.testing.assert_close(got, expected[f"hidden_{setup}"], atol=1e-5, rtol=0)
    if setup != "none":  # the fixture is meaningful: these adapters move the output far beyond the tolerance
        assert (expected[f"hidden_{setup}"] - expected["hidden_none"]).abs().max() > 0.1


def test_parity_is_sensitive_to_the_activation():
    """BERT's fixture adapter says "gelu" in a versioned config = exact GELU; the tanh form would miss 1e-5."""
    encoder = fixture_encoder("bert")
    expected = load_file(str(FIXTURES / "bert" / "expected.safetensors"))
    lang = load_lang_adapter(str(FIXTURES / "bert" / "lang"), encoder)
    assert lang.config["activation"] == "gelu"
    wrong = AdapterSet(**dict(lang.config, activation="gelu_new"))
    wrong.load_state_dict(lang.state_dict())
    got = run(encoder, AdapterStack(lang=wrong), {k: expected[k] for k in MODEL_KEYS})
    assert (got - expected["hidden_lang"]).abs().max() > 1e-5


def test_library_files_are_read_as_written():
    """Key mapping: every tensor of the library's file lands in our AdapterSet under the renamed key."""
    encoder = fixture_encoder("bert")
    raw = torch.load(FIXTURES / "bert" / "lang" / WEIGHTS_NAME, weights_only=True)
    ours = load_lang_adapter(str(FIXTURES / "bert" / "lang"), encoder).state_dict()
    assert len(raw) == len(ours) == 3 * 4 + 8
    up = raw["bert.encoder.layer.2.output.adapters.lang.adapter_up.weight"]
    assert torch.equal(ours["layers.2.adapter_up.weight"], up)
    assert torch.equal(ours["invertible.G.2.bias"], raw["bert.invertible_adapters.lang.G.2.bias"])


# --- our AdapterHub export ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_save_load_roundtrip_reproduces_outputs(tmp_path, kind):
    encoder = tiny_encoder(kind)
    adapter = randomise(AdapterSet(32, 4, reduction_factor=2, activation="gelu_new", invertible=True), seed=3)
    path = save_adapterhub(adapter, tmp_path / "sw", name="sw", model_name="tiny", model_type=encoder.config.model_type)
    meta = json.loads((path / CONFIG_NAME).read_text())
    assert meta["config"]["inv_adapter"] == "nice" and meta["config"]["non_linearity"] == "gelu_new"
    prefix = {"bert": "bert.", "xlmr": "roberta."}[kind]
    keys = torch.load(path / WEIGHTS_NAME, weights_only=True)
    assert f"{prefix}encoder.layer.3.output.adapters.sw.adapter_down.0.weight" in keys
    assert f"{prefix}invertible_adapters.sw.F.0.weight" in keys
    loaded = load_lang_adapter(str(path), encoder)
    assert loaded.config == adapter.config
    inputs = {"input_ids": torch.randint(5, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    expected = run(encoder, AdapterStack(lang=adapter), inputs)
    assert torch.equal(run(encoder, AdapterStack(lang=loaded), inputs), expected)


def test_export_of_library_adapter_is_bit_identical(tmp_path):
    """library file → ours → our AdapterHub export → ours again: the same tensors (and
    `make_adapterhub_fixtures.py --check-export` loads such an export into the library itself)."""
    encoder = fixture_encoder("bert")
    lang = load_lang_adapter(str(FIXTURES / "bert" / "lang"), encoder)
    path = save_adapterhub(lang, tmp_path / "lang", name="lang", model_name="", model_type="bert")
    again = load_lang_adapter(str(path), encoder)
    assert again.config == lang.config
    for k, v in lang.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


# --- legacy files and refusals ----------------------------------------------------------------------------------

LEGACY_CONFIG = {  # adapter-transformers 1.x/2.x: no `version`, "gelu" = tanh GELU, language adapter type
    "config": {"adapter_residual_before_ln": False, "inv_adapter": "nice", "inv_adapter_reduction_factor": 2,
               "leave_out": [], "ln_after": False, "ln_before": False, "mh_adapter": False, "non_linearity": "gelu",
               "original_ln_after": True, "original_ln_before": True, "output_adapter": True,
               "reduction_factor": 2, "residual_before_ln": True},
    "hidden_size": 32, "model_class": "BertModelWithHeads", "model_name": "tiny-bert", "model_type": "bert",
    "name": "sw", "type": "text_lang"}


def write_legacy(directory: Path, adapter: AdapterSet, config: dict = LEGACY_CONFIG, prefix: str = "bert.") -> Path:
    """An AdapterHub file as old adapter-transformers wrote it: legacy module names and `adapter_attention` keys."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in adapter.state_dict().items():
        if k.startswith("layers."):
            _, i, param = k.split(".", 2)
            state[f"{prefix}encoder.layer.{i}.output.layer_text_lang_adapters.sw.{param}"] = v.clone()
            state[f"{prefix}encoder.layer.{i}.output.adapter_attention.sw.weight"] = torch.ones(1)
        else:
            state[f"{prefix}invertible_lang_adapters.sw.{k[len('invertible.'):]}"] = v.clone()
    torch.save(state, directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    return directory


def test_legacy_file_loads(tmp_path):
    encoder = tiny_encoder("bert")
    adapter = randomise(AdapterSet(32, 4, reduction_factor=2, activation="gelu_new", invertible=True), seed=4)
    loaded = load_lang_adapter(str(write_legacy(tmp_path / "sw", adapter)), encoder)
    assert loaded.config["activation"] == "gelu_new"  # unversioned "gelu" is adapter-transformers' tanh GELU
    assert loaded.config["invertible"] and loaded.config["reduction_factor"] == 2
    for k, v in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_file_without_model_prefix_loads(tmp_path):
    """Files saved from a bare encoder (`adapters.init(BertModel)`) carry no `bert.` prefix."""
    encoder = tiny_encoder("bert")
    adapter = randomise(AdapterSet(32, 4, reduction_factor=2, invertible=True), seed=5)
    config = dict(LEGACY_CONFIG, version="adapters.1.3.0")
    config["config"] = dict(LEGACY_CONFIG["config"], non_linearity="relu")
    loaded = load_adapterhub(write_legacy(tmp_path / "sw", adapter, config, prefix=""), encoder)
    assert torch.equal(loaded.layers[0].adapter_down[0].weight, adapter.layers[0].adapter_down[0].weight)


def test_preset_config_name_loads(tmp_path):
    encoder = tiny_encoder("bert")
    adapter = randomise(AdapterSet(32, 4, reduction_factor=16, invertible=True), seed=6)
    loaded = load_adapterhub(write_legacy(tmp_path / "x", adapter, dict(LEGACY_CONFIG, config="pfeiffer+inv")), encoder)
    assert loaded.config["reduction_factor"] == 16 and loaded.config["activation"] == "relu"


def test_mismatched_hidden_size_is_refused(tmp_path):
    adapter = AdapterSet(32, 4, reduction_factor=2, invertible=True)
    path = write_legacy(tmp_path / "sw", adapter)
    with pytest.raises(ValueError, match="hidden size 32.*encoder has 64"):
        load_lang_adapter(str(path), tiny_encoder("bert", hidden=64))


def test_mismatched_layer_count_is_refused(tmp_path):
    path = write_legacy(tmp_path / "sw", AdapterSet(32, 4, reduction_factor=2, invertible=True))
    with pytest.raises(ValueError, match="4 layers.*encoder has 2"):
        load_lang_adapter(str(path), tiny_encoder("bert", layers=2))


def test_mismatched_model_type_is_refused(tmp_path):
    path = write_legacy(tmp_path / "sw", AdapterSet(32, 4, reduction_factor=2, invertible=True))
    with pytest.raises(ValueError, match="'bert' model.*'xlm-roberta'"):
        load_lang_adapter(str(path), tiny_encoder("xlmr"))


@pytest.mark.parametrize("change, message", [
    (dict(mh_adapter=True), "Houlsby"),
    (dict(original_ln_after=False), "original_ln_after"),
    (dict(ln_before=True), "ln_before"),
    (dict(ln_after=True), "ln_after"),
    (dict(scaling=2.0), "scaling"),
    (dict(use_gating=True), "use_gating"),
    (dict(residual_before_ln=False), "residual_before_ln"),
    (dict(inv_adapter="glow"), "glow"),
    (dict(reduction_factor={"default": 16, "1": 8}), "per-layer"),
    (dict(architecture="lora"), "lora"),
])
def test_unsupported_configs_are_refused(tmp_path, change, message):
    config = dict(LEGACY_CONFIG, config=dict(LEGACY_CONFIG["config"], **change))
    path = write_legacy(tmp_path / "x", AdapterSet(32, 4, reduction_factor=2, invertible=True), config)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_lang_adapter(str(path), tiny_encoder("bert"))


def test_unknown_weights_are_refused(tmp_path):
    path = write_legacy(tmp_path / "x", AdapterSet(32, 4, reduction_factor=2, invertible=True))
    state = torch.load(path / WEIGHTS_NAME, weights_only=True)
    state["bert.encoder.layer.0.attention.output.adapters.sw.adapter_up.weight"] = torch.zeros(1)
    torch.save(state, path / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="unexpected weights"):
        load_lang_adapter(str(path), tiny_encoder("bert"))


def test_missing_directory_and_bad_spec(tmp_path):
    encoder = tiny_encoder("bert")
    with pytest.raises(ValueError, match="no such directory"):
        load_lang_adapter_arg(str(tmp_path / "absent"), encoder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no adapter_config.json"):
        load_lang_adapter_arg(f"en={tmp_path / 'empty'}", encoder)
    with pytest.raises(ValueError, match="LANG=DIR"):
        load_lang_adapter_arg("english language=x", encoder)


def test_lang_equals_dir_spec(tmp_path):
    adapter = randomise(AdapterSet(32, 4, reduction_factor=2, invertible=True), seed=7)
    path = save_adapterhub(adapter, tmp_path / "en", name="en", model_name="tiny", model_type="bert")
    loaded = load_lang_adapter_arg(f"en={path}", tiny_encoder("bert"))
    assert torch.equal(loaded.invertible.F[0].weight, adapter.invertible.F[0].weight)


def test_hub_id_downloads_or_explains_offline(monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append(repo_id)
        return str(FIXTURES / "bert" / "lang")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    adapter = load_lang_adapter("AdapterHub/tiny-bert-sw-wiki_pfeiffer", fixture_encoder("bert"))
    assert calls == ["AdapterHub/tiny-bert-sw-wiki_pfeiffer"] and adapter.invertible is not None

    def offline(repo_id, allow_patterns):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HubError, match="no network"):
        load_lang_adapter("AdapterHub/bert-base-multilingual-cased-de-wiki_pfeiffer", fixture_encoder("bert"))


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 1_000_000

"""Presets: every paper configuration is listed with paper Table 3's values; explicit flags override a preset."""

import contextlib
import io

import pytest

import train
from fun import presets
from fun.config import resolve
from fun.hub import MODELS
from fun.presets import PRESETS

# paper Table 3, written out again here on purpose: (train data, model) →
# (epochs standard/scheduled, lr standard/scheduled, batch, k LPFT, k GU, k FUN)
TABLE3 = {
    ("xquad", "mbert"): ((5, 5), (5e-4, 5e-4), 32, 800, 800, 800),
    ("xquad", "xlmr"): ((15, 15), (2e-4, 5e-4), 32, 800, 800, 100),
    ("xcopa", "mbert"): ((500, 5000), (1e-4, 1e-5), 64, 800, 50, 50),
    ("xcopa", "xlmr"): ((500, 5000), (1e-4, 1e-5), 64, 800, 1000, 1000),
    ("xnli", "mbert"): ((15, 15), (5e-4, 5e-4), 128, 25, 800, 50),
    ("xnli", "xlmr"): ((15, 15), (5e-4, 5e-4), 128, 800, 800, 800),
}
# Table 4 (GU) and appendix F.2 (FUN): k for 1k / 5k / 10k
REDUCED_K = {("xnli", "mbert", "gu"): (1, 25, 25), ("xnli", "xlmr", "gu"): (1, 25, 10),
             ("xnli", "mbert", "fun"): (10, 50, 25), ("xquad", "xlmr", "fun"): (10, 50, 25)}


def resolved(argv: list[str]) -> dict:
    """train.py's resolved settings for these flags, as config.json records them."""
    return resolve(train.parse_config(argv)).to_dict()


@pytest.fixture(scope="module")
def listing():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert train.main(["--list-presets"]) == 0
    lines = [l for l in buf.getvalue().splitlines() if l.startswith("| ") and not l.startswith("| ---")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {row[0]: dict(zip(header, row)) for row in ([c.strip() for c in l.strip("|").split("|")] for l in lines[1:])}


def test_list_presets_has_every_table3_configuration_with_its_values(listing):
    for (task, model), (epochs, lr, batch, k_lpft, k_gu, k_fun) in TABLE3.items():
        for t in (task, "mlqa") if task == "xquad" else (task,):  # MLQA trains on SQuAD too
            for schedule, k in (("standard", "—"), ("lpft", k_lpft), ("gu", k_gu), ("rand", k_gu), ("fun", k_fun)):
                row = listing[f"{t}-{model}-{schedule}"]
                scheduled = schedule != "standard"
                assert row["k"] == str(k), row
                assert float(row["lr"]) == lr[scheduled], row
                assert float(row["epochs"]) == epochs[scheduled], row
                assert row["batch"] == str(batch), row
                assert row["model"] == MODELS[model]
            assert f"{t}-{model}-full" in listing
    assert listing["xcopa-xlmr-fun"]["LR sched."] == "constant" and listing["xcopa-xlmr-fun"]["tr(F) every"] == "50"
    assert listing["xnli-mbert-gu"]["tr(F) every"] == "100"


def test_list_presets_has_reduced_data_and_appendix_configurations(listing):
    for (task, model, schedule), ks in REDUCED_K.items():
        for size, n, k in zip(("1k", "5k", "10k"), ("1,000", "5,000", "10,000"), ks):
            row = listing[f"{task}-{model}-{schedule}-{size}"]
            assert (row["k"], row["train examples"]) == (str(k), n)
            assert row["epochs"] == ("50" if task == "xnli" else "20") and float(row["lr"]) == 5e-4
            assert f"{task}-{model}-standard-{size}" in listing
    for name in ("xnli-mbert-gu-rev", "mlqa-xlmr-gu-rev", "xcopa-mdeberta-gu", "xnli-xlmr-full"):
        assert name in listing
    assert "xcopa-mbert-gu-1k" not in listing  # the paper has no reduced-data COPA (400 examples)


def test_explicit_flags_override_preset_values_in_the_resolved_config():
    cfg = resolved(["--preset", "xnli-mbert-gu", "--k", "7", "--lr", "1e-3", "--output-dir", "unused"])
    assert (cfg["k"], cfg["lr"]) == (7, 1e-3)  # overridden
    assert (cfg["preset"], cfg["task"], cfg["schedule"], cfg["model"]) == (
        "xnli-mbert-gu", "xnli", "gu", "google-bert/bert-base-multilingual-cased")
    assert (cfg["batch_size"], cfg["epochs"], cfg["lr_schedule"], cfg["fisher_every"]) == (128, 15, "linear", 100)
    assert "list_presets" not in cfg


def test_every_preset_resolves_to_its_own_values():
    """A preset names only real train.py settings, and resolving keeps every value (no default wins)."""
    for name, preset in PRESETS.items():
        cfg = resolved(["--preset", name, "--output-dir", "x"])
        assert {key: cfg[key] for key in preset.flags} == preset.flags, name


def test_lora_presets_are_the_table3_runs_with_a_task_lora():
    for schedule in ("standard", "gu", "fun"):
        lora, adapter = PRESETS[f"xnli-xlmr-{schedule}-lora"].flags, PRESETS[f"xnli-xlmr-{schedule}"].flags
        assert lora == dict(adapter, adapter="lora", lora_rank=24, lora_alpha=24.0, lora_targets="query,value")
    # r = 24 on query and value: about the rf-16 bottleneck adapter's count on a 768-wide, 12-layer encoder
    assert 12 * 2 * 24 * (768 + 768) == 884_736 and 12 * (2 * 768 * 48 + 48 + 768) == 894_528


def test_xquad_and_mlqa_presets_train_the_same_model():
    assert PRESETS["mlqa-xlmr-gu"].training == PRESETS["xquad-xlmr-gu"].training
    assert PRESETS["mlqa-xlmr-gu"].flags["task"] == "mlqa"
    assert PRESETS["xnli-xlmr-gu"].training != PRESETS["xquad-xlmr-gu"].training


def test_unknown_preset_is_a_one_line_usage_error(capsys):
    assert train.main(["--preset", "xnli-mbert-gradual", "--output-dir", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --preset: xnli-mbert-gradual: unknown preset") and "\n" not in err


def test_preset_patterns_expand_in_listing_order():
    assert presets.expand("xnli-mbert-gu,xnli-mbert-gu-*k") == [
        "xnli-mbert-gu", "xnli-mbert-gu-1k", "xnli-mbert-gu-5k", "xnli-mbert-gu-10k"]


def test_reduced_data_is_a_seeded_random_subsample(nli_files):
    """The -1k/-5k/-10k presets rely on --max-train-samples drawing a seeded random subset (paper Table 1),
    not the first N examples as the released code does."""
    from fun.tasks import TASKS
    from tiny import make_tokenizer
    tok, xnli, train_file = make_tokenizer(), TASKS["xnli"], str(nli_files[0])
    every = xnli.load("train", train_file)

    def sample(seed):
        return xnli.split("train", tok, 32, train_file, max_examples=10, seed=seed).examples

    assert sample(1) == sample(1) and len(sample(1)) == 10
    assert sample(1) != every[:10] and sample(1) != sample(2)
    assert all(e in every for e in sample(2))

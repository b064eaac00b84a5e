"""Language-adapter training with MLM (fun/mlm.py + train.py --task mlm), and its use in the pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertForMaskedLM

import fun.mlm as mlm
import train
from fun.adapterhub import load_lang_adapter
from fun.adapters import AdapterSet
from tiny import make_tokenizer, tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "adapterhub"
SUBJECTS = ("the man", "the woman", "the dog", "the cat", "he", "she")
VERBS, ENDS = ("went", "ran"), ("home", "fast", "up", "out")


def write_corpus(path: Path, n: int, seed: int) -> Path:
    """Learnable text: subject → verb → ending, with the ending fixed by the verb half the time."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        verb = rng.choice(VERBS)
        end = ("home" if verb == "went" else "fast") if rng.random() < 0.5 else rng.choice(ENDS)
        lines.append(f"{rng.choice(SUBJECTS)} {verb} {end} . it was a {rng.choice(('good', 'bad'))} day")
    path.write_text("\n".join(lines) + "\n\n")
    return path


@pytest.fixture(scope="module")
def mlm_model_dir(tmp_path_factory):
    """A tiny BERT saved with its (random) MLM head and a tokenizer: a model with a pretrained head."""
    directory = tmp_path_factory.mktemp("tiny-bert-mlm")
    tok = make_tokenizer()
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config("bert", vocab_size=len(tok))).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return write_corpus(d / "train.txt", 160, seed=0), write_corpus(d / "dev.txt", 40, seed=1)


def mlm_args(model_dir, corpus, out, *extra):
    return ["--task", "mlm", "--lang", "sw", "--model", str(model_dir), "--train-file", str(corpus[0]),
            "--dev-file", str(corpus[1]), "--output-dir", str(out), "--batch-size", "8", "--max-length", "16",
            "--lr", "3e-3", "--no-progress", "--log-every", "1", *extra]


class Recording(mlm.MLMModel):
    built: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recording.built.update(model=self, init={k: v.detach().clone() for k, v in self.state_dict().items()})


# --- the invertible adapter and masking ---------------------------------------------------------------------------

def test_masking_is_bert_style_and_deterministic():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    ids = torch.randint(5, 1000, (64, 128))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -10:] = True  # [CLS] and padding
    masked, positions, labels = mlm.mask_tokens(ids, special, 1000, mask_token_id=4, probability=0.15, generator=g(1))
    again = mlm.mask_tokens(ids, special, 1000, 4, 0.15, g(1))
    assert all(torch.equal(a, b) for a, b in zip((masked, positions, labels), again))
    assert not torch.equal(mlm.mask_tokens(ids, special, 1000, 4, 0.15, g(2))[1], positions)
    valid = labels != -100
    rows = torch.arange(64)[:, None].expand_as(positions)
    chosen = torch.zeros_like(special)
    chosen[rows[valid], positions[valid]] = True
    assert not (chosen & special).any() and chosen.any(1).all()
    assert torch.equal(labels[valid], ids[rows[valid], positions[valid]])
    share = chosen.sum() / (~special).sum()
    assert 0.13 < share < 0.17
    new = masked[chosen]
    to_mask, unchanged = (new == 4).float().mean(), (new == ids[chosen]).float().mean()
    assert 0.76 < to_mask < 0.84 and 0.07 < unchanged < 0.13
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_every_row_gets_a_target():
    ids = torch.tensor([[2, 9, 3, 0], [2, 10, 11, 3]])
    special = torch.tensor([[1, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    _, positions, labels = mlm.mask_tokens(ids, special, 20, 4, probability=1e-9, generator=torch.Generator())
    assert (labels != -100).sum(1).tolist() == [1, 1] and positions[0, 0] == 1


# --- parity of the MLM path with the library ---------------------------------------------------------------------

def test_mlm_logits_match_adapterhub_library():
    """The library's flex-head BertAdapterModel applies the inverse NICE block after the head transform, before the
    output embeddings; our MLMModel (language adapter in the task slot, the checkpoint's head) gives its logits.
    (BertForMaskedLM + `adapters.init` in adapters 1.3.0 skips the inverse: that is the fixture's `static` case.)"""
    encoder = AutoModel.from_pretrained(FIXTURES / "bert" / "model", attn_implementation="eager").eval()
    expected = load_file(str(FIXTURES / "bert" / "expected.safetensors"))
    lang = load_lang_adapter(str(FIXTURES / "bert" / "lang"), encoder)
    head = mlm.pretrained_mlm_head(str(FIXTURES / "bert" / "model"), encoder)
    assert head.bias.abs().max() > 0.05 and not any(p.requires_grad for p in head.parameters())
    model = mlm.MLMModel(encoder, head, lang_adapter=lang).eval()
    batch = {k: expected[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["mlm_positions"] = torch.arange(9).expand(3, 9)
    with torch.no_grad():
        logits = model(batch)  # (B, M=T, V)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = model.encoder(**inputs).last_hidden_state
        no_inverse = model.head(hidden, None, encoder.get_input_embeddings().weight)
    torch.testing.assert_close(logits, expected["mlm_logits_lang_flex"], atol=1e-5, rtol=0)
    torch.testing.assert_close(no_inverse, expected["mlm_logits_lang_static"], atol=1e-5, rtol=0)
    assert (expected["mlm_logits_lang_flex"] - expected["mlm_logits_lang_static"]).abs().max() > 1e-2


def test_model_without_mlm_head_needs_the_flag(tiny_bert_dir):
    encoder = AutoModel.from_pretrained(tiny_bert_dir)
    with pytest.raises(ValueError, match="mlm head 'new'"):
        mlm.pretrained_mlm_head(str(tiny_bert_dir), encoder)


# --- train.py --task mlm end to end -------------------------------------------------------------------------------

def dev_loss(run: Path) -> list[float]:
    return [r["dev"]["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "dev" in r]


def test_mlm_training_moves_only_the_language_adapter(mlm_model_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(mlm, "MLMModel", Recording)
    out = tmp_path / "run"
    assert train.main(mlm_args(mlm_model_dir, corpus, out, "--max-steps", "60", "--eval-every", "20")) == 0
    model, init = Recording.built["model"], Recording.built["init"]
    after = model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    assert changed == {k for k in init if k.startswith("adapters.lang.")}  # every adapter tensor, nothing else
    assert any(k.startswith("adapters.lang.invertible.") for k in changed)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.head.parameters())  # the pretrained head stays frozen
    # held-out masked-token loss: trained adapter < the same model with a fresh (seeded) adapter
    fresh = model.adapters.lang
    torch.manual_seed(0)
    model.adapters.lang = AdapterSet(32, 4, reduction_factor=2, invertible=True)
    tok = make_tokenizer()
    dev = mlm.corpus_split(mlm.read_corpus(corpus[1]), tok, 16, dev=True, lang="sw")
    before = mlm.evaluate(model, dev, 16, tok.pad_token_id)["loss"]
    model.adapters.lang = fresh
    after_loss = mlm.evaluate(model, dev, 16, tok.pad_token_id)["loss"]
    assert after_loss == pytest.approx(dev_loss(out)[-1], abs=1e-6)
    assert after_loss < before - 0.3, (before, after_loss)
    # saved in our format and in AdapterHub's: both load as the trained language adapter
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["metrics"]["perplexity"] > 1
    for directory in (out / "final", out / "final" / "adapterhub", out / "best", out / "best" / "adapterhub"):
        loaded = load_lang_adapter(str(directory), model.encoder)
        assert loaded.config == fresh.config and loaded.config["invertible"]
    ah = json.loads((out / "final" / "adapterhub" / "adapter_config.json").read_text())
    assert ah["name"] == "sw" and ah["config"]["reduction_factor"] == 2
    loaded = load_lang_adapter(str(out / "final" / "adapterhub"), model.encoder)
    for k, v in fresh.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_new_head_trains_with_the_adapter(tiny_bert_dir, corpus, tmp_path, monkeypatch):
    """A model without an MLM head (like multilingual-e5): --mlm-head new trains head transform + bias too."""
    monkeypatch.setattr(mlm, "MLMModel", Recording)
    out = tmp_path / "run"
    assert train.main(mlm_args(tiny_bert_dir, corpus, out, "--mlm-head", "new", "--max-steps", "40", "--lr", "1e-2",
                               "--eval-every", "10", "--lang-activation", "gelu_new")) == 0
    model, init = Recording.built["model"], Recording.built["init"]
    after = model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    assert changed == {k for k in init if k.startswith(("adapters.lang.", "head."))}
    assert "encoder.embeddings.word_embeddings.weight" not in changed  # the tied decoder stays frozen
    losses = dev_loss(out)
    assert losses[-1] < losses[0] - 0.3, losses
    assert json.loads((out / "final" / "adapter_config.json").read_text())["task_adapter"]["activation"] == "gelu_new"


def test_mlm_sigterm_then_resume_is_bit_identical(mlm_model_dir, corpus, tmp_path):
    """Dynamic masks come from (seed, step), not the global RNG: a run stopped and resumed ends bit-identical."""
    from tiny import assert_resume_bit_identical

    common = ["--max-steps", "80", "--eval-every", "20", "--save-every", "1000", "--threads", "1"]
    ref, out = assert_resume_bit_identical(lambda d: mlm_args(mlm_model_dir, corpus, d, *common), tmp_path, 5)
    a = torch.load(ref / "final" / "adapterhub" / "pytorch_adapter.bin", weights_only=True)
    b = torch.load(out / "final" / "adapterhub" / "pytorch_adapter.bin", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mlm_without_dev_file_holds_out_every_20th_document(corpus):
    train_docs, dev_docs = mlm.load_corpus("sw", str(corpus[0]), None)
    assert len(dev_docs) == 8 and len(train_docs) == 152
    assert not {d["text"] for d in dev_docs} - {d["text"] for d in mlm.read_corpus(corpus[0])}


@pytest.mark.parametrize("change, message", [
    ({"--lang": None}, "--lang: training a language adapter needs the language code"),
    ({"--lang-activation": "nope"}, "not a transformers activation"),
    ({"--lang-reduction-factor": "0"}, "--lang-reduction-factor: 0: must be a positive integer"),
    ({"--mlm-probability": "1.5"}, "--mlm-probability: must be between 0 and 1"),
    ({"--schedule": "fun"}, "for task adapters"),
    ({"--lang-adapter": "en=x"}, "--lang-adapter: a language adapter is trained on its own"),
    ({"--train-file": "absent.txt"}, "no such file"),
])
def test_mlm_usage_errors(mlm_model_dir, corpus, tmp_path, capsys, change, message):
    args = mlm_args(mlm_model_dir, corpus, tmp_path / "r", "--max-steps", "2")
    for flag, value in change.items():
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
        if value is not None:
            args += [flag, str(tmp_path / value) if flag == "--train-file" else value]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


# --- the trained adapter in the pipeline: train.py --lang-adapter en=DIR --------------------------------------------

def test_trained_adapter_stacks_under_the_task_adapter(mlm_model_dir, corpus, nli_files, tmp_path):
    lang_run = tmp_path / "lang"
    assert train.main(mlm_args(mlm_model_dir, corpus, lang_run, "--max-steps", "10", "--eval-every", "10")) == 0

    def xnli(out, *extra):
        return ["--task", "xnli", "--model", str(mlm_model_dir), "--train-file", str(nli_files[0]),
                "--dev-file", str(nli_files[1]), "--output-dir", str(out), "--batch-size", "8", "--max-steps", "3",
                "--log-every", "1", "--no-progress", *extra]

    first_loss = {}
    for name, extra in (("none", ()), ("ours", ("--lang-adapter", f"en={lang_run / 'best'}")),
                        ("hub", ("--lang-adapter", f"en={lang_run / 'best' / 'adapterhub'}"))):
        assert train.main(xnli(tmp_path / name, *extra)) == 0
        first_loss[name] = json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert first_loss["ours"] == first_loss["hub"] != first_loss["none"]  # the adapter runs, from either format
    task_adapter = f"en={tmp_path / 'none' / 'best'}"  # a task adapter is not a language adapter
    assert train.main(xnli(tmp_path / "bad", "--lang-adapter", task_adapter)) == 2


# --- a shared MLM head: fitted once without adapters, then every language adapter trains against it ----------------

def test_head_fitted_alone_then_shared_by_language_adapters(tiny_bert_dir, corpus, tmp_path, monkeypatch):
    """--mlm-train head: only a new head trains, on the frozen encoder with no adapter, from several files. Then
    --mlm-head DIR: the language adapter trains against that head, which stays frozen and bit-identical."""
    monkeypatch.setattr(mlm, "MLMModel", Recording)
    second = write_corpus(tmp_path / "other.txt", 100, seed=3)
    head_run = tmp_path / "head"
    args = mlm_args(tiny_bert_dir, corpus, head_run, "--mlm-train", "head", "--mlm-head", "new", "--max-steps", "30",
                    "--lr", "1e-2", "--eval-every", "10")
    args[args.index("--lang"):args.index("--lang") + 2] = []  # a shared head has no language of its own
    args[args.index("--train-file") + 1] = f"{corpus[0]},{second}"
    args[args.index("--dev-file"):args.index("--dev-file") + 2] = []  # held out: every 20th line of each file
    assert train.main(args) == 0
    model, init = Recording.built["model"], Recording.built["init"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(init[k], v)}
    assert changed and all(k.startswith("head.") for k in changed)
    assert model.adapters.lang is None
    log = [json.loads(line) for line in (head_run / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and "loss" not in log[0] and "dev_without_adapter" not in log[0]
    assert log[-1]["dev"]["loss"] < log[0]["dev"]["loss"] - 0.3
    config = json.loads((head_run / "config.json").read_text())
    assert config["train_examples"] == (160 - 8) + (100 - 5)
    saved = load_file(str(head_run / "best" / "adapter.safetensors"))
    assert saved and all(k.startswith("head.") for k in saved) and not (head_run / "best" / "adapterhub").exists()

    lang_run = tmp_path / "lang"
    assert train.main(mlm_args(tiny_bert_dir, corpus, lang_run, "--mlm-head", str(head_run / "best"),
                               "--max-steps", "30", "--lr", "1e-2", "--eval-every", "10")) == 0
    model, init = Recording.built["model"], Recording.built["init"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(init[k], v)}
    assert changed == {k for k in init if k.startswith("adapters.lang.")}
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, saved["head." + k]) and not model.head.get_parameter(k).requires_grad
    first = json.loads((lang_run / "log.jsonl").read_text().splitlines()[0])
    tok = make_tokenizer()
    dev = mlm.corpus_split(mlm.read_corpus(corpus[1]), tok, 16, dev=True, lang="sw")
    model.adapters.lang = None  # the frozen encoder + the shared head: MAD-X's "before" for this language
    assert first["dev_without_adapter"]["loss"] == pytest.approx(mlm.evaluate(model, dev, 64, tok.pad_token_id)["loss"])
    assert dev_loss(lang_run)[-1] < first["dev_without_adapter"]["loss"]
    with pytest.raises(ValueError, match="--mlm-train head"):  # a head run is no language adapter
        load_lang_adapter(str(head_run / "best"), model.encoder)
    # experiments.lang_adapters: the table the benchmark reports, from these two runs' files
    from experiments.lang_adapters import report
    md, rows = report([tmp_path])
    head_row, lang_row = sorted(rows, key=lambda r: r["train"] == "adapter")
    assert head_row["train"] == "head" and head_row["loss_no_adapter"] is None and lang_row["lang"] == "sw"
    assert lang_row["loss_no_adapter"] == first["dev_without_adapter"]["loss"]
    assert lang_row["loss_best"] == json.loads((lang_run / "summary.json").read_text())["best"]["metrics"]["loss"]
    assert lang_row["steps"] == 30 and "| sw | adapter | 30 × 8 |" in md


def test_several_text_files_hold_out_dev_per_file(corpus, tmp_path):
    second = write_corpus(tmp_path / "b.txt", 60, seed=5)
    train_docs, dev_docs = mlm.load_corpus(None, f"{corpus[0]},{second}", None)
    assert len(dev_docs) == 8 + 3 and len(train_docs) == 152 + 57
    assert mlm.subsample(train_docs, 10, seed=1) == mlm.subsample(train_docs, 10, seed=1) != mlm.subsample(train_docs, 10, seed=2)
    with pytest.raises(ValueError, match="empty name"):
        mlm.load_corpus(None, f"{corpus[0]},", None)


@pytest.mark.parametrize("extra, message", [
    (("--mlm-train", "head"), "--mlm-head: --mlm-train head fits a new MLM head"),
    (("--mlm-head", "nowhere"), "--mlm-head: nowhere: not 'pretrained', 'new', or a directory"),
    (("--mlm-train", "head", "--task", "xnli"), "--mlm-train: is for --task mlm"),
])
def test_shared_head_usage_errors(mlm_model_dir, corpus, tmp_path, capsys, extra, message):
    assert train.main(mlm_args(mlm_model_dir, corpus, tmp_path / "r", "--max-steps", "2", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_task_run_is_no_mlm_head(mlm_model_dir, corpus, nli_files, tmp_path, capsys):
    task_run = tmp_path / "xnli"
    assert train.main(["--task", "xnli", "--model", str(mlm_model_dir), "--train-file", str(nli_files[0]),
                       "--dev-file", str(nli_files[1]), "--output-dir", str(task_run), "--batch-size", "8",
                       "--max-steps", "1", "--no-progress"]) == 0
    assert train.main(mlm_args(mlm_model_dir, corpus, tmp_path / "r", "--mlm-head", str(task_run / "best"))) == 2
    assert "saved by a 'xnli' run, which has no MLM head" in capsys.readouterr().err

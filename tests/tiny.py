"""Shared by the tests: tiny encoders and a tokenizer built in code (every test runs offline on CPU in seconds),
synthetic data files in the official formats, and helpers that run train.py and compare run directories."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (BertConfig, BertModel, DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast,
                          XLMRobertaConfig, XLMRobertaModel)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
E5 = SHARED / "models" / "multilingual-e5-small"

WORDS = ("the a an is was what cause effect man woman dog cat went home ran fast slow because so he she it "
         "they not did does good bad big small red blue house car tree sun rain day night happy sad yes no "
         "? . , ! ' - and or of to in on at for with by from up down out over under again").split()


def make_tokenizer(extra_words: list[str] = ()) -> PreTrainedTokenizerFast:
    """Word-level fast tokenizer with BERT-style [CLS] a [SEP] b [SEP] pairs and token type ids."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS) | set(extra_words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def tiny_config(kind: str = "bert", vocab_size: int = 120, layers: int = 4, hidden: int = 32):
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=128, attn_implementation="eager")
    if kind == "bert":
        return BertConfig(**common, pad_token_id=0)
    if kind == "xlmr":
        return XLMRobertaConfig(**common, pad_token_id=0, type_vocab_size=1)
    if kind == "deberta":
        return DebertaV2Config(**common, pad_token_id=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
                               position_buckets=16, max_relative_positions=64, type_vocab_size=0)
    raise ValueError(kind)


def tiny_encoder(kind: str = "bert", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_config(kind, **kw)
    cls = {"bert": BertModel, "xlmr": XLMRobertaModel, "deberta": DebertaV2Model}[kind]
    model = cls(config) if kind == "deberta" else cls(config, add_pooling_layer=False)
    return model.eval()


def save_tiny_model(directory: Path, kind: str = "bert", layers: int = 4, extra_words: list[str] = ()) -> Path:
    """A complete local model directory (config, safetensors weights, tokenizer) that `--model` accepts."""
    tok = make_tokenizer(extra_words)
    enc = tiny_encoder(kind, vocab_size=len(tok), layers=layers)
    enc.save_pretrained(directory)
    tok.save_pretrained(directory)
    if kind == "xlmr":  # XLM-R tokenizers return no token type ids
        cfg = json.loads((directory / "tokenizer_config.json").read_text())
        cfg["model_input_names"] = ["input_ids", "attention_mask"]
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def write_nli(path: Path, n: int = 64, seed: int = 0, fmt: str = "jsonl") -> Path:
    """A learnable synthetic NLI file: the label is a function of the hypothesis words."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        label = int(torch.randint(3, (1,), generator=g))
        premise = " ".join(WORDS[int(i)] for i in torch.randint(8, 30, (6,), generator=g))
        hypothesis = ["yes good", "it was", "no bad"][label] + " " + WORDS[int(torch.randint(30, 40, (1,), generator=g))]
        rows.append((premise, hypothesis, label))
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(premise=p, hypothesis=h, label=l)) + "\n" for p, h, l in rows))
    else:
        names = ("entailment", "neutral", "contradiction")
        path.write_text("".join(f"{p}\t{h}\t{names[l]}\n" for p, h, l in rows))
    return path


def write_copa(path: Path, n: int = 8, seed: int = 0, lang: str = "en") -> Path:
    g = torch.Generator().manual_seed(seed)
    words = "man woman dog cat went home ran fast slow sun rain day night".split()
    rows = []
    for i in range(n):
        pick = lambda: " ".join(words[int(j)] for j in torch.randint(len(words), (4,), generator=g))  # noqa: E731
        rows.append(dict(premise=pick() + " .", choice1=pick() + " .", choice2=pick() + " .",
                         question=("cause", "effect")[i % 2], label=int(torch.randint(2, (1,), generator=g)), idx=i))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def squad_json(paragraphs: list[tuple[str, list[tuple[str, str, str]]]]) -> dict:
    """[(context, [(id, question, answer), ...]), ...] → SQuAD v1.1 dict; answer_start found in the context."""
    return {"data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
                               for i, q, a in qas]} for c, qas in paragraphs]}]}


def write_squad(path: Path, paragraphs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(squad_json(paragraphs)))
    return path


LONG = " ".join(["the man went home"] * 10 + ["the dog ran fast"] + ["the sun is big"] * 10)
QA_PARAGRAPHS = [(LONG, [("q1", "what ran ?", "dog ran fast"), ("q2", "who went home ?", "the man")]),
                 ("the cat is happy because it is a good day", [("q3", "why is it happy ?", "it is a good day")])]


# --- running train.py ---------------------------------------------------------------------------------------------

def train_cli(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=300, **kw)


def run_outputs(out):
    weights = load_file(out / "final" / "adapter.safetensors")
    return weights, (out / "log.jsonl").read_text(), (out / "schedule.json").read_text()


def assert_same_run(a, b):
    wa, la, sa = run_outputs(a)
    wb, lb, sb = run_outputs(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    assert la == lb, "log.jsonl differs"
    assert sa == sb, "schedule.json differs"


def kill_when(out: Path, args, at_step: int, sig):
    """Start train.py, wait until log.jsonl shows `at_step`, send `sig`; returns the exit code."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(json.loads(l)["step"] >= at_step for l in log.read_text().splitlines() if l.strip()):
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


def assert_resume_bit_identical(make_args, tmp_path: Path, at_step: int, sig=signal.SIGTERM) -> tuple[Path, Path]:
    """Train `make_args(run_dir)` uninterrupted, and again stopped by `sig` once log.jsonl reaches `at_step`, then
    resumed with --resume: both runs must end bit-identical. → (reference run, resumed run)."""
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert train_cli(make_args(ref)).returncode == 0
    code, err = kill_when(out, make_args(out), at_step, sig)
    assert code == (128 + sig if sig != signal.SIGKILL else -sig), err
    resumed = train_cli(make_args(out) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(ref, out)
    return ref, out


def recording(model_class: type) -> tuple[type, dict]:
    """A subclass of `model_class` that records the instance train.py builds (`built["model"]`) and its weights
    before the first step (`built["init"]`): monkeypatch it in, train, then compare what moved."""
    built: dict = {}

    class Recording(model_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["model"] = self
            built["init"] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    return Recording, built

"""Tiny encoders and a tokenizer built in code, so every test runs offline on CPU in seconds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (BertConfig, BertModel, DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast,
                          XLMRobertaConfig, XLMRobertaModel)

SHARED = Path(__file__).resolve().parents[2] / "shared"
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

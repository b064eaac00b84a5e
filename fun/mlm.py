"""Masked-language modelling: train a MAD-X language adapter (paper Appendix B; Pfeiffer et al. 2020, "MAD-X").

    python train.py --task mlm --lang sw --train-file corpus.txt [--dev-file heldout.txt] --output-dir RUN

The encoder is frozen; a language adapter (reduction factor 2, relu unless --lang-activation, NICE invertible
adapter) trains with the MLM objective. It is the only adapter of the stack, so its invertible adapter runs on
the embeddings, and `MLMModel` applies the inverse before the output embeddings (tied to the frozen input
embeddings):
    hidden → transform (dense → act → LayerNorm) → inverse invertible adapter → decoder
as MAD-X and the `adapters` library's flex-head models do (tests/test_mlm.py matches their logits to 1e-5; the
library's static BertForMaskedLM + `adapters.init` path, adapters 1.3.0, applies no inverse at all). The pretrained
MLM head (mBERT, XLM-R) is loaded frozen; for encoders without one (e.g. multilingual-e5) there are two ways:
- `mlm_head="new"`: a fresh head transform and output bias train with the adapter. Each language adapter then has
  its own head, so each language's adapter learns against a different output space;
- a shared head, as MAD-X has through the pretrained one: first fit one head on the frozen encoder *without*
  adapters on text of every language (`--mlm-train head --mlm-head new`, several files), then train each language
  adapter against that head, frozen (`--mlm-head RUN/best`). Every language adapter then maps into the same space,
  so swapping one for another at test time changes the language, not the space the task adapter reads.

Masking is BERT's: 15% of the non-special tokens (at least one per sequence), of which 80% → mask token, 10% → a
random token, 10% unchanged. Training masks are dynamic, drawn for each step from a generator seeded by
(seed, step), so a resumed run masks exactly as an uninterrupted one; dev masks are drawn once, at encode time,
from a fixed seed, so the dev loss compares across steps, runs and seeds. Logits are computed at masked positions
only: (B, M, V) with M the most masked tokens of a row (labels padded with -100), never the full (B, T, V).

Data: plain text, one document per line, cut into sequences of at most `max_length` tokens (no packing across
documents), from one file or several (`a.txt,b.txt`); or a Hub dataset `NAME[:CONFIG]` with a `text` column (default:
Wikipedia in the language, fun/hub.py). Without a dev file every 20th document of each file (at most 2,000 per file)
is held out for dev. Selection metric: `neg_loss`
(= −masked-token cross-entropy, higher is better); `perplexity` = exp(loss).

The training loop is train.py's `train_language_adapter`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers.activations import ACT2FN

from fun import hub
from fun.adapters import AdapterSet, InvertibleAdapter
from fun.data import Split, check_file, collate, length_sorted_batches, to_device
from fun.device import full_fp32
from fun.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterModel, freeze
from fun.tasks.base import Defaults

HOLDOUT_EVERY, HOLDOUT_MAX = 20, 2000  # without --dev-file: every 20th document, at most 2,000, is dev
TEXT_SUFFIXES = (".txt", ".text", ".raw", ".tsv", ".csv")  # a --train-file with these is a local file, not a Hub name
DEV_MASK_SEED = 0                      # dev masks are fixed: the same for every run, step and seed
METRIC = "neg_loss"                    # model selection: the held-out masked-token loss, negated
# Appendix B: lr 1e-4, batch 64, sequence length 512, at most 100 epochs or 24 h. The LR schedule is ours: constant,
# so that a run stopped by the time budget equals a shorter run (a linear decay tied to 100 epochs would barely have
# moved); pass --lr-schedule linear for HF run_mlm's default.
MLM_DEFAULTS = Defaults(epochs=100, lr=1e-4, batch_size=64, max_length=512, lr_schedule="constant")


class MLMHead(nn.Module):
    """BERT / XLM-R prediction head: transform (dense → act → LayerNorm) and an output bias; the decoder weight is
    the encoder's input embedding matrix, passed in (tied and frozen, never a parameter of the head)."""

    def __init__(self, hidden_size: int, vocab_size: int, activation: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.activation = activation
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, invertible: InvertibleAdapter | None,
                embeddings: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(ACT2FN[self.activation](self.dense(hidden)))  # (B, M, d)
        if invertible is not None:
            h = invertible.inverse(h)  # MAD-X: undo the NICE block before the (tied) output embeddings
        return F.linear(h, embeddings, self.bias)  # (B, M, V)


class MLMModel(AdapterModel):
    """AdapterModel whose output is MLM logits at the masked positions `batch["mlm_positions"]` (B, M) → (B, M, V)."""

    def trained_parts(self) -> dict[str, nn.Module]:
        """The language adapter is what trains (saved under `task.*`, as the adapter of the run) and the head (a
        frozen head is saved too: it is what the adapter was trained against)."""
        return {"head": self.head, "task": self.adapters.lang} if self.adapters.lang is not None else {"head": self.head}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encode(batch)  # (B, T, d)
        positions = batch["mlm_positions"]  # (B, M)
        hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, M, d)
        return self.head(hidden, self.adapters.invertible(), self.encoder.get_input_embeddings().weight)


def head_activation(config) -> str:
    """XLM-R/RoBERTa's LM head hard-codes exact GELU; BERT's and DeBERTa's use the encoder's hidden_act."""
    if config.model_type in ("xlm-roberta", "roberta"):
        return "gelu"
    return config.hidden_act if isinstance(config.hidden_act, str) else "gelu"


def new_mlm_head(encoder: nn.Module) -> MLMHead:
    """A freshly initialised head (BERT init: N(0, initializer_range), LayerNorm 1/0, bias 0), trainable."""
    config = encoder.config
    head = MLMHead(config.hidden_size, encoder.get_input_embeddings().num_embeddings, head_activation(config),
                   config.layer_norm_eps)
    nn.init.normal_(head.dense.weight, std=getattr(config, "initializer_range", 0.02))
    nn.init.zeros_(head.dense.bias)
    return head


def pretrained_mlm_head(name_or_path: str, encoder: nn.Module) -> MLMHead:
    """The checkpoint's own MLM head (AutoModelForMaskedLM's), frozen; ValueError when the checkpoint has none."""
    from transformers import AutoModelForMaskedLM

    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name_or_path}: no masked-LM class for this model ({type(err).__name__}); train a "
                         "freshly initialised MLM head instead (mlm head 'new')") from None
    prefix = mlm.base_model_prefix + "."
    missing = [k for k in info["missing_keys"] if not k.startswith(prefix)]
    if missing:
        raise ValueError(f"{name_or_path}: the checkpoint has no pretrained MLM head (missing {missing[0]}, …); "
                         "train a freshly initialised head transform with the adapter (mlm head 'new')")
    params = {n: p for n, p in mlm.named_parameters() if not n.startswith(prefix)}
    vocab = encoder.get_input_embeddings().num_embeddings

    def find(*suffixes: str, size: int | None = None) -> torch.Tensor:
        found = [p for n, p in params.items() if n.endswith(suffixes) and (size is None or p.shape == (size,))]
        if len(found) != 1:
            raise ValueError(f"{name_or_path}: cannot identify the MLM head's {suffixes[0]} among "
                             f"{sorted(params)}; train a fresh head (mlm head 'new')")
        return found[0]

    decoder = [p for n, p in params.items() if n.endswith("decoder.weight")]
    if decoder and not torch.equal(decoder[0], encoder.get_input_embeddings().weight):
        raise ValueError(f"{name_or_path}: its MLM decoder is not tied to the input embeddings; not supported")
    bias = [p for n, p in params.items() if n.endswith("decoder.bias")] or [find(".bias", size=vocab)]
    head = MLMHead(encoder.config.hidden_size, vocab, head_activation(encoder.config), encoder.config.layer_norm_eps)
    head.load_state_dict({"dense.weight": find("dense.weight"), "dense.bias": find("dense.bias"),
                          "layer_norm.weight": find("LayerNorm.weight", "layer_norm.weight"),
                          "layer_norm.bias": find("LayerNorm.bias", "layer_norm.bias"), "bias": bias[0]})
    freeze(head)
    return head


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, vocab_size: int, mask_token_id: int,
                probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking of a padded batch (B, T) → (masked input_ids (B, T), positions (B, M), labels (B, M)).

    `special` (B, T) marks tokens never chosen (specials and padding). Rows with no token chosen by the 15% draw get
    one chosen uniformly, so every row contributes (and a batch never has zero targets → NaN loss).
    """
    candidates = ~special
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    noise = torch.rand(input_ids.shape, generator=generator).masked_fill(~candidates, -1.0)
    empty = ~chosen.any(1) & candidates.any(1)  # rows where the draw chose nothing
    chosen[empty, noise[empty].argmax(1)] = True
    action = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(chosen & (action < 0.8), mask_token_id, input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    counts = chosen.sum(1)  # (B,)
    width = max(int(counts.max()), 1)
    # stable sort puts each row's chosen positions first, in order; pad the rest with position 0 / label -100
    order = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (B, M)
    valid = torch.arange(width)[None, :] < counts[:, None]
    positions = torch.where(valid, order, 0)
    labels = torch.where(valid, input_ids.gather(1, order), -100)
    return masked, positions, labels


def special_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    return torch.isin(input_ids, torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype))


def read_corpus(path: str | Path) -> list[dict]:
    """Plain text, one document (sentence, paragraph, article) per line; blank lines are skipped."""
    path = check_file(path, "MLM text file")
    with open(path, encoding="utf-8") as f:
        return [{"text": line.strip()} for line in f if line.strip()]


def mlm_metrics(nll: float, correct: int, count: int) -> dict[str, float]:
    if count == 0:
        raise ValueError("the MLM dev data has no maskable tokens; give a dev file with text")
    loss = nll / count
    return {"neg_loss": -loss, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": 100.0 * correct / count, "masked_tokens": count}


def build_model(encoder: nn.Module, model_name: str, reduction_factor: int = 2, activation: str = "relu",
                head: str = "pretrained", adapter: bool = True) -> MLMModel:
    """A new language adapter (the stack's only adapter) + MLM head on the frozen encoder. `head`: "pretrained" (the
    checkpoint's, frozen), "new" (trains), or a directory holding a head fitted before (frozen, `load_mlm_head`).
    Without `adapter` the model is the frozen encoder + a new head alone: fitting a head shared by language adapters."""
    if not adapter and head != "new":
        raise ValueError("fitting an MLM head without an adapter needs a new head (mlm head 'new')")
    if activation not in ACT2FN:
        raise ValueError(f"activation {activation!r} is not a transformers activation (e.g. relu, gelu, gelu_new)")
    config = encoder.config
    if not 0 < reduction_factor <= config.hidden_size:
        raise ValueError(f"reduction factor {reduction_factor}: must be between 1 and the hidden size "
                         f"{config.hidden_size} (bottleneck = hidden // rf)")
    lang = AdapterSet(config.hidden_size, config.num_hidden_layers, reduction_factor, activation, invertible=True) \
        if adapter else None
    if head == "new":
        mlm_head = new_mlm_head(encoder)
    elif head == "pretrained":
        mlm_head = pretrained_mlm_head(model_name, encoder)
    else:
        mlm_head = load_mlm_head(head, encoder)
    freeze(encoder)
    return MLMModel(encoder, mlm_head, lang_adapter=lang)


def head_config(head: MLMHead) -> dict:
    """What rebuilding the head needs besides its tensors (saved with a run's adapter config as `mlm_head`)."""
    return dict(activation=head.activation, eps=head.layer_norm.eps)


def load_mlm_head(directory: str | Path, encoder: nn.Module) -> MLMHead:
    """The MLM head of an earlier `--task mlm` run (its best/ or final/), frozen: the head that every language
    adapter of a model without a pretrained one trains against (MAD-X's frozen pretrained head, fitted once)."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"{directory}: not 'pretrained', 'new', or a directory holding {ADAPTER_CONFIG} and "
                         f"{ADAPTER_WEIGHTS} (a `train.py --task mlm` run's best/ or final/)")
    meta = json.loads((directory / ADAPTER_CONFIG).read_text())
    if meta.get("task") != "mlm":
        raise ValueError(f"{directory}: saved by a '{meta.get('task')}' run, which has no MLM head; pass a "
                         "`train.py --task mlm` run's best/ (e.g. one fitted with --mlm-train head)")
    tensors = {k[len("head."):]: v for k, v in load_file(str(directory / ADAPTER_WEIGHTS)).items()
               if k.startswith("head.")}
    vocab, hidden = encoder.get_input_embeddings().weight.shape
    if tensors["bias"].shape != (vocab,) or tensors["dense.weight"].shape != (hidden, hidden):
        raise ValueError(f"{directory}: its head is for a vocabulary of {tensors['bias'].shape[0]:,} and hidden size "
                         f"{tensors['dense.weight'].shape[0]} ({meta.get('model')}), this encoder has {vocab:,} and "
                         f"{hidden}")
    config = meta.get("mlm_head") or dict(activation=head_activation(encoder.config), eps=encoder.config.layer_norm_eps)
    head = MLMHead(hidden, vocab, config["activation"], config["eps"])
    head.load_state_dict(tensors)
    freeze(head)
    return head


def load_corpus(lang: str | None, train_source: str | None, dev_source: str | None) -> tuple[list[dict], list[dict]]:
    """(train, dev) documents: each source a local text file, several (`a.txt,b.txt`), or a Hub dataset
    `NAME[:CONFIG]` (train default: Wikipedia in `lang`). Without a dev source every 20th document of each training
    source (at most 2,000 per source) is held out, so every language of a multilingual corpus has its dev share."""
    train, dev = [], []
    for source in split_sources(train_source):
        docs = read_source(source, lang)
        if dev_source is None:
            held = set(range(HOLDOUT_EVERY - 1, len(docs), HOLDOUT_EVERY)[:HOLDOUT_MAX])
            dev += [d for i, d in enumerate(docs) if i in held]
            docs = [d for i, d in enumerate(docs) if i not in held]
        train += docs
    if dev_source is not None:
        dev = [d for source in split_sources(dev_source) for d in read_source(source, lang)]
    return train, dev


def split_sources(sources: str | None) -> list[str | None]:
    """`a.txt,b.txt` → ["a.txt", "b.txt"]; None (the default Hub corpus) stays one source."""
    if sources is None:
        return [None]
    names = [s.strip() for s in sources.split(",")]
    if not all(names):
        raise ValueError(f"{sources!r}: an empty name in the comma-separated list of text files")
    return names


def subsample(docs: list[dict], max_docs: int | None, seed: int) -> list[dict]:
    """A seeded random subsample of `max_docs` documents, in their original order (all of them if None)."""
    if max_docs is None or max_docs >= len(docs):
        return docs
    g = torch.Generator().manual_seed(seed)
    return [docs[i] for i in sorted(torch.randperm(len(docs), generator=g)[:max_docs].tolist())]


def read_source(source: str | None, lang: str | None) -> list[dict]:
    """A local text file, or a Hub dataset `NAME[:CONFIG]` with a `text` column (None: Wikipedia in `lang`)."""
    if source is not None and (Path(source).exists() or source.startswith(("/", "."))
                               or Path(source).suffix in TEXT_SUFFIXES):
        return read_corpus(source)  # a local file (check_file names a missing one)
    if source is None:
        if lang is None:
            raise ValueError("no text file given, and no language to take Wikipedia's text in")
        rows = hub.load_dataset(hub.WIKIPEDIA, lang)
    else:
        name, _, config = source.partition(":")
        rows = hub.load_dataset(hub.HubDataset(name, config or None, "train"))
    if "text" not in rows.column_names:
        raise ValueError(f"dataset {source}: no `text` column (columns: {', '.join(rows.column_names)})")
    return [{"text": t.strip()} for t in rows["text"] if t and t.strip()]


def encode(docs: list[dict], tokenizer, max_length: int, dev: bool, probability: float = 0.15) -> list[dict]:
    """Documents → sequences of at most `max_length` tokens, none crossing documents. Dev sequences are masked once,
    here, with a fixed seed; training sequences are masked per step (`mask_batch`)."""
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; MLM needs one")
    if max_length <= tokenizer.num_special_tokens_to_add(pair=False):
        raise ValueError(f"max length {max_length}: too short for MLM")
    enc = tokenizer([d["text"] for d in docs], truncation=True, max_length=max_length, return_overflowing_tokens=True)
    special = set(tokenizer.all_special_ids)
    features = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in enc["input_ids"]
                if any(t not in special for t in row)]  # something to mask
    if dev:
        g = torch.Generator().manual_seed(DEV_MASK_SEED)
        for f in features:
            masked, positions, labels = _mask(torch.tensor([f["input_ids"]]), tokenizer, probability, g)
            n = int((labels[0] != -100).sum())
            f.update(input_ids=masked[0].tolist(), mlm_positions=positions[0, :n].tolist(), labels=labels[0, :n].tolist())
    return features


def corpus_split(docs: list[dict], tokenizer, max_length: int, dev: bool, lang: str,
                 probability: float = 0.15) -> Split:
    if not docs:
        raise ValueError(f"no {'dev' if dev else 'training'} text")
    return Split(docs, encode(docs, tokenizer, max_length, dev, probability), lang, f"mlm:{'dev' if dev else 'train'}:{lang}")


def _mask(input_ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator):
    return mask_tokens(input_ids, special_mask(input_ids, tokenizer), len(tokenizer), tokenizer.mask_token_id,
                       probability, generator)


def mask_batch(batch: dict[str, torch.Tensor], tokenizer, probability: float, seed: int,
               step: int) -> dict[str, torch.Tensor]:
    """Dynamic masking of a collated training batch → adds `mlm_positions` and `labels` (B, M). The masks come from
    a generator seeded by (seed, step), so a resumed run masks exactly as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 999_983 + step)
    masked, positions, labels = _mask(batch["input_ids"], tokenizer, probability, generator)
    return dict(batch, input_ids=masked, mlm_positions=positions, labels=labels)


@torch.inference_mode()
@full_fp32()
def evaluate(model: nn.Module, split: Split, batch_size: int, pad_token_id: int, device: torch.device | str = "cpu",
             autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Held-out masked-token loss, accumulated per batch (no per-feature (M, V) logits kept)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    nll, correct, count = 0.0, 0, 0
    for idx in length_sorted_batches(split.features, batch_size):
        batch = to_device(collate([split.features[i] for i in idx], pad_token_id), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch).float()  # (B, M, V)
        labels = batch["labels"]  # (B, M), -100 = padding
        nll += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
        correct += int(((logits.argmax(-1) == labels) & (labels != -100)).sum())
        count += int((labels != -100).sum())
    model.train(was_training)
    return mlm_metrics(nll, correct, count)


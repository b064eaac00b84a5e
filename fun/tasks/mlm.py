"""Masked-language modelling: train a MAD-X language adapter (SPEC §1.2; paper Appendix B; Pfeiffer et al. 2020).

    python train.py --task mlm --lang sw --train-file corpus.txt [--dev-file heldout.txt] --output-dir RUN

The encoder is frozen; a language adapter (reduction factor 2, relu unless --lang-activation, NICE invertible
adapter) trains with the MLM objective. It sits in AdapterModel's task slot, so as the stack's first adapter its
invertible adapter runs on the embeddings, and `MLMModel` applies the inverse before the output embeddings (tied to
the frozen input embeddings):
    hidden → transform (dense → act → LayerNorm) → inverse invertible adapter → decoder
as MAD-X and the `adapters` library's flex-head models do (tests/test_mlm.py matches their logits to 1e-5; the
library's static BertForMaskedLM + `adapters.init` path, adapters 1.3.0, applies no inverse at all). The pretrained
MLM head (mBERT, XLM-R) is loaded frozen; for encoders without one (`--mlm-head new`, e.g. multilingual-e5) a fresh
head transform and output bias train with the adapter.

Masking is BERT's: 15% of the non-special tokens (at least one per sequence), of which 80% → mask token, 10% → a
random token, 10% unchanged. Training masks are dynamic, drawn for each step from a generator seeded by
(seed, step), so a resumed run masks exactly as an uninterrupted one; dev masks are drawn once, at encode time,
from a fixed seed, so the dev loss compares across steps, runs and seeds. Logits are computed at masked positions
only: (B, M, V) with M the most masked tokens of a row (labels padded with -100), never the full (B, T, V).

Data: plain text, one document per line, cut into sequences of at most --max-length tokens (no packing across
documents); or a Hub dataset `NAME[:CONFIG]` with a `text` column (default: wikimedia/wikipedia 20231101.<lang>).
Without --dev-file every 20th document (at most 2,000) is held out for dev. Selection metric: `neg_loss`
(= −masked-token cross-entropy, higher is better); `perplexity` = exp(loss).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from fun.adapters import AdapterSet, InvertibleAdapter
from fun.data import check_file, collate, length_sorted_batches, to_device
from fun.model import AdapterModel, UsageError, additive_attention_mask, freeze
from fun.tasks.base import Defaults, Split, Task, load_hub

HOLDOUT_EVERY, HOLDOUT_MAX = 20, 2000  # without --dev-file: every 20th document, at most 2,000, is dev
TEXT_SUFFIXES = (".txt", ".text", ".raw", ".tsv", ".csv")  # a --train-file with these is a local file, not a Hub name
DEV_MASK_SEED = 0                      # dev masks are fixed: the same for every run, step and --seed


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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.additive_mask and "attention_mask" in inputs:
            inputs["attention_mask"] = additive_attention_mask(inputs["attention_mask"], self.head_dtype())
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, d)
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
    """The checkpoint's own MLM head (AutoModelForMaskedLM's), frozen; UsageError when the checkpoint has none."""
    from transformers import AutoModelForMaskedLM

    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise UsageError(f"--model {name_or_path}: no masked-LM class for this model ({type(err).__name__}); "
                         "pass --mlm-head new to train a freshly initialised head") from None
    prefix = mlm.base_model_prefix + "."
    missing = [k for k in info["missing_keys"] if not k.startswith(prefix)]
    if missing:
        raise UsageError(f"--model {name_or_path}: the checkpoint has no pretrained MLM head "
                         f"(missing {missing[0]}, …); "
                         "pass --mlm-head new to train a freshly initialised head transform with the adapter")
    params = {n: p for n, p in mlm.named_parameters() if not n.startswith(prefix)}
    vocab = encoder.get_input_embeddings().num_embeddings

    def find(*suffixes: str, size: int | None = None) -> torch.Tensor:
        found = [p for n, p in params.items() if n.endswith(suffixes) and (size is None or p.shape == (size,))]
        if len(found) != 1:
            raise UsageError(f"--model {name_or_path}: cannot identify the MLM head's {suffixes[0]} "
                             f"among {sorted(params)}; pass --mlm-head new")
        return found[0]

    decoder = [p for n, p in params.items() if n.endswith("decoder.weight")]
    if decoder and not torch.equal(decoder[0], encoder.get_input_embeddings().weight):
        raise UsageError(f"--model {name_or_path}: its MLM decoder is not tied to the input embeddings; not supported")
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
        raise UsageError("MLM dev data has no maskable tokens; pass a --dev-file with text")
    loss = nll / count
    return {"neg_loss": -loss, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": 100.0 * correct / count, "masked_tokens": count}


class MLM(Task):
    name = "mlm"
    metric = "neg_loss"
    languages = ()
    source_lang = ""
    # Appendix B: lr 1e-4, batch 64, sequence length 512, at most 100 epochs or 24 h. The LR schedule is ours:
    # constant, so that a run stopped by the time budget equals a shorter run (a linear decay tied to 100 epochs
    # would barely have moved); pass --lr-schedule linear for HF run_mlm's default.
    defaults = Defaults(epochs=100, lr=1e-4, batch_size=64, max_length=512, lr_schedule="constant")

    def __init__(self):
        self.options: dict = {}

    # --- model ---------------------------------------------------------------------------------------------
    def build_model(self, encoder: nn.Module, cfg: dict, lang_adapter: AdapterSet | None = None,
                    adapters: bool = True) -> MLMModel:
        """Language adapter (in the task slot) + MLM head on the frozen encoder; records the data options."""
        if not cfg.get("lang"):
            raise UsageError("--task mlm needs --lang, the language code of the text (it names the adapter), "
                             "e.g. --lang sw")
        if cfg["schedule"] in ("full", "fun") or cfg.get("fisher_every"):
            raise UsageError("--task mlm trains a language adapter: use --schedule standard (or gu/lpft/rand/order); "
                             "full fine-tuning and tr(F) (--schedule fun, --fisher-every) are for task adapters")
        if cfg["lang_activation"] not in ACT2FN:
            raise UsageError(f"--lang-activation {cfg['lang_activation']}: not a transformers activation "
                             f"(e.g. relu, gelu, gelu_new, swish)")
        if not 0 < cfg["lang_reduction_factor"] <= encoder.config.hidden_size:
            raise UsageError(f"--lang-reduction-factor {cfg['lang_reduction_factor']}: must be between 1 and the "
                             f"hidden size {encoder.config.hidden_size} (bottleneck = hidden // rf)")
        if not 0.0 < cfg["mlm_probability"] < 1.0:
            raise UsageError(f"--mlm-probability {cfg['mlm_probability']}: must be between 0 and 1")
        self.options = dict(lang=cfg["lang"], train_file=cfg["train_file"], dev_file=cfg["dev_file"],
                            probability=cfg["mlm_probability"])
        config = encoder.config
        adapter = AdapterSet(config.hidden_size, config.num_hidden_layers, cfg["lang_reduction_factor"],
                             cfg["lang_activation"], invertible=True)
        head = new_mlm_head(encoder) if cfg["mlm_head"] == "new" else pretrained_mlm_head(cfg["model"], encoder)
        freeze(encoder)
        return MLMModel(encoder, head, adapter, lang_adapter)

    def export(self, model: MLMModel, directory: Path, cfg: dict) -> None:
        """Beside our format (save_task_adapter), the language adapter in AdapterHub's layout: DIR/adapterhub/."""
        from fun.adapterhub import save_adapterhub
        save_adapterhub(model.task_adapter, Path(directory) / "adapterhub", name=cfg["lang"], model_name=cfg["model"],
                        model_type=model.encoder.config.model_type)

    # --- data ----------------------------------------------------------------------------------------------
    def load(self, split: str, path: str | None = None, lang: str = "") -> list[dict]:
        if split == "test":
            raise UsageError("--task mlm has no test split")
        if split == "dev" and path is not None:
            return self._read_source(path)
        docs = self._read_source(self.options.get("train_file") if split == "dev" else path)
        if self.options.get("dev_file") is not None:
            return docs
        # no --dev-file: every 20th document (at most 2,000) is dev, the rest train
        held = set(range(HOLDOUT_EVERY - 1, len(docs), HOLDOUT_EVERY)[:HOLDOUT_MAX])
        return [d for i, d in enumerate(docs) if (i in held) == (split == "dev")]

    def _read_source(self, source: str | None) -> list[dict]:
        """A local text file, or a Hub dataset `NAME[:CONFIG]` (None: Wikipedia in --lang)."""
        name, _, config = (source or f"wikimedia/wikipedia:20231101.{self.options.get('lang')}").partition(":")
        local = source is not None and Path(source).exists()
        if local or name.startswith(("/", ".")) or Path(name).suffix in TEXT_SUFFIXES:
            return read_corpus(source)  # a local file (check_file names a missing one)
        rows = load_hub(name, *([config] if config else []), split="train", flag="--train-file")
        if "text" not in rows.column_names:
            raise UsageError(f"dataset {name}: no `text` column (columns: {', '.join(rows.column_names)})")
        return [{"text": t.strip()} for t in rows["text"] if t and t.strip()]

    def encode(self, examples, tokenizer, max_length, train):
        if tokenizer.mask_token_id is None:
            raise UsageError("the tokenizer has no mask token; MLM needs one")
        if max_length <= tokenizer.num_special_tokens_to_add(pair=False):
            raise UsageError(f"--max-length {max_length}: too short for MLM")
        # long documents → several sequences of at most max_length tokens, none crossing documents
        enc = tokenizer([e["text"] for e in examples], truncation=True, max_length=max_length,
                        return_overflowing_tokens=True)
        special = set(tokenizer.all_special_ids)
        features = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in enc["input_ids"]
                    if any(t not in special for t in row)]  # something to mask
        if not train:  # dev: masks drawn once, from a fixed seed
            g = torch.Generator().manual_seed(DEV_MASK_SEED)
            for f in features:
                masked, positions, labels = self._mask(torch.tensor([f["input_ids"]]), tokenizer, g)
                n = int((labels[0] != -100).sum())
                f.update(input_ids=masked[0].tolist(), mlm_positions=positions[0, :n].tolist(),
                         labels=labels[0, :n].tolist())
        return features

    def _mask(self, input_ids: torch.Tensor, tokenizer, generator: torch.Generator):
        return mask_tokens(input_ids, special_mask(input_ids, tokenizer), len(tokenizer), tokenizer.mask_token_id,
                           self.options.get("probability", 0.15), generator)

    def train_batch(self, batch: dict[str, torch.Tensor], tokenizer, seed: int, step: int) -> dict[str, torch.Tensor]:
        """Dynamic masking of a collated training batch → adds `mlm_positions` and `labels` (B, M). The masks
        come from a generator seeded by (seed, step), so a resumed run masks exactly as an uninterrupted one."""
        generator = torch.Generator().manual_seed(seed * 999_983 + step)
        masked, positions, labels = self._mask(batch["input_ids"], tokenizer, generator)
        return dict(batch, input_ids=masked, mlm_positions=positions, labels=labels)

    # --- metric --------------------------------------------------------------------------------------------
    def score(self, split: Split, logits: list[torch.Tensor]) -> dict[str, float]:
        """From per-feature logits (M, V) — what fun.evaluation.predict returns; `evaluate` streams the same."""
        nll, correct, count = 0.0, 0, 0
        for feature, row in zip(split.features, logits):
            labels = torch.tensor(feature["labels"])
            row = row[:len(labels)].float()  # (M_i, V): drop the batch's padding rows
            nll += F.cross_entropy(row, labels, reduction="sum").item()
            correct += int((row.argmax(-1) == labels).sum())
            count += len(labels)
        return mlm_metrics(nll, correct, count)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, split: Split, batch_size: int, pad_token_id: int,
                 device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
        """Held-out masked-token loss, accumulated per batch (no per-feature (M, V) logits kept)."""
        was_training = model.training
        model.eval()
        device = torch.device(device)
        nll, correct, count = 0.0, 0, 0
        for idx in length_sorted_batches(split.features, batch_size):
            batch = collate([split.features[i] for i in idx], pad_token_id)
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(batch).float()  # (B, M, V)
            labels = batch["labels"]  # (B, M), -100 = padding
            nll += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
            correct += int(((logits.argmax(-1) == labels) & (labels != -100)).sum())
            count += int((labels != -100).sum())
        model.train(was_training)
        return mlm_metrics(nll, correct, count)

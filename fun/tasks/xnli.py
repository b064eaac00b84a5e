"""XNLI (paper §4): train on MultiNLI, select on XNLI en dev, test XNLI per language; accuracy.

Local formats: JSONL `{premise, hypothesis, label}` (MultiNLI/our shared subset; also `sentence1/sentence2/
gold_label`), XTREME TSV `premise<TAB>hypothesis<TAB>label` without header, or the official MultiNLI/XNLI
TSV with a header row holding `sentence1`, `sentence2`, `gold_label`. Labels: 0/1/2 or their names. XNLI 1.0's
official files hold every language in one file (`xnli.test.tsv`, a `language` column): each language reads its rows.
"""

from __future__ import annotations

from pathlib import Path

from fun import hub
from fun.data import LanguageNotFound, Split, read_jsonl, read_tsv
from fun.heads import ClassificationHead
from fun.metrics import accuracy
from fun.tasks.base import Defaults, Task, argmax_choices

LABELS = ("entailment", "neutral", "contradiction")
LABEL_IDS = {**{name: i for i, name in enumerate(LABELS)}, "contradictory": 2, **{str(i): i for i in range(3)}}


def _label(value, where: str) -> int:
    key = str(value).strip().lower()
    if key not in LABEL_IDS:
        raise ValueError(f"{where}: label {value!r} is not one of {', '.join(LABELS)} (or 0/1/2)")
    return LABEL_IDS[key]


def read_nli_file(path: str | Path, lang: str | None = None) -> list[dict]:
    """Examples {premise, hypothesis, label, line[, id]} of a local NLI file. A file that holds several languages in a
    `language` column (XNLI 1.0's xnli.{dev,test}.{tsv,jsonl}) gives the rows of `lang` alone."""
    path = Path(path)
    rows = []  # (line, premise, hypothesis, label, language or None, pair id or None)
    if path.suffix in (".jsonl", ".json"):
        for n, obj in read_jsonl(path, "NLI file"):
            p, h = obj.get("premise", obj.get("sentence1")), obj.get("hypothesis", obj.get("sentence2"))
            label = obj.get("label", obj.get("gold_label"))
            if p is None or h is None or label is None:
                raise ValueError(f"{path}:{n}: expected keys premise, hypothesis, label")
            rows.append((n, p, h, label, obj.get("language"), obj.get("pairID")))
    else:
        header = None
        for n, cols in read_tsv(path, "NLI file"):
            if n == 1 and "sentence1" in cols:
                header = {name: i for i, name in enumerate(cols)}
                continue
            if header:
                try:
                    p, h, label = cols[header["sentence1"]], cols[header["sentence2"]], cols[header["gold_label"]]
                    language = cols[header["language"]] if "language" in header else None
                    pair = cols[header["pairID"]] if "pairID" in header else None
                except (KeyError, IndexError):
                    raise ValueError(f"{path}:{n}: row has {len(cols)} columns; expected sentence1, sentence2, "
                                     "gold_label") from None
            elif len(cols) != 3:
                raise ValueError(f"{path}:{n}: expected 3 tab-separated columns premise, hypothesis, label; got {len(cols)}")
            else:
                (p, h, label), language, pair = cols, None, None
            rows.append((n, p, h, label, language, pair))
    languages = {row[4] for row in rows} - {None}
    if languages and lang is not None:  # one file, many languages: XNLI 1.0's official layout
        if lang not in languages:
            raise LanguageNotFound(f"{path}: no rows of language {lang!r} in its language column "
                             f"(it holds {', '.join(sorted(languages))})")
        rows = [row for row in rows if row[4] == lang]
    return [dict(premise=p, hypothesis=h, label=_label(label, f"{path}:{n}"), line=n, **({"id": pair} if pair else {}))
            for n, p, h, label, _, pair in rows]


class XNLI(Task):
    name = "xnli"
    metric = "accuracy"
    languages = ("ar", "de", "el", "es", "hi", "ru", "sw", "th", "tr", "vi", "zh")
    extra_languages = ("bg", "fr", "ur")  # XNLI has 15 languages; the paper reports the 11 above
    # paper Table 3 (MultiNLI); App. B states no LR schedule for it: ours decays linearly (Defaults' default)
    defaults = Defaults(epochs=15, lr=5e-4, batch_size=128, max_length=128,
                        k={("mbert", "lpft"): 25, ("mbert", "gu"): 800, ("mbert", "fun"): 50,
                           ("xlmr", "lpft"): 800, ("xlmr", "gu"): 800, ("xlmr", "fun"): 800})

    def local_files(self, split: str, directory: str | Path, lang: str) -> list[Path]:
        """XTREME's layout DIR/{dev,test}-<lang>.tsv, or the same names in any format of the training files (.jsonl,
        .json, .txt); else XNLI 1.0's one file of every language, DIR/xnli.{dev,test}.{tsv,jsonl}."""
        name = "dev" if split == "dev" else "test"
        return [Path(directory) / f"{name}-{lang}{suffix}" for suffix in (".tsv", ".jsonl", ".json", ".txt")] + [
            Path(directory) / f"xnli.{name}{suffix}" for suffix in (".tsv", ".jsonl")]

    def load(self, split: str, path: str | None = None, lang: str = "en") -> list[dict]:
        if path is not None:
            return read_nli_file(self.local_file(split, path, lang) if Path(path).is_dir() else path, lang)
        rows = hub.load_dataset(hub.dataset_for(self.name, split, lang), lang)
        return [dict(premise=r["premise"], hypothesis=r["hypothesis"], label=int(r["label"]), row=i)
                for i, r in enumerate(rows)
                if int(r["label"]) in (0, 1, 2)]  # MultiNLI marks pairs without a gold label with -1

    def encode(self, examples, tokenizer, max_length, train):
        enc = tokenizer([e["premise"] for e in examples], [e["hypothesis"] for e in examples],
                        truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{**{k: enc[k][i] for k in keys}, "labels": e["label"]} for i, e in enumerate(examples)]

    def make_head(self, hidden_size, dropout):
        return ClassificationHead(hidden_size, len(LABELS), dropout)

    def label_name(self, index: int) -> str:
        return LABELS[index]

    def decode(self, split: Split, logits) -> list[int]:
        return argmax_choices(logits)

    def metrics(self, split: Split, predictions: list[int]):
        return {"accuracy": accuracy(predictions, [e["label"] for e in split.examples])}

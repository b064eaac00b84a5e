"""XNLI (paper §4): train on MultiNLI, select on XNLI en dev, test XNLI per language; accuracy.

Local formats: JSONL `{premise, hypothesis, label}` (MultiNLI/our shared subset; also `sentence1/sentence2/
gold_label`), XTREME TSV `premise<TAB>hypothesis<TAB>label` without header, or the official MultiNLI/XNLI
TSV with a header row holding `sentence1`, `sentence2`, `gold_label`. Labels: 0/1/2 or their names.
"""

from __future__ import annotations

from pathlib import Path

from fun import hub
from fun.data import Split, read_jsonl, read_tsv
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


def read_nli_file(path: str | Path) -> list[dict]:
    path = Path(path)
    examples = []
    if path.suffix in (".jsonl", ".json"):
        for n, obj in read_jsonl(path, "NLI file"):
            p, h = obj.get("premise", obj.get("sentence1")), obj.get("hypothesis", obj.get("sentence2"))
            label = obj.get("label", obj.get("gold_label"))
            if p is None or h is None or label is None:
                raise ValueError(f"{path}:{n}: expected keys premise, hypothesis, label")
            examples.append(dict(premise=p, hypothesis=h, label=_label(label, f"{path}:{n}")))
        return examples
    rows = read_tsv(path, "NLI file")
    header = None
    for n, cols in rows:
        if n == 1 and "sentence1" in cols:
            header = {name: i for i, name in enumerate(cols)}
            continue
        if header:
            try:
                p, h, label = cols[header["sentence1"]], cols[header["sentence2"]], cols[header["gold_label"]]
            except (KeyError, IndexError):
                raise ValueError(f"{path}:{n}: row has {len(cols)} columns; expected sentence1, sentence2, gold_label") from None
        elif len(cols) != 3:
            raise ValueError(f"{path}:{n}: expected 3 tab-separated columns premise, hypothesis, label; got {len(cols)}")
        else:
            p, h, label = cols
        examples.append(dict(premise=p, hypothesis=h, label=_label(label, f"{path}:{n}")))
    return examples


class XNLI(Task):
    name = "xnli"
    metric = "accuracy"
    languages = ("ar", "de", "el", "es", "hi", "ru", "sw", "th", "tr", "vi", "zh")
    extra_languages = ("bg", "fr", "ur")  # XNLI has 15 languages; the paper reports the 11 above
    # paper Table 3 (MultiNLI); App. B states no LR schedule for it: ours decays linearly (Defaults' default)
    defaults = Defaults(epochs=15, lr=5e-4, batch_size=128, max_length=128,
                        k={("mbert", "lpft"): 25, ("mbert", "gu"): 800, ("mbert", "fun"): 50,
                           ("xlmr", "lpft"): 800, ("xlmr", "gu"): 800, ("xlmr", "fun"): 800})

    def local_file(self, split: str, directory: str | Path, lang: str) -> Path:
        """XTREME layout: DIR/{dev,test}-<lang>.tsv."""
        return Path(directory) / f"{'dev' if split == 'dev' else 'test'}-{lang}.tsv"

    def load(self, split: str, path: str | None = None, lang: str = "en") -> list[dict]:
        if path is not None:
            return read_nli_file(self.local_file(split, path, lang) if Path(path).is_dir() else path)
        rows = hub.load_dataset(hub.dataset_for(self.name, split, lang), lang)
        return [dict(premise=r["premise"], hypothesis=r["hypothesis"], label=int(r["label"])) for r in rows
                if int(r["label"]) in (0, 1, 2)]  # MultiNLI marks pairs without a gold label with -1

    def encode(self, examples, tokenizer, max_length, train):
        enc = tokenizer([e["premise"] for e in examples], [e["hypothesis"] for e in examples],
                        truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{**{k: enc[k][i] for k in keys}, "labels": e["label"]} for i, e in enumerate(examples)]

    def make_head(self, hidden_size, dropout):
        return ClassificationHead(hidden_size, len(LABELS), dropout)

    def decode(self, split: Split, logits) -> list[int]:
        return argmax_choices(logits)

    def metrics(self, split: Split, predictions: list[int]):
        return {"accuracy": accuracy(predictions, [e["label"] for e in split.examples])}

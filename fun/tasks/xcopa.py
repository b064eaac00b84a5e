"""XCOPA (paper §4): train on COPA (400), select on COPA val (100), test XCOPA per language; accuracy.

Each example becomes one multiple-choice feature: the first segment is the premise followed by a question
("What was the cause?" / "What happened as a result?", in English for every language), paired with each
of the two choices → `input_ids` of shape (2, T) (fun/heads.py `MultipleChoiceHead` scores each pair).

Local formats: COPA / XCOPA JSONL `{premise, choice1, choice2, question: cause|effect, label: 0|1}` (extra keys
such as `idx` and `changed` are ignored). A directory is read in the official layouts:
XCOPA `<dir>/<lang>/{val,test}.<lang>.jsonl` (cambridgeltl/xcopa `data/`), flat `<dir>/{val,test}.<lang>.jsonl`,
or, for English, a COPA directory `<dir>/{train,val,test}.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from fun import hub
from fun.data import Split, read_jsonl
from fun.heads import MultipleChoiceHead
from fun.metrics import accuracy
from fun.tasks.base import Defaults, Task, argmax_choices

QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}
FILE_SPLIT = {"train": "train", "dev": "val", "test": "test"}  # our split names → the files' names


def copa_example(obj: dict, where: str) -> dict:
    """Validate one COPA/XCOPA row; `where` (file:line, or the Hub dataset) goes into the error message."""
    for key in ("premise", "choice1", "choice2"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"{where}: expected a non-empty string '{key}' (keys: premise, choice1, choice2, "
                             "question, label)")
    if obj.get("question") not in QUESTIONS:
        raise ValueError(f"{where}: 'question' is {obj.get('question')!r}; expected 'cause' or 'effect'")
    label = obj.get("label")
    if isinstance(label, str) and label.strip() in ("0", "1"):
        label = int(label)
    if label not in (0, 1) or isinstance(label, bool):
        raise ValueError(f"{where}: 'label' is {label!r}; expected 0 (choice1) or 1 (choice2)")
    return dict(premise=obj["premise"], choice1=obj["choice1"], choice2=obj["choice2"],
                question=obj["question"], label=label, **({"id": obj["idx"]} if "idx" in obj else {}))


def read_copa_file(path: str | Path) -> list[dict]:
    return [dict(copa_example(obj, f"{path}:{n}"), line=n) for n, obj in read_jsonl(path, "COPA/XCOPA file")]


class XCOPA(Task):
    name = "xcopa"
    metric = "accuracy"
    languages = ("et", "ht", "it", "id", "qu", "sw", "zh", "ta", "th", "tr", "vi")
    # paper Table 3: 500 / 5000 epochs and lr 1e-4 / 1e-5 (standard / scheduled), batch 64, constant LR
    defaults = Defaults(epochs=(500, 5000), lr=(1e-4, 1e-5), batch_size=64, max_length=128, lr_schedule="constant",
                        fisher_every=50,
                        k={("mbert", "lpft"): 800, ("mbert", "gu"): 50, ("mbert", "fun"): 50,
                           ("xlmr", "lpft"): 800, ("xlmr", "gu"): 1000, ("xlmr", "fun"): 1000})

    def local_files(self, split: str, directory: str | Path, lang: str) -> list[Path]:
        directory, name = Path(directory), FILE_SPLIT[split]
        candidates = [directory / lang / f"{name}.{lang}.jsonl", directory / f"{name}.{lang}.jsonl"]
        if lang == "en":
            candidates.append(directory / f"{name}.jsonl")
        return candidates

    def load(self, split: str, path: str | None = None, lang: str = "en") -> list[dict]:
        if path is not None:
            return read_copa_file(self.local_file(split, path, lang) if Path(path).is_dir() else path)
        spec = hub.dataset_for(self.name, split, lang)
        rows = hub.load_dataset(spec, lang)
        name = f"{spec.id} {spec.args(lang)['name'] or spec.data_dir}"
        return [dict(copa_example(dict(r), f"Hub {name} ({spec.split}) row {i}"), row=i) for i, r in enumerate(rows)]

    def encode(self, examples, tokenizer, max_length, train):
        # (premise + question, choice) pairs, two per example, flattened then regrouped per example
        first = [f"{e['premise']} {QUESTIONS[e['question']]}" for e in examples for _ in range(2)]
        second = [c for e in examples for c in (e["choice1"], e["choice2"])]
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{**{k: [enc[k][2 * i], enc[k][2 * i + 1]] for k in keys}, "labels": e["label"]}  # (2, T) lists
                for i, e in enumerate(examples)]

    def make_head(self, hidden_size, dropout):
        return MultipleChoiceHead(hidden_size, dropout)

    def decode(self, split: Split, logits) -> list[int]:
        return argmax_choices(logits)  # (N, 1, 2) → choice per example

    def metrics(self, split: Split, predictions: list[int]):
        return {"accuracy": accuracy(predictions, [e["label"] for e in split.examples])}

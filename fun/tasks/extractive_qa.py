"""XQuAD and MLQA (paper §4): train on SQuAD v1.1, select on SQuAD v1.1 dev (F1), test per language; F1 / EM.

Contexts longer than a window are cut into windows of `max_length` tokens overlapping by the doc stride
(128 at the paper's 384); a span head scores every token as start and end (logits (2, T) per window);
the best of the n-best (20) start/end pairs over all windows of a question, at most 30 tokens long, is the
answer (fun/qa.py, after Hugging Face's run_qa.py). Training windows carry `labels = [start, end]` (the CLS
index when the answer is not inside the window). F1/EM use the SQuAD v1.1 script for SQuAD and XQuAD, and
MLQA's official language-aware normalisation for MLQA data (fun/metrics.py).

Local formats: SQuAD v1.1 JSON everywhere. A test directory holds XQuAD's `xquad.<lang>.json`, or MLQA's
official `test-context-<lang>-question-<lang>.json` / `dev-context-<lang>-question-<lang>.json` (flat, or in
MLQA_V1's `test/` and `dev/` folders); context language = question language.
"""

from __future__ import annotations

from pathlib import Path

from fun import hub
from fun.data import Split, check_file
from fun.heads import QuestionAnsweringHead
from fun.metrics import qa_metrics
from fun.qa import decode_predictions, prepare_eval_features, prepare_train_features, read_squad_json
from fun.tasks.base import Defaults, Task

# paper Table 3 (SQuAD): mBERT 5 epochs lr 5e-4; XLM-R 15 epochs lr 2e-4 / 5e-4 (standard / scheduled); batch 32;
# App. B: a constant learning rate for SQuAD (and COPA)
SQUAD_DEFAULTS = Defaults(epochs={"mbert": 5, "xlmr": 15}, lr={"mbert": 5e-4, "xlmr": (2e-4, 5e-4)}, batch_size=32,
                          max_length=384, lr_schedule="constant",
                          k={("mbert", "lpft"): 800, ("mbert", "gu"): 800, ("mbert", "fun"): 800,
                             ("xlmr", "lpft"): 800, ("xlmr", "gu"): 800, ("xlmr", "fun"): 100})


def read_qa_file(path: str | Path, normalization: str) -> list[dict]:
    """SQuAD v1.1 JSON → examples {id, question, context, answers, normalization}; errors name the file."""
    examples = read_squad_json(check_file(path, "SQuAD-format JSON file"))
    return [dict(e, normalization=normalization) for e in examples]


def hub_examples(rows, normalization: str) -> list[dict]:
    """Hub rows (squad / xquad / mlqa share SQuAD's columns) → the same example dicts as `read_qa_file`."""
    return [dict(id=r["id"], question=r["question"], context=r["context"], normalization=normalization,
                 answers={"text": list(r["answers"]["text"]), "answer_start": list(r["answers"]["answer_start"])})
            for r in rows]


def clip_questions(examples: list[dict], tokenizer, max_tokens: int) -> list[dict]:
    """Cut questions longer than `max_tokens` tokens, so that every window keeps more context than the stride
    (the tokenizer refuses windows otherwise). Never triggers at the paper's 384 on SQuAD-style questions."""
    enc = tokenizer([e["question"] for e in examples], add_special_tokens=False, truncation=True,
                    max_length=max_tokens, return_offsets_mapping=True)
    out = []
    for e, offsets in zip(examples, enc["offset_mapping"]):
        end = offsets[-1][1] if len(offsets) == max_tokens else len(e["question"])
        out.append(e if end >= len(e["question"]) else dict(e, question=e["question"][:end]))
    return out


class ExtractiveQA(Task):
    """Shared by XQuAD and MLQA: the same SQuAD training, head, windows and decoding; they differ in test data."""

    metric = "f1"
    token_level = True  # logits are (2, T): trim each window's padding before decoding
    defaults = SQUAD_DEFAULTS
    doc_stride = 128          # overlap of consecutive windows at max_length 384 (paper / run_qa.py)
    n_best = 20               # start and end candidates per window
    max_answer_length = 30    # tokens
    normalization = "squad"   # F1/EM normalisation of this task's target-language data

    def stride(self, max_length: int) -> int:
        """The doc stride: 128 at the paper's 384, the same third of the window below it."""
        return min(self.doc_stride, max_length // 3)

    def load(self, split: str, path: str | None = None, lang: str = "en") -> list[dict]:
        if path is not None and Path(path).is_dir():
            return read_qa_file(self.local_file(split, path, lang), self.normalization)
        if path is not None:  # --train-file / --dev-file are SQuAD; a test file is this task's data
            return read_qa_file(path, "squad" if split in ("train", "dev") else self.normalization)
        spec = hub.dataset_for(self.name, split, lang)
        squad = spec in (hub.SQUAD_TRAIN, hub.SQUAD_DEV)  # English training and model-selection data
        return hub_examples(hub.load_dataset(spec, lang), "squad" if squad else self.normalization)

    def encode(self, examples, tokenizer, max_length, train):
        stride = self.stride(max_length)
        examples = clip_questions(examples, tokenizer, max_length // 2)
        try:
            if not train:  # windows with example_index + offset_mapping, for decoding in `score`
                return prepare_eval_features(examples, tokenizer, max_length, stride)
            return [{k: v for k, v in f.items() if k not in ("start_positions", "end_positions")}
                    | {"labels": [f["start_positions"], f["end_positions"]]}  # (H=2,): start, end
                    for f in prepare_train_features(examples, tokenizer, max_length, stride)]
        except Exception as err:  # the Rust tokenizer: "Sequence to truncate too short ..."
            if "truncat" not in str(err).lower():
                raise
            raise ValueError(f"max length {max_length} is too short for question + context windows with doc stride "
                             f"{stride} ({err}); use a larger one (paper: 384)") from None

    def make_head(self, hidden_size, dropout):
        return QuestionAnsweringHead(hidden_size, dropout)

    def decode(self, split: Split, logits) -> dict[str, str]:
        """{question id: answer text}, the official SQuAD / MLQA prediction format."""
        return decode_predictions(split.examples, split.features, [l[0] for l in logits], [l[1] for l in logits],
                                  self.n_best, self.max_answer_length)

    def prediction_records(self, split: Split, predictions: dict[str, str]) -> dict[str, str]:
        return predictions  # the official format: the SQuAD v1.1 and MLQA scripts read it as it is

    def metrics(self, split: Split, predictions: dict[str, str]):
        references = {e["id"]: e["answers"]["text"] for e in split.examples}
        style = split.examples[0]["normalization"]
        return qa_metrics(predictions, references, split.lang if style == "mlqa" else None, style)


class XQuAD(ExtractiveQA):
    name = "xquad"
    languages = ("ar", "de", "el", "es", "hi", "ru", "th", "tr", "vi", "zh")

    def local_files(self, split: str, directory: str | Path, lang: str) -> list[Path]:
        if split != "test":
            raise ValueError("XQuAD has only a test set per language (SQuAD dev is the English dev set)")
        return [Path(directory) / f"xquad.{lang}.json"]


class MLQA(ExtractiveQA):
    name = "mlqa"
    languages = ("ar", "de", "es", "hi", "vi", "zh")
    normalization = "mlqa"

    def local_files(self, split: str, directory: str | Path, lang: str) -> list[Path]:
        name = "dev" if split == "dev" else "test"
        file = f"{name}-context-{lang}-question-{lang}.json"
        return [Path(directory) / file, Path(directory) / name / file]  # flat, or MLQA_V1/{dev,test}/


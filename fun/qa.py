"""Extractive QA pre/post-processing for XQuAD / MLQA / SQuAD (paper §4), for fast HF tokenizers.

Follows Hugging Face's ``run_qa.py`` (examples/pytorch/question-answering): long contexts are cut into
overlapping windows of ``max_length`` tokens sharing ``doc_stride`` tokens; a training window whose
context does not contain the whole answer is labelled with the CLS index; at evaluation the n-best
start/end logits of every window of an example compete and the best valid span wins.

Differences from ``run_qa.py``, both deliberate:
- features are unpadded lists (padding happens per batch at collation);
- the start-label walk stays inside the context, so a one-token answer on a window's last context
  token is labelled correctly (``run_qa`` walks on into [SEP] there).

Data are SQuAD v1.1 JSON files: {"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase


def read_squad_json(path: str | Path) -> list[dict[str, Any]]:
    """Flatten a SQuAD v1.1 JSON file into examples {id, question, context, answers{text, answer_start}}.

    Raises ``ValueError`` naming the file and the offending article/paragraph/qa (and id) when the file
    is malformed, an answer list is empty, or an answer does not occur at its ``answer_start``.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise ValueError(f"{path}: expected a SQuAD v1.1 object with a 'data' list")

    examples: list[dict[str, Any]] = []
    for a, article in enumerate(dataset["data"]):
        where_article = f"data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{path}: {where_article} has no 'paragraphs' list")
        for p, paragraph in enumerate(article["paragraphs"]):
            where_par = f"{where_article}.paragraphs[{p}]"
            if not isinstance(paragraph, dict):
                raise ValueError(f"{path}: {where_par} is not an object")
            context, qas = paragraph.get("context"), paragraph.get("qas")
            if not isinstance(context, str) or not isinstance(qas, list):
                raise ValueError(f"{path}: {where_par} needs a string 'context' and a 'qas' list")
            for q, qa in enumerate(qas):
                qid = qa.get("id") if isinstance(qa, dict) else None
                where = f"{where_par}.qas[{q}] (id={qid!r})"
                if not isinstance(qid, str) or not isinstance(qa.get("question"), str):
                    raise ValueError(f"{path}: {where} needs a string 'id' and 'question'")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not answers:
                    raise ValueError(f"{path}: {where} needs a non-empty 'answers' list (SQuAD v1.1)")
                texts, starts = [], []
                for k, answer in enumerate(answers):
                    text = answer.get("text") if isinstance(answer, dict) else None
                    start = answer.get("answer_start") if isinstance(answer, dict) else None
                    if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
                        raise ValueError(f"{path}: {where} answers[{k}] needs 'text' (str) and 'answer_start' (int)")
                    # A misplaced offset would silently train on the wrong span; refuse it here.
                    if context[start : start + len(text)] != text:
                        raise ValueError(
                            f"{path}: {where} answers[{k}] text {text!r} is not at answer_start={start} of the context"
                        )
                    texts.append(text)
                    starts.append(start)
                examples.append(
                    {
                        "id": qid,
                        "question": qa["question"],
                        "context": context,
                        "answers": {"text": texts, "answer_start": starts},
                    }
                )
    return examples


def _tokenize_windows(
    examples: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int, doc_stride: int
) -> tuple[Any, int]:
    """Tokenize (question, context) pairs into overlapping windows; returns (encoding, context sequence id)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("QA preprocessing needs a fast tokenizer (offset mapping and overflowing windows)")
    # Some SQuAD questions start with long runs of whitespace that would only waste window space.
    questions = [ex["question"].lstrip() for ex in examples]
    contexts = [ex["context"] for ex in examples]
    # Keep the question next to the padding-free end: question first for right-padding tokenizers.
    pad_on_right = tokenizer.padding_side == "right"
    encoding = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    return encoding, 1 if pad_on_right else 0


def _model_inputs(encoding: Any, i: int) -> dict[str, list[int]]:
    feature = {"input_ids": encoding["input_ids"][i], "attention_mask": encoding["attention_mask"][i]}
    if "token_type_ids" in encoding:
        feature["token_type_ids"] = encoding["token_type_ids"][i]
    return feature


def prepare_train_features(
    examples: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    doc_stride: int = 128,
) -> list[dict[str, Any]]:
    """Training windows with ``start_positions``/``end_positions`` of the first answer (CLS index if cut off)."""
    encoding, context_id = _tokenize_windows(examples, tokenizer, max_length, doc_stride)
    features = []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        input_ids = encoding["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = encoding.sequence_ids(i)
        context_tokens = [t for t, s in enumerate(sequence_ids) if s == context_id]
        answers = examples[encoding["overflow_to_sample_mapping"][i]]["answers"]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])

        start_position = end_position = cls_index
        if context_tokens:
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                # Last context token starting at or before the answer; first one ending at or after it.
                start = first
                while start < last and offsets[start + 1][0] <= start_char:
                    start += 1
                end = last
                while end > first and offsets[end - 1][1] >= end_char:
                    end -= 1
                if start <= end:
                    start_position, end_position = start, end
        labels = {"start_positions": start_position, "end_positions": end_position}
        features.append({**_model_inputs(encoding, i), **labels})
    return features


def prepare_eval_features(
    examples: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    doc_stride: int = 128,
) -> list[dict[str, Any]]:
    """Evaluation windows with ``example_index`` and ``offset_mapping`` (None outside the context)."""
    encoding, context_id = _tokenize_windows(examples, tokenizer, max_length, doc_stride)
    features = []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        sequence_ids = encoding.sequence_ids(i)
        features.append(
            {
                **_model_inputs(encoding, i),
                "example_index": encoding["overflow_to_sample_mapping"][i],
                # None marks question/special tokens so the decoder can never pick them.
                "offset_mapping": [tuple(o) if s == context_id else None for o, s in zip(offsets, sequence_ids)],
            }
        )
    return features


def _as_row(logits: Any, length: int) -> np.ndarray:
    # Accept torch tensors (any dtype/device), numpy arrays or lists; logits may be padded past `length`.
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float64)[:length]


def decode_predictions(
    examples: Sequence[dict[str, Any]],
    features: Sequence[dict[str, Any]],
    start_logits: Sequence[Any],
    end_logits: Sequence[Any],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Best answer text per example id: highest start+end logit over the n-best spans of all its windows.

    Spans are skipped if they leave the context, end before they start, or exceed ``max_answer_length``
    tokens; an example with no valid span gets "".
    """
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(features)} features but {len(start_logits)}/{len(end_logits)} logit rows")
    features_per_example = collections.defaultdict(list)
    for f, feature in enumerate(features):
        features_per_example[feature["example_index"]].append(f)

    predictions: dict[str, str] = {}
    for e, example in enumerate(examples):
        best_score, best_text = -np.inf, ""
        for f in features_per_example.get(e, []):
            offsets = features[f]["offset_mapping"]
            starts = _as_row(start_logits[f], len(offsets))
            ends = _as_row(end_logits[f], len(offsets))
            # Stable sort so equal logits prefer the earlier token, deterministically.
            for s in np.argsort(-starts, kind="stable")[:n_best]:
                for t in np.argsort(-ends, kind="stable")[:n_best]:
                    if offsets[s] is None or offsets[t] is None:
                        continue
                    if t < s or t - s + 1 > max_answer_length:
                        continue
                    score = starts[s] + ends[t]
                    if score > best_score:
                        best_score = score
                        best_text = example["context"][offsets[s][0] : offsets[t][1]]
        predictions[example["id"]] = best_text
    return predictions

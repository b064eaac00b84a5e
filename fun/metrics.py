"""Evaluation metrics of the paper's tasks (paper §4): accuracy for XNLI/XCOPA, F1/EM for XQuAD/MLQA; macro-F1
for classification tasks of your own.

Two QA normalisations, each a faithful re-implementation of an official script:

- ``squad``: SQuAD v1.1 ``evaluate-v1.1.py`` (Rajpurkar et al., 2016) — lower-case, drop ASCII
  ``string.punctuation``, drop English articles, split on whitespace. XQuAD uses this script.
- ``mlqa``: MLQA ``mlqa_evaluation_v1.py`` (Lewis et al., 2020) — punctuation is every Unicode
  category-P character, articles are language-specific, and Chinese is split into single characters
  ("mixed segmentation"). Regexes and control flow below are copied from that script on purpose,
  quirks included (e.g. the Arabic pattern deletes every "ال", not only word-initial ones).

Scores are percentages (0..100). A reference question with no prediction scores 0, as in both scripts.
"""

from __future__ import annotations

import functools
import re
import statistics
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Percentage of positions where ``predictions[i] == labels[i]``."""
    if len(predictions) != len(labels):
        raise ValueError(f"accuracy: {len(predictions)} predictions vs {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy: no labels")
    correct = sum(int(p) == int(y) for p, y in zip(predictions, labels))
    return 100.0 * correct / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Percentage: the mean over classes of each class's F1, over the classes that occur as gold or prediction
    (scikit-learn's `f1_score(average="macro")`)."""
    if len(predictions) != len(labels):
        raise ValueError(f"macro_f1: {len(predictions)} predictions vs {len(labels)} labels")
    if not labels:
        raise ValueError("macro_f1: no labels")
    scores = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        predicted, gold = sum(p == c for p in predictions), sum(y == c for y in labels)
        scores.append(2 * tp / (predicted + gold))  # F1 = 2TP / (2TP + FP + FN); predicted + gold > 0 here
    return 100.0 * sum(scores) / len(scores)


# --------------------------------------------------------------------------- SQuAD v1.1

_SQUAD_PUNCT = frozenset(string.punctuation)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1) over seeds; the std is None for a single value."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def mean_std_cell(values: Sequence[float], with_std: bool = True) -> str:
    """`61.00 ± 1.41` (`61.00 ± –` for one seed, `-` for none): a table cell over seeds."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    if not with_std:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {'–' if std is None else f'{std:.2f}'}"


def normalize_answer_squad(s: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower, strip ASCII punctuation and a/an/the, fix whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _SQUAD_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(prediction_tokens: list[str], ground_truth_tokens: list[str]) -> float:
    # Bag-of-tokens F1 shared verbatim by both official scripts.
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD v1.1 token-level F1 (0..1) between two answer strings."""
    return _token_f1(normalize_answer_squad(prediction).split(), normalize_answer_squad(ground_truth).split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """SQuAD v1.1 exact match after normalisation."""
    return normalize_answer_squad(prediction) == normalize_answer_squad(ground_truth)


def metric_max_over_ground_truths(
    metric_fn: Callable[[str, str], float], prediction: str, ground_truths: Sequence[str]
) -> float:
    """Best score of ``prediction`` against any of the reference answers."""
    if not ground_truths:
        raise ValueError("metric_max_over_ground_truths: no reference answers")
    return max(float(metric_fn(prediction, gt)) for gt in ground_truths)


def _qa_average(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    em_fn: Callable[[str, str], float],
    f1_fn: Callable[[str, str], float],
) -> dict[str, float]:
    # Like the official `evaluate`: iterate over the references, a missing prediction scores 0.
    if not references:
        raise ValueError("qa metrics: no references")
    f1 = exact_match = 0.0
    for qid, ground_truths in references.items():
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        exact_match += metric_max_over_ground_truths(em_fn, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_fn, prediction, ground_truths)
    total = len(references)
    return {"f1": 100.0 * f1 / total, "exact_match": 100.0 * exact_match / total}


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 ``evaluate``: mean F1 and EM (percent) over all reference question ids."""
    return _qa_average(predictions, references, exact_match_score, f1_score)


# --------------------------------------------------------------------------- MLQA v1

MLQA_LANGS = ("en", "es", "hi", "vi", "de", "ar", "zh")
_WHITESPACE_LANGS = ("en", "es", "hi", "vi", "de", "ar")
_MIXED_SEGMENTATION_LANGS = ("zh",)

# Patterns exactly as in mlqa_evaluation_v1.py. The Arabic one is a quirk: "\sال^" can never match
# ("^" after characters), so the pattern removes every occurrence of "ال", even mid-word.
_MLQA_ARTICLES: dict[str, str | None] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "hi": None,  # Hindi has no formal articles
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
    "zh": None,  # Chinese has no formal articles
}


@functools.cache
def mlqa_punctuation() -> frozenset[str]:
    """Every Unicode char of category P* plus ASCII punctuation (built lazily: ~1M lookups)."""
    # range(sys.maxunicode) as in the official script (it skips U+10FFFF, which is not punctuation).
    punct = {chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")}
    return frozenset(punct.union(string.punctuation))


def whitespace_tokenize(text: str) -> list[str]:
    """MLQA's whitespace tokeniser (``str.split``)."""
    return text.split()


def mixed_segmentation(text: str) -> list[str]:
    """MLQA's zh segmentation: CJK (U+4E00..U+9FA5) and punctuation chars are single tokens, the rest splits on spaces."""
    punct = mlqa_punctuation()
    segs_out: list[str] = []
    temp_str = ""
    for char in text:
        if re.search(r"[\u4e00-\u9fa5]", char) or char in punct:
            if temp_str != "":
                segs_out.extend(whitespace_tokenize(temp_str))
                temp_str = ""
            segs_out.append(char)
        else:
            temp_str += char
    if temp_str != "":
        segs_out.extend(whitespace_tokenize(temp_str))
    return segs_out


def _check_mlqa_lang(lang: str) -> None:
    if lang not in _MLQA_ARTICLES:
        raise ValueError(f"MLQA normalisation is defined for {MLQA_LANGS}, got {lang!r}")


def normalize_answer_mlqa(s: str, lang: str) -> str:
    """MLQA ``normalize_answer``: lower, strip Unicode punctuation and ``lang`` articles, re-segment."""
    _check_mlqa_lang(lang)
    punct = mlqa_punctuation()
    text = "".join(ch for ch in s.lower() if ch not in punct)
    pattern = _MLQA_ARTICLES[lang]
    if pattern is not None:
        text = re.sub(pattern, " ", text)
    tokens = whitespace_tokenize(text) if lang in _WHITESPACE_LANGS else mixed_segmentation(text)
    return " ".join(t for t in tokens if t.strip() != "")


def f1_score_mlqa(prediction: str, ground_truth: str, lang: str) -> float:
    """MLQA token-level F1 (0..1); for zh the tokens are single CJK characters."""
    return _token_f1(normalize_answer_mlqa(prediction, lang).split(), normalize_answer_mlqa(ground_truth, lang).split())


def exact_match_score_mlqa(prediction: str, ground_truth: str, lang: str) -> bool:
    """MLQA exact match after language-aware normalisation."""
    return normalize_answer_mlqa(prediction, lang) == normalize_answer_mlqa(ground_truth, lang)


def mlqa_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], lang: str
) -> dict[str, float]:
    """MLQA ``evaluate`` for answer language ``lang``: mean F1 and EM (percent)."""
    _check_mlqa_lang(lang)
    return _qa_average(
        predictions,
        references,
        functools.partial(exact_match_score_mlqa, lang=lang),
        functools.partial(f1_score_mlqa, lang=lang),
    )


def qa_metrics(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    lang: str | None = None,
    style: Literal["squad", "mlqa"] = "squad",
) -> dict[str, float]:
    """F1/EM with the SQuAD v1.1 script (``lang`` ignored) or the MLQA script (``lang`` required)."""
    if style == "squad":
        return squad_metrics(predictions, references)
    if style == "mlqa":
        if lang is None:
            raise ValueError("qa_metrics(style='mlqa') needs the answer language")
        return mlqa_metrics(predictions, references, lang)
    raise ValueError(f"unknown QA metric style {style!r}; expected 'squad' or 'mlqa'")

"""Metric tests: hand-computed F1/EM for the SQuAD v1.1 and MLQA v1 normalisations (fun/metrics.py)."""

import pytest

from fun.metrics import (
    accuracy,
    exact_match_score,
    exact_match_score_mlqa,
    f1_score,
    f1_score_mlqa,
    mixed_segmentation,
    mlqa_metrics,
    normalize_answer_mlqa,
    normalize_answer_squad,
    qa_metrics,
    squad_metrics,
)


def test_accuracy():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 50.0
    assert accuracy([0, 1], [0, 1]) == 100.0
    with pytest.raises(ValueError):
        accuracy([0], [0, 1])


# --------------------------------------------------------------------------- SQuAD v1.1


def test_squad_normalisation():
    assert normalize_answer_squad("The  Cat's, hat!") == "cats hat"
    assert normalize_answer_squad("an apple\tA DAY") == "apple day"
    # Articles only as whole words; ASCII punctuation only (¿ is kept).
    assert normalize_answer_squad("theatre Anthem") == "theatre anthem"
    assert normalize_answer_squad("¿Qué?") == "¿qué"


def test_squad_f1_em_hand_computed():
    # pred {cat, sat} vs gold {cat, sat, down}: P = 1, R = 2/3 -> F1 = 0.8
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert f1_score("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap: P = 1/2
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("the", "a") == 0.0  # both normalise to nothing
    assert exact_match_score("The Eiffel Tower!", "eiffel tower")
    assert not exact_match_score("Eiffel Tower", "Tower")


def test_squad_metrics_max_over_references_and_missing_predictions():
    references = {"q1": ["dog", "black cat"], "q2": ["Paris"], "q3": ["1990"]}
    predictions = {"q1": "cat", "q2": "paris."}  # q3 unanswered -> 0, still counted
    # q1: best F1 is vs "black cat": P = 1, R = 1/2 -> 2/3; EM 0. q2: EM 1, F1 1.
    out = squad_metrics(predictions, references)
    assert out["exact_match"] == pytest.approx(100 * 1 / 3)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1) / 3)


# --------------------------------------------------------------------------- MLQA


def test_mlqa_zh_character_tokens():
    assert mixed_segmentation("2008年北京 奥运会") == ["2008", "年", "北", "京", "奥", "运", "会"]
    assert normalize_answer_mlqa("“北京”大学。", "zh") == "北 京 大 学"
    # pred chars {北,京,大,学} vs gold {北,京}: P = 1/2, R = 1 -> F1 = 2/3
    assert f1_score_mlqa("北京大学", "北京", "zh") == pytest.approx(2 / 3)
    assert not exact_match_score_mlqa("北京大学", "北京", "zh")
    assert exact_match_score_mlqa("北京。", "“北京”", "zh")
    # SQuAD normalisation sees one whitespace token each, so no partial credit.
    assert f1_score("北京大学", "北京") == 0.0
    # Latin runs stay whole tokens: {2008, 年} vs {2008}: P = 1/2, R = 1.
    assert f1_score_mlqa("2008年", "2008", "zh") == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "lang, prediction, gold",
    [
        ("es", "el Real Madrid", "Real Madrid"),
        ("es", "Unas casas", "casas"),
        ("de", "die Deutsche Bank", "Deutsche Bank"),
        ("de", "einem Haus", "Haus"),
        ("vi", "của Việt Nam", "Việt Nam"),
        ("ar", "الكتاب", "كتاب"),
        ("en", "“the cat”", "cat"),  # Unicode quotes are punctuation for MLQA only
    ],
)
def test_mlqa_articles_and_punctuation_vs_squad(lang, prediction, gold):
    assert exact_match_score_mlqa(prediction, gold, lang)
    assert f1_score_mlqa(prediction, gold, lang) == 1.0
    assert not exact_match_score(prediction, gold)


def test_mlqa_language_quirks():
    # The official Arabic pattern removes "ال" anywhere, even inside a word.
    assert normalize_answer_mlqa("مالك", "ar") == "م ك"
    # Hindi: no articles; the danda (category Po) is punctuation.
    assert normalize_answer_mlqa("एक किताब।", "hi") == "एक किताब"
    # Spanish articles are not removed for German and vice versa.
    assert normalize_answer_mlqa("la Casa", "de") == "la casa"
    assert normalize_answer_mlqa("die Casa", "es") == "die casa"
    # Whole words only.
    assert normalize_answer_mlqa("Lasagne", "es") == "lasagne"
    with pytest.raises(ValueError, match="MLQA"):
        normalize_answer_mlqa("x", "el")


def test_mlqa_metrics_and_dispatcher():
    references = {"a": ["el Real Madrid"], "b": ["la casa blanca"]}
    predictions = {"a": "Real Madrid", "b": "casa"}
    # a: EM 1; b: {casa} vs {casa, blanca}: P = 1, R = 1/2 -> 2/3
    expected = {"f1": 100 * (1 + 2 / 3) / 2, "exact_match": 50.0}
    assert mlqa_metrics(predictions, references, "es") == pytest.approx(expected)
    assert qa_metrics(predictions, references, "es", style="mlqa") == pytest.approx(expected)
    # SQuAD style keeps the Spanish articles: a: P = 1, R = 2/3 -> 0.8; b: P = 1, R = 1/3 -> 0.5
    squad = qa_metrics(predictions, references, "es", style="squad")
    assert squad == pytest.approx({"f1": 100 * (0.8 + 0.5) / 2, "exact_match": 0.0})
    with pytest.raises(ValueError):
        qa_metrics(predictions, references, None, style="mlqa")
    with pytest.raises(ValueError):
        qa_metrics(predictions, references, "es", style="bleu")

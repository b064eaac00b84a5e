"""QA pre/post-processing tests (fun/qa.py): windowing labels, n-best decoding, SQuAD JSON reading.

Tokenizers are tiny and built in code (no network); real-data checks read ../shared/data and skip
when it is absent.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from fun.qa import decode_predictions, prepare_eval_features, prepare_train_features, read_squad_json

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} absent")

RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def make_tokenizer(model, padding_side="right", token_type_ids=True):
    """Wrap a `tokenizers` model in a fast HF tokenizer with BERT-style [CLS] q [SEP] c [SEP] pairs."""
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    names = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        padding_side=padding_side,
        model_input_names=names,
    )


def word_tokenizer(words, **kwargs):
    vocab = {w: i for i, w in enumerate(RESERVED + sorted(set(words)))}
    return make_tokenizer(models.WordLevel(vocab, unk_token="[UNK]"), **kwargs)


def char_tokenizer(texts):
    """WordPiece over single characters: every character is a token, so any answer is token-aligned."""
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = {w: i for i, w in enumerate(RESERVED + chars + ["##" + c for c in chars])}
    return make_tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=1000))


def example(context, answer, question="who w1 ?", qid="q0"):
    start = context.index(answer)
    return {"id": qid, "question": question, "context": context, "answers": {"text": [answer], "answer_start": [start]}}


def span_text(ex, feature, offsets=None):
    offsets = offsets or feature["offset_mapping"]
    return ex["context"][offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]]


# --------------------------------------------------------------------------- decode_predictions

# Context "aa bb cc dd ee ff"; words w0..w5 at these character offsets.
CONTEXT = "aa bb cc dd ee ff"
WORDS = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14), (15, 17)]
NEG = -100.0


def hand_feature(words, example_index=0):
    """[CLS] q [SEP] <context words> [SEP]; returns the feature and a map word -> token position."""
    offsets = [None, None, None] + [WORDS[w] for w in words] + [None]
    return {"example_index": example_index, "offset_mapping": offsets}, {w: 3 + k for k, w in enumerate(words)}


def logits(length, peaks):
    row = np.full(length, NEG)
    for position, value in peaks.items():
        row[position] = value
    return row


EXAMPLES = [{"id": "x", "context": CONTEXT}]


def test_decode_answer_at_window_edge():
    # Windows w0..w3 and w2..w5 (stride 2); the answer "cc dd" closes window 0 and opens window 1.
    f0, pos0 = hand_feature([0, 1, 2, 3])
    f1, pos1 = hand_feature([2, 3, 4, 5])
    starts = [logits(8, {pos0[2]: 5.0}), logits(8, {pos1[2]: 4.0})]
    ends = [logits(8, {pos0[3]: 5.0}), logits(8, {pos1[4]: 4.5})]
    assert decode_predictions(EXAMPLES, [f0, f1], starts, ends) == {"x": "cc dd"}


def test_decode_answer_spanning_two_windows_uses_window_where_it_fits():
    # Answer "dd ee": window 0 holds only "dd" (its best start), window 1 holds the whole answer.
    f0, pos0 = hand_feature([0, 1, 2, 3])
    f1, pos1 = hand_feature([2, 3, 4, 5])
    # Window 0: strongest start anywhere (10 at dd) but its best end is dd itself (2) -> 12.
    # Window 1: start dd 7 + end ee 7 -> 14, so the full answer from window 1 wins.
    starts = [logits(8, {pos0[3]: 10.0}), logits(8, {pos1[3]: 7.0})]
    ends = [logits(8, {pos0[3]: 2.0}), logits(8, {pos1[4]: 7.0})]
    assert decode_predictions(EXAMPLES, [f0, f1], starts, ends) == {"x": "dd ee"}


def test_decode_respects_max_answer_length():
    f, pos = hand_feature([0, 1, 2, 3, 4, 5])
    start = logits(10, {pos[0]: 10.0, pos[4]: 1.0})
    end = logits(10, {pos[5]: 10.0, pos[1]: 2.0})
    # (w0, w5) = 20 is 6 tokens long; the best span of <= 3 tokens is (w0, w1) = 12 over (w4, w5) = 11.
    assert decode_predictions(EXAMPLES, [f], [start], [end], max_answer_length=3) == {"x": "aa bb"}
    assert decode_predictions(EXAMPLES, [f], [start], [end], max_answer_length=6) == {"x": "aa bb cc dd ee ff"}
    assert decode_predictions(EXAMPLES, [f], [start], [end], max_answer_length=0) == {"x": ""}


def test_decode_skips_end_before_start_and_special_tokens():
    f, pos = hand_feature([0, 1, 2, 3, 4, 5])
    # [CLS] (position 0) has the largest logits but is outside the context.
    start = logits(10, {0: 50.0, pos[4]: 10.0})
    end = logits(10, {0: 50.0, pos[1]: 10.0, pos[5]: 3.0})
    # (w4, w1) = 20 ends before it starts; (w4, w5) = 13 is the best valid span.
    assert decode_predictions(EXAMPLES, [f], [start], [end]) == {"x": "ee ff"}
    # With n_best = 1 only [CLS] is considered -> nothing valid.
    assert decode_predictions(EXAMPLES, [f], [start], [end], n_best=1) == {"x": ""}
    # With n_best = 2 only (w4, w1) and special tokens -> nothing valid.
    start2 = logits(10, {0: 50.0, pos[4]: 10.0})
    end2 = logits(10, {0: 50.0, pos[1]: 10.0})
    assert decode_predictions(EXAMPLES, [f], [start2], [end2], n_best=2) == {"x": ""}


def test_decode_accepts_padded_torch_logits_and_examples_without_features():
    f, pos = hand_feature([0, 1, 2])
    examples = EXAMPLES + [{"id": "y", "context": "unused"}]
    start = torch.full((2, 12), NEG, dtype=torch.bfloat16)  # batch padded past the feature length
    end = start.clone()
    start[0, pos[1]], end[0, pos[2]] = 5.0, 5.0
    start[0, 10], end[0, 11] = 99.0, 99.0  # padding positions beyond the feature are never read
    assert decode_predictions(examples, [f], start[:1], end[:1]) == {"x": "bb cc", "y": ""}


# --------------------------------------------------------------------------- windowing


LONG_CONTEXT = " ".join(f"w{i}" for i in range(12))  # "w0 w1 ... w11"


@pytest.fixture
def tok():
    return word_tokenizer(["who", "?"] + [f"w{i}" for i in range(12)])


def test_train_features_windows_and_labels(tok):
    ex = example(LONG_CONTEXT, "w4 w5")
    # 3 question tokens + 3 specials leave 4 context tokens per window; 2 of them overlap.
    features = prepare_train_features([ex], tok, max_length=10, doc_stride=2)
    eval_features = prepare_eval_features([ex], tok, max_length=10, doc_stride=2)
    assert len(features) == len(eval_features) == 5  # windows start at w0, w2, w4, w6, w8
    assert all(len(f["input_ids"]) <= 10 for f in features)
    assert all(set(f) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
               for f in features)
    labelled = []
    for f, ef in zip(features, eval_features):
        assert f["input_ids"] == ef["input_ids"]
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0
            continue
        labelled.append(span_text(ex, f, ef["offset_mapping"]))
    # Window w2..w5 (answer at its end) and window w4..w7 (answer at its start) contain the answer.
    assert labelled == ["w4 w5", "w4 w5"]
    assert features[0]["start_positions"] == features[0]["end_positions"] == 0  # window w0..w3


def test_train_label_one_token_answer_on_last_context_token(tok):
    # "w3" is the last context token of the first window: run_qa.py would walk past it into [SEP].
    ex = example(LONG_CONTEXT, "w3")
    first = prepare_train_features([ex], tok, max_length=10, doc_stride=2)[0]
    assert tok.convert_ids_to_tokens(first["input_ids"])[first["start_positions"]] == "w3"
    assert first["start_positions"] == first["end_positions"] == 8


def test_eval_features_offsets_and_round_trip(tok):
    examples = [example(LONG_CONTEXT, "w9 w10 w11", qid="a"), example("w1 w2 w3", "w2", qid="b")]
    train = prepare_train_features(examples, tok, max_length=10, doc_stride=2)
    features = prepare_eval_features(examples, tok, max_length=10, doc_stride=2)
    assert [f["example_index"] for f in features] == [0, 0, 0, 0, 0, 1]
    # Question and special tokens carry no offsets.
    assert features[-1]["offset_mapping"] == [None, None, None, None, None, (0, 2), (3, 5), (6, 8), None]
    # Logits peaked at the training labels decode back to the gold answers.
    starts = [logits(len(f["input_ids"]), {f["start_positions"]: 5.0} if f["start_positions"] else {}) for f in train]
    ends = [logits(len(f["input_ids"]), {f["end_positions"]: 5.0} if f["end_positions"] else {}) for f in train]
    assert decode_predictions(examples, features, starts, ends) == {"a": "w9 w10 w11", "b": "w2"}


def test_token_type_ids_only_when_tokenizer_returns_them():
    tok = word_tokenizer(["who", "w1"], token_type_ids=False)
    features = prepare_train_features([example("w1 w1", "w1")], tok)
    assert "token_type_ids" not in features[0]
    assert set(features[0]) == {"input_ids", "attention_mask", "start_positions", "end_positions"}


def test_left_padding_tokenizer_puts_context_first():
    words = ["who", "?"] + [f"w{i}" for i in range(12)]
    tok = word_tokenizer(words, padding_side="left")
    ex = example(LONG_CONTEXT, "w6")
    features = prepare_train_features([ex], tok, max_length=10, doc_stride=2)
    eval_features = prepare_eval_features([ex], tok, max_length=10, doc_stride=2)
    hits = [span_text(ex, f, ef["offset_mapping"]) for f, ef in zip(features, eval_features) if f["start_positions"]]
    assert hits and set(hits) == {"w6"}
    assert tok.convert_ids_to_tokens(features[0]["input_ids"])[1] == "w0"  # context comes first


# --------------------------------------------------------------------------- read_squad_json


def write_json(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def squad_obj(qas, context="Paris is in France."):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_read_squad_json_roundtrip(tmp_path):
    qa = {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}
    examples = read_squad_json(write_json(tmp_path, squad_obj([qa]), "ok.json"))
    assert examples == [{
        "id": "q1", "question": "Where?", "context": "Paris is in France.",
        "answers": {"text": ["France"], "answer_start": [12]},
    }]


@pytest.mark.parametrize(
    "content, where",
    [
        ("{not json", "not valid JSON"),
        ({"version": "1.1"}, "'data' list"),
        ({"data": [{"title": "t"}]}, r"data\[0\] has no 'paragraphs'"),
        (squad_obj([{"id": "q1", "question": "Q", "answers": [{"text": "Paris", "answer_start": 0}]},
                    {"id": "q2", "answers": [{"text": "Paris", "answer_start": 0}]}]),
         r"data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id='q2'\)"),
        (squad_obj([{"id": "q3", "question": "Q", "answers": []}]), r"qas\[0\] \(id='q3'\).*non-empty"),
        (squad_obj([{"id": "q4", "question": "Q", "answers": [{"text": "France", "answer_start": 3}]}]),
         r"id='q4'.*answers\[0\].*not at answer_start=3"),
    ],
)
def test_read_squad_json_malformed(tmp_path, content, where):
    path = write_json(tmp_path, content)
    with pytest.raises(ValueError, match=where) as info:
        read_squad_json(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- real data


@needs_data
def test_read_real_xquad_and_squad_dev():
    xquad = read_squad_json(DATA / "xquad" / "xquad.de.json")
    squad = read_squad_json(DATA / "squad" / "dev-v1.1.json")
    assert len(xquad) == 1190 and len(squad) == 10570  # sizes stated in shared/data/README.md
    for examples in (xquad, squad):
        assert len({ex["id"] for ex in examples}) == len(examples)
        for ex in examples[:200]:
            for text, start in zip(ex["answers"]["text"], ex["answers"]["answer_start"]):
                assert ex["context"][start : start + len(text)] == text
    # XQuAD is a translation of SQuAD dev questions: the ids are shared.
    assert {ex["id"] for ex in xquad} <= {ex["id"] for ex in squad}


@pytest.fixture(scope="module")
def squad_slice():
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} absent")
    examples = read_squad_json(DATA / "squad" / "dev-v1.1.json")
    return [ex for ex in examples if len(ex["question"]) < 100][:60]


def check_labels(examples, features, eval_features, exact):
    found = set()
    for f, ef in zip(features, eval_features):
        ex = examples[ef["example_index"]]
        answer = ex["answers"]["text"][0]
        start_char = ex["answers"]["answer_start"][0]
        end_char = start_char + len(answer)
        offsets = ef["offset_mapping"]
        context = [o for o in offsets if o is not None]
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0
            # CLS only when the answer is not wholly inside this window's context.
            assert not (context[0][0] <= start_char and context[-1][1] >= end_char)
            continue
        s, e = f["start_positions"], f["end_positions"]
        assert offsets[s] is not None and offsets[e] is not None and s <= e
        decoded = ex["context"][offsets[s][0] : offsets[e][1]]
        if exact:
            assert decoded == answer
        else:  # word tokens: the smallest token span covering the answer
            assert offsets[s][0] <= start_char and offsets[e][1] >= end_char
            assert offsets[s][1] > start_char and offsets[e][0] < end_char  # dropping either end loses answer text
        found.add(ef["example_index"])
    assert found == set(range(len(examples)))  # every answer is labelled in at least one window


@needs_data
def test_train_features_on_real_squad_char_tokens(squad_slice):
    tok = char_tokenizer([ex["context"] + ex["question"] for ex in squad_slice])
    features = prepare_train_features(squad_slice, tok, max_length=256, doc_stride=64)
    eval_features = prepare_eval_features(squad_slice, tok, max_length=256, doc_stride=64)
    assert len(features) > 2 * len(squad_slice)  # char tokens: several windows per context
    assert sum(f["start_positions"] == 0 for f in features) > 0
    check_labels(squad_slice, features, eval_features, exact=True)


@needs_data
def test_train_features_on_real_squad_word_tokens(squad_slice):
    words = [w for ex in squad_slice[::2] for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(ex["context"])]
    tok = word_tokenizer([w for w, _ in words])  # half the contexts' words: the rest are [UNK], offsets still exact
    features = prepare_train_features(squad_slice, tok, max_length=64, doc_stride=16)
    eval_features = prepare_eval_features(squad_slice, tok, max_length=64, doc_stride=16)
    check_labels(squad_slice, features, eval_features, exact=False)

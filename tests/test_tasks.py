"""Tasks behind the one interface (fun/tasks): loaders on real and synthetic files, features, defaults.

Real-data checks read ../shared/data (tests/tiny.py: DATA) and skip when it is absent.
"""

import json
from pathlib import Path

import pytest
import torch

import train
from fun.adapters import AdapterSet
from fun.config import resolve
from fun.data import collate
from fun.model import AdapterModel
from fun.qa import prepare_eval_features
from fun.tasks import TASKS
from fun.tasks.extractive_qa import clip_questions
from tiny import DATA, E5, LONG, QA_PARAGRAPHS, make_tokenizer, squad_json, tiny_encoder, write_copa, write_squad

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} absent (fresh clone)")
needs_e5 = pytest.mark.skipif(not E5.is_dir(), reason=f"model {E5} absent (fresh clone)")

XCOPA, XQUAD, MLQA = TASKS["xcopa"], TASKS["xquad"], TASKS["mlqa"]


# --- defaults (paper Table 3) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("task, model, schedule, lr, epochs, k", [
    ("xcopa", "google-bert/bert-base-multilingual-cased", "standard", 1e-4, 500, 50),
    ("xcopa", "google-bert/bert-base-multilingual-cased", "gu", 1e-5, 5000, 50),
    ("xcopa", "FacebookAI/xlm-roberta-base", "fun", 1e-5, 5000, 1000),
    ("xcopa", "xlm-roberta-base", "lpft", 1e-5, 5000, 800),     # the old short id: same family
    ("xquad", "bert-base-multilingual-cased", "gu", 5e-4, 5, 800),
    ("xquad", "FacebookAI/xlm-roberta-base", "standard", 2e-4, 15, 800),
    ("mlqa", "FacebookAI/xlm-roberta-base", "fun", 5e-4, 15, 100),
    ("mlqa", "FacebookAI/xlm-roberta-base", "rand", 5e-4, 15, 800),  # rand/order/gu-rev take GU's k
    ("xquad", "microsoft/mdeberta-v3-base", "fun", 5e-4, 5, 800),    # no paper values: mBERT's
    ("xnli", "google-bert/bert-base-multilingual-cased", "fun", 5e-4, 15, 50),
])
def test_paper_defaults_resolve_per_model_family(task, model, schedule, lr, epochs, k):
    cfg = resolve(train.parse_config(["--task", task, "--model", model, "--schedule", schedule, "--output-dir", "x"]))
    assert (cfg.lr, cfg.epochs, cfg.k) == (lr, epochs, k)
    d = TASKS[task].defaults
    assert cfg.batch_size == d.batch_size and cfg.max_length == d.max_length
    assert cfg.lr_schedule == ("linear" if task == "xnli" else "constant")  # App. B: constant for SQuAD and COPA


def test_flags_override_defaults():
    cfg = resolve(train.parse_config(
        ["--task", "xcopa", "--schedule", "gu", "--lr", "3e-4", "--epochs", "2", "--k", "7", "--output-dir", "x"]))
    assert (cfg.lr, cfg.epochs, cfg.k) == (3e-4, 2, 7)


# --- XCOPA ---------------------------------------------------------------------------------------------------

@needs_data
def test_xcopa_real_files():
    assert len(XCOPA.load("train", str(DATA / "copa" / "train.jsonl"))) == 400
    dev = XCOPA.load("dev", str(DATA / "copa" / "val.jsonl"))
    assert len(dev) == 100 and {e["question"] for e in dev} == {"cause", "effect"}
    assert len(XCOPA.load("test", str(DATA / "copa"), "en")) == 500  # COPA dir layout for English
    for lang in XCOPA.languages:  # official layout <dir>/<lang>/{val,test}.<lang>.jsonl, all 11 present
        test = XCOPA.load("test", str(DATA / "xcopa"), lang)
        assert len(test) == 500 and {e["label"] for e in test} == {0, 1}
    assert len(XCOPA.load("dev", str(DATA / "xcopa"), "qu")) == 100


@needs_data
@needs_e5
def test_xcopa_features_on_real_data():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(E5))
    split = XCOPA.split("test", tok, 64, str(DATA / "xcopa"), "it", max_examples=5)
    f, e = split.features[0], split.examples[0]
    assert len(f["input_ids"]) == 2 and f["labels"] == e["label"]
    first = tok.decode(f["input_ids"][0], skip_special_tokens=True)
    question = "What was the cause?" if e["question"] == "cause" else "What happened as a result?"
    assert first.startswith(e["premise"]) and question in first and first.endswith(e["choice1"])


def test_xcopa_synthetic_features_shape_and_head(tmp_path):
    tok = make_tokenizer()
    split = XCOPA.split("train", tok, 32, str(write_copa(tmp_path / "train.jsonl", 6)))
    for f, e in zip(split.features, split.examples):
        ids = f["input_ids"]
        assert len(ids) == 2 and len(f["attention_mask"]) == 2 and f["labels"] == e["label"]  # (2, T) lists
        sep = ids[0].index(tok.sep_token_id)
        assert ids[0][:sep + 1] == ids[1][:sep + 1]  # same premise + question, then choice1 vs choice2
        assert ids[0][sep + 1:] == tok(e["choice1"], add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    batch = collate(split.features[:4], tok.pad_token_id)
    assert batch["input_ids"].shape[:2] == (4, 2) and batch["labels"].shape == (4,)
    enc = tiny_encoder(vocab_size=len(tok))
    model = AdapterModel(enc, XCOPA.make_head(32, 0.0), AdapterSet(32, 4))
    assert model(batch).shape == (4, 1, 2)  # (B, H=1, K=choices)
    # score: the argmax choice per example against the labels
    logits = [torch.tensor([[0.0, 1.0]]) if e["label"] else torch.tensor([[1.0, 0.0]]) for e in split.examples]
    assert XCOPA.score(split, logits) == {"accuracy": 100.0}
    assert XCOPA.score(split, [-x for x in logits]) == {"accuracy": 0.0}


def test_xcopa_question_prompts(tmp_path):
    tok = make_tokenizer(["What", "happened", "as", "result", "The", "He"])
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(dict(premise="He ran .", choice1="a", choice2="no", question="effect", label=1)) + "\n")
    f = XCOPA.split("test", tok, 32, str(path)).features[0]
    words = tok.convert_ids_to_tokens(f["input_ids"][1])
    assert words == ["[CLS]", "He", "ran", ".", "What", "happened", "as", "a", "result", "?", "[SEP]", "no", "[SEP]"]


def test_xcopa_directory_layouts(tmp_path):
    write_copa(tmp_path / "nested" / "et" / "test.et.jsonl", 3)
    write_copa(tmp_path / "flat" / "val.qu.jsonl", 2)
    write_copa(tmp_path / "copa" / "val.jsonl", 4)
    assert len(XCOPA.load("test", str(tmp_path / "nested"), "et")) == 3
    assert len(XCOPA.load("dev", str(tmp_path / "flat"), "qu")) == 2
    assert len(XCOPA.load("dev", str(tmp_path / "copa"), "en")) == 4
    assert XCOPA.local_file("test", tmp_path / "nested", "sw") == tmp_path / "nested" / "sw" / "test.sw.jsonl"


@pytest.mark.parametrize("line, message", [
    ('{"premise": "a", "choice1": "b"', "malformed JSON"),
    ('{"premise": "a", "choice1": "b", "question": "cause", "label": 0}', "'choice2'"),
    ('{"premise": "a", "choice1": "b", "choice2": "c", "question": "why", "label": 0}', "'cause' or 'effect'"),
    ('{"premise": "a", "choice1": "b", "choice2": "c", "question": "cause", "label": 2}', "expected 0"),
    ('{"premise": "a", "choice1": "b", "choice2": "c", "question": "cause", "label": -1}', "expected 0"),
])
def test_xcopa_malformed_row_names_file_and_line(tmp_path, line, message):
    path = write_copa(tmp_path / "bad.jsonl", 2)
    path.write_text(path.read_text() + "\n" + line + "\n")  # a blank line 3, the bad row on line 4
    with pytest.raises(ValueError, match=f"{path}:4: .*{message}"):
        XCOPA.load("train", str(path))


def test_hub_loading_and_offline_error(monkeypatch):
    import datasets
    from fun.hub import HubError
    calls = []

    def fake(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        if path == "google/xquad":
            raise ConnectionError("Couldn't reach 'google/xquad' on the Hub (LocalEntryNotFoundError)")
        if path in ("aps/super_glue", "cambridgeltl/xcopa"):
            return [dict(premise="p", choice1="a", choice2="b", question="cause", label=1, idx=0)]
        return [dict(id="x", question="q", context="c d", title="t", answers={"text": ["d"], "answer_start": [2]})]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert XCOPA.load("train")[0]["label"] == 1 and XCOPA.load("test", None, "qu")[0]["premise"] == "p"
    assert MLQA.load("test", None, "de")[0]["normalization"] == "mlqa"
    assert MLQA.load("dev")[0]["normalization"] == "squad"  # the English dev set is SQuAD's
    assert calls == [("aps/super_glue", None, "train", {"revision": "refs/convert/parquet", "data_dir": "copa"}),
                     ("cambridgeltl/xcopa", "qu", "test", {}), ("google/xtreme", "MLQA.de.de", "test", {}),
                     ("rajpurkar/squad", "plain_text", "validation", {})]
    with pytest.raises(HubError, match="google/xquad config xquad.de split validation: no network"):
        XQUAD.load("test", None, "de")
    with pytest.raises(ValueError, match="no labels on the Hub"):
        XCOPA.load("test", None, "en")


# --- XQuAD / MLQA ----------------------------------------------------------------------------------------------

@needs_data
def test_qa_real_files():
    assert len(XQUAD.load("test", str(DATA / "xquad"), "de")) == 1190
    squad = XQUAD.load("dev", str(DATA / "squad" / "dev-v1.1.json"))
    assert len(squad) == 10570 and squad[0]["normalization"] == "squad"
    assert all(XQUAD.local_file("test", DATA / "xquad", lang).exists() for lang in XQUAD.languages)


@needs_data
@needs_e5
def test_qa_training_labels_round_trip_on_real_data():
    """labels = [start, end] of a training window point at exactly the first answer's characters."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(E5))
    examples = XQUAD.load("train", str(DATA / "squad" / "dev-v1.1-minus-xquad.json"))[:60]
    train_features = XQUAD.encode(examples, tok, 128, train=True)
    eval_features = prepare_eval_features(clip_questions(examples, tok, 64), tok, 128, XQUAD.stride(128))
    assert len(train_features) == len(eval_features) > len(examples)  # long contexts → several windows
    found, exact = set(), 0
    for tf, ef in zip(train_features, eval_features):
        start, end = tf["labels"]
        e = examples[ef["example_index"]]
        if start == 0:  # answer outside this window: the CLS index
            assert end == 0
            continue
        offsets, a0 = ef["offset_mapping"], e["answers"]["answer_start"][0]
        a1 = a0 + len(e["answers"]["text"][0])
        # the smallest token span covering the answer (a token may run past it, e.g. "2016," for "2016")
        assert offsets[start][0] <= a0 < offsets[start][1] and offsets[end][0] < a1 <= offsets[end][1]
        exact += e["context"][offsets[start][0]:offsets[end][1]] == e["answers"]["text"][0]
        found.add(ef["example_index"])
    assert len(found) == len(examples)  # every answer is inside at least one window
    assert exact >= 0.8 * len(found)


def test_qa_synthetic_training_features_round_trip(tmp_path):
    tok = make_tokenizer()
    path = write_squad(tmp_path / "train.json", QA_PARAGRAPHS)
    split = XQUAD.split("train", tok, 48, str(path))
    assert XQUAD.stride(48) == 16 and XQUAD.stride(384) == 128
    assert len(split.features) > len(split.examples)  # LONG needs several windows
    answers = set()
    for f in split.features:
        start, end = f["labels"]
        if start:
            answers.add(" ".join(tok.convert_ids_to_tokens(f["input_ids"][start:end + 1])))
            assert start > f["input_ids"].index(tok.sep_token_id)  # inside the context, after [SEP]
    assert answers == {"dog ran fast", "the man", "it is a good day"}
    batch = collate(split.features[:3], tok.pad_token_id)
    assert batch["labels"].shape == (3, 2)


def perfect_logits(split, tok) -> list[torch.Tensor]:
    """(2, T) logits peaked at the gold span wherever the window holds it (otherwise at CLS)."""
    out = []
    for f in split.features:
        e = split.examples[f["example_index"]]
        a0 = e["answers"]["answer_start"][0]
        a1 = a0 + len(e["answers"]["text"][0])
        logits = torch.zeros(2, len(f["input_ids"]))
        for t, o in enumerate(f["offset_mapping"]):
            if o is not None and o[0] == a0:
                logits[0, t] = 10
            if o is not None and o[1] == a1:
                logits[1, t] = 10
        out.append(logits)
    return out


def test_qa_score_decodes_spans_across_windows(tmp_path):
    tok = make_tokenizer()
    split = XQUAD.split("dev", tok, 48, str(write_squad(tmp_path / "dev.json", QA_PARAGRAPHS)))
    assert {"example_index", "offset_mapping"} <= set(split.features[0])
    assert XQUAD.score(split, perfect_logits(split, tok)) == {"f1": 100.0, "exact_match": 100.0}
    empty = [torch.zeros(2, len(f["input_ids"])) for f in split.features]  # ties → first context token
    assert XQUAD.score(split, empty)["exact_match"] == 0.0


def test_mlqa_uses_language_aware_normalisation(tmp_path):
    """German articles: "der Hund" vs gold "Hund" is exact under MLQA's de rules, not under SQuAD's."""
    tok = make_tokenizer(["der", "Hund", "bellt", "Was", "?"])
    paragraphs = [("der Hund bellt", [("d1", "Was bellt ?", "Hund")])]
    write_squad(tmp_path / "mlqa" / "test-context-de-question-de.json", paragraphs)
    write_squad(tmp_path / "xquad" / "xquad.de.json", paragraphs)
    scores = {}
    for task, sub in ((MLQA, "mlqa"), (XQUAD, "xquad")):
        split = task.split("test", tok, 32, str(tmp_path / sub), "de")
        words = tok.convert_ids_to_tokens(split.features[0]["input_ids"])
        start = words.index("der")
        logits = torch.zeros(2, len(words))
        logits[0, start] = logits[1, start + 1] = 10  # predict "der Hund"
        scores[sub] = task.score(split, [logits])
    assert scores["mlqa"]["exact_match"] == 100.0
    assert scores["xquad"]["exact_match"] == 0.0 and scores["xquad"]["f1"] == pytest.approx(200 / 3)


def test_mlqa_directory_layouts(tmp_path):
    write_squad(tmp_path / "flat" / "test-context-zh-question-zh.json", QA_PARAGRAPHS[1:])
    write_squad(tmp_path / "official" / "dev" / "dev-context-ar-question-ar.json", QA_PARAGRAPHS)
    assert len(MLQA.load("test", str(tmp_path / "flat"), "zh")) == 1
    assert len(MLQA.load("dev", str(tmp_path / "official"), "ar")) == 3
    assert MLQA.load("dev", str(tmp_path / "official" / "dev" / "dev-context-ar-question-ar.json"))[0][
        "normalization"] == "squad"  # a --dev-file is SQuAD dev
    with pytest.raises(ValueError, match="only a test set"):
        XQUAD.load("dev", str(tmp_path / "flat"), "de")


def test_qa_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n{"paragraphs": [}\n]}')
    with pytest.raises(ValueError, match=f"{bad}.*line 2"):
        XQUAD.load("train", str(bad))
    data = squad_json(QA_PARAGRAPHS)
    data["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] = 0
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{bad}: .*paragraphs\\[1\\].qas\\[0\\] \\(id='q3'\\).*not at answer_start"):
        XQUAD.load("train", str(bad))
    with pytest.raises(FileNotFoundError, match="no such file"):
        XQUAD.load("test", str(tmp_path), "de")


def test_qa_long_questions_and_too_short_windows(tmp_path):
    tok = make_tokenizer()
    question = " ".join(["what"] * 40) + " ?"
    path = write_squad(tmp_path / "q.json", [(LONG, [("q1", question, "dog ran fast")])])
    split = XQUAD.split("train", tok, 48, str(path))  # the question is cut to 24 tokens; windows still work
    assert all(len(f["input_ids"]) <= 48 for f in split.features)
    assert any(f["labels"] != [0, 0] for f in split.features)
    with pytest.raises(ValueError, match="max length 6 is too short"):
        XQUAD.split("train", tok, 6, str(path))

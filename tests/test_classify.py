"""A classification task of your own (`--task classify`): files, labels, the same path as XNLI bit for bit, evaluation
from config.json alone, several runs in one table, sweeps (Hub datasets: tests/test_classify_hub.py).

Real-data checks read ../shared/data (tests/tiny.py: DATA) and skip when it is absent.
"""

import json
import signal
from pathlib import Path

import pytest
import torch

import evaluate
import fisher
import train
from fun.data import read_table
from fun.metrics import accuracy, macro_f1
from fun.tasks import TASKS, build_task
from tiny import DATA, assert_same_run, kill_when, make_tokenizer, train_cli

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} absent (fresh clone)")

XNLI_LABELS = ["entailment", "neutral", "contradiction"]
PAIR = ["--text-columns", "premise,hypothesis"]


def task(**settings):
    return build_task("classify", {"text_columns": ["text"], **settings})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sentiment(path: Path, n: int, seed: int, fmt: str = "csv", lang: str = "en") -> Path:
    """A learnable one-text task with string labels: the label is in the words ("good" → pos, "bad" → neg)."""
    g = torch.Generator().manual_seed(seed)
    words = "the a man woman dog cat went home ran fast day night".split()
    rows = []
    for i in range(n):
        label = ("neg", "pos", "mixed")[int(torch.randint(3, (1,), generator=g))]
        cue = {"pos": "good happy", "neg": "bad sad", "mixed": "good bad"}[label]
        text = " ".join(words[int(j)] for j in torch.randint(len(words), (5,), generator=g)) + " " + cue
        rows.append((f"{lang}-{i}", text, label))
    if fmt == "csv":
        return write(path, "id,text,label\n" + "".join(f'{i},"{t}, it was",{l}\n' for i, t, l in rows))
    if fmt == "tsv":
        return write(path, "".join(f"{t}\t{l}\n" for _, t, l in rows))  # no header: text, then label
    return write(path, "".join(json.dumps(dict(id=i, text=t, label=l)) + "\n" for i, t, l in rows))


# --- files and labels ---------------------------------------------------------------------------------------------

def test_read_table_formats_and_errors(tmp_path):
    csv = write(tmp_path / "a.csv", 'text,label,extra\n"one, with comma",x,1\n\n"two\nlines",y,2\n')
    assert list(read_table(csv, ["text", "label"])) == [
        (2, {"text": "one, with comma", "label": "x", "extra": "1"}), (4, {"text": "two\nlines", "label": "y", "extra": "2"})]
    tsv = write(tmp_path / "a.tsv", "a\tb\tx\nc\td\ty\n")  # no header: the columns by position
    assert [row for _, row in read_table(tsv, ["s1", "s2", "label"])][1] == {"s1": "c", "s2": "d", "label": "y"}
    with pytest.raises(ValueError, match=f"{tsv}:2: 2 cells; expected 3, as without a header: s1, s2, label"):
        list(read_table(write(tsv, "a\tb\tx\nc\td\n"), ["s1", "s2", "label"]))
    with pytest.raises(ValueError, match=f"{csv}:3: 1 cells; expected 2, as in the header on line 1"):
        list(read_table(write(csv, "text,label\nok,x\nbroken\n"), ["text", "label"]))
    jsonl = write(tmp_path / "a.jsonl", '{"text": "t", "label": 1}\n{"text": "u"}\n')
    with pytest.raises(ValueError, match=f"{jsonl}:2: no key 'label'"):
        list(read_table(jsonl, ["text", "label"]))


def test_macro_f1_by_hand():
    # F1 = 2TP / (2TP + FP + FN). Class 0: TP 1, FP 1, FN 1 → 1/2; class 1: TP 2, FP 1, FN 1 → 2/3; class 2: TP 0 → 0
    predictions, labels = [0, 1, 1, 0, 2, 1], [0, 1, 1, 1, 0, 2]
    assert macro_f1(predictions, labels) == pytest.approx(100 * (1 / 2 + 2 / 3 + 0) / 3)
    assert macro_f1([1, 1], [1, 1]) == 100.0 and accuracy([1, 0], [1, 1]) == 50.0


def test_labels_found_sorted_given_in_order_and_class_ids(tmp_path):
    data = write(tmp_path / "t.jsonl", "".join(json.dumps(dict(text="x", label=l)) + "\n" for l in (10, 2, 9, 2)))
    found = task(train_file=str(data))
    assert found.label_set() == ("2", "9", "10")  # integers sort numerically
    assert [e["label"] for e in found.load("train", str(data))] == [2, 0, 1, 0]
    given = task(labels=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
    assert [e["label"] for e in given.load("train", str(data))] == [10, 2, 9, 2]  # an integer is a class id
    named = task(labels=["b", "a"])
    assert [e["label"] for e in named.load("test", str(write(tmp_path / "n.tsv", "x\ta\ny\tb\nz\t0\n")))] == [1, 0, 0]
    with pytest.raises(ValueError, match=r"c.tsv:2: label 'c' is not one of the labels b, a$"):
        named.load("test", str(write(tmp_path / "c.tsv", "x\ta\ny\tc\n")))
    with pytest.raises(ValueError, match=r"label '2' is not one of the labels b, a$"):
        named.load("test", str(write(tmp_path / "two.tsv", "x\t2\n")))
    with pytest.raises(ValueError, match="label 'yes' is not one of the labels 2, 9, 10; if the training data stores "
                                         "class ids, name the classes in order with --labels"):
        found.load("dev", str(write(tmp_path / "d.tsv", "text\tlabel\nx\tyes\n")))


def test_rows_of_a_multilingual_file_and_ids(tmp_path):
    path = write(tmp_path / "all.csv", "language,uid,text,label\nen,a1,x,p\nde,b1,y,q\nde,b2,z,p\n")
    t = task(labels=["p", "q"], id_column="uid")
    assert t.load("test", str(path), "de") == [dict(line=3, id="b1", texts=["y"], label=1),
                                               dict(line=4, id="b2", texts=["z"], label=0)]
    with pytest.raises(ValueError, match="no rows of language 'fr'"):
        t.load("test", str(path), "fr")


def test_features_equal_xnli_features(nli_files):
    tok = make_tokenizer()
    mine = build_task("classify", {"text_columns": ["premise", "hypothesis"], "labels": XNLI_LABELS})
    for split, path in (("train", nli_files[0]), ("dev", nli_files[1])):
        a = TASKS["xnli"].split(split, tok, 32, str(path))
        b = mine.split(split, tok, 32, str(path))
        assert a.features == b.features and len(a.features) > 20


# --- the same path as XNLI, bit for bit -------------------------------------------------------------------------

def run_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_same_training(a: Path, b: Path) -> None:
    """Identical training losses, tr(F) (the logged curve and FUN's choices) and English dev accuracy."""
    la, lb = run_log(a), run_log(b)
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r.get("fisher") for r in la] == [r.get("fisher") for r in lb] and any("fisher" in r for r in la)
    assert [r["dev"]["accuracy"] for r in la if "dev" in r] == [r["dev"]["accuracy"] for r in lb if "dev" in r]
    assert (a / "schedule.json").read_text() == (b / "schedule.json").read_text()  # FUN's tr(F) scores included
    sa, sb = (torch.load(d / "checkpoint.pt", weights_only=False)["parts"]["task"] for d in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


FUN = ["--schedule", "fun", "--k", "3", "--fisher-batches", "2", "--fisher-every", "4", "--fisher-log-batches", "1",
       "--max-steps", "12", "--eval-every", "4", "--log-every", "1", "--batch-size", "8", "--no-progress"]


def test_classify_is_bit_identical_to_xnli(tiny_bert_dir, nli_files, tmp_path):
    data = ["--model", str(tiny_bert_dir), "--train-file", str(nli_files[0]), "--dev-file", str(nli_files[1])]
    assert train.main(["--task", "xnli", *data, *FUN, "--output-dir", str(tmp_path / "xnli")]) == 0
    assert train.main(["--task", "classify", *PAIR, "--labels", ",".join(XNLI_LABELS), *data, *FUN,
                       "--output-dir", str(tmp_path / "classify")]) == 0
    assert_same_training(tmp_path / "xnli", tmp_path / "classify")


@needs_data
def test_classify_is_bit_identical_to_xnli_on_multinli_and_xnli_files(tiny_bert_dir, tmp_path):
    """The real files: MultiNLI JSONL (class ids 0/1/2) and XTREME's XNLI dev TSV (label names, no header)."""
    data = ["--model", str(tiny_bert_dir), "--train-file", str(DATA / "mnli" / "train.jsonl"), "--dev-file",
            str(DATA / "xnli" / "dev-en.tsv"), "--max-train-samples", "200", "--max-dev-samples", "40"]
    assert train.main(["--task", "xnli", *data, *FUN, "--output-dir", str(tmp_path / "xnli")]) == 0
    assert train.main(["--task", "classify", *PAIR, "--labels", ",".join(XNLI_LABELS), *data, *FUN,
                       "--output-dir", str(tmp_path / "classify")]) == 0
    assert_same_training(tmp_path / "xnli", tmp_path / "classify")


# --- train, then evaluate from config.json alone ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sentiment_run(tiny_bert_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    train_file, dev_file = sentiment(d / "train.csv", 64, 0), sentiment(d / "dev.csv", 24, 1)
    sentiment(d / "test" / "test-en.csv", 20, 2)
    sentiment(d / "test" / "test-de.tsv", 18, 3, fmt="tsv", lang="de")
    sentiment(d / "test" / "test-fr.jsonl", 16, 4, fmt="jsonl", lang="fr")
    sentiment(d / "test" / "dev-sw.csv", 12, 5, lang="sw")  # a dev file: not a test language
    out = d / "run"
    assert train.main(["--task", "classify", "--text-columns", "text", "--model", str(tiny_bert_dir),
                       "--train-file", str(train_file), "--dev-file", str(dev_file), "--output-dir", str(out),
                       "--batch-size", "8", "--max-steps", "6", "--eval-every", "3", "--lr", "1e-3",
                       "--no-progress"]) == 0
    return d


def test_config_keeps_the_task_and_evaluate_needs_no_task_flags(sentiment_run, capsys):
    run = sentiment_run / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["task"], cfg["text_columns"], cfg["label_column"], cfg["labels"]) == (
        "classify", ["text"], "label", ["mixed", "neg", "pos"])  # the sorted training labels
    meta = json.loads((run / "best" / "adapter_config.json").read_text())
    assert meta["labels"] == cfg["labels"] and meta["text_columns"] == ["text"]
    assert evaluate.main([str(run), "--test-dir", str(sentiment_run / "test"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((run / "results-test.json").read_text())
    assert set(results["per_language"]) == {"de", "fr"}  # found in --test-dir; dev-sw is not a test file
    assert results["examples"] == {"en": 20, "de": 18, "fr": 16}
    assert set(results["source"]) == {"accuracy", "macro_f1"}
    assert "| classify (accuracy / macro_f1, test) |" in printed
    # the predictions: one record per example, where it is in the file, and it round-trips to the reported numbers
    for lang, key in (("en", "id"), ("de", "line"), ("fr", "id")):
        records = [json.loads(line) for line in (run / "predictions-test" / f"{lang}.jsonl").read_text().splitlines()]
        assert len(records) == results["examples"][lang] and all(key in r for r in records)
        names = cfg["labels"]
        pred, gold = [names.index(r["prediction"]) for r in records], [names.index(r["label"]) for r in records]
        reported = results["source"] if lang == "en" else results["per_language"][lang]
        assert {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold)} == reported
    assert records[0]["id"] == "fr-0"


def test_fisher_compute_rebuilds_the_task_from_the_adapter(sentiment_run, capsys):
    run = sentiment_run / "run"
    assert fisher.main(["compute", "--adapter", str(run / "best"), "--data", str(sentiment_run / "train.csv"),
                        "--batches", "2", "--batch-size", "4"]) == 0
    assert "tr(F) per task-adapter layer" in capsys.readouterr().out


def test_file_pattern_and_languages(tiny_bert_dir, sentiment_run, tmp_path):
    d = sentiment_run
    for lang in ("en", "it", "pt"):
        sentiment(tmp_path / "tests" / lang / "test.csv", 10, 7, lang=lang)
    out = tmp_path / "run"
    args = ["--task", "classify", "--text-columns", "text", "--model", str(tiny_bert_dir), "--train-file",
            str(d / "train.csv"), "--dev-file", str(d / "dev.csv"), "--batch-size", "8", "--max-steps", "2",
            "--no-progress", "--file-pattern", "{lang}/{split}.csv"]
    assert train.main([*args, "--output-dir", str(out)]) == 0
    assert evaluate.main([str(out), "--test-dir", str(tmp_path / "tests"), "--no-progress"]) == 0
    assert set(json.loads((out / "results-test.json").read_text())["per_language"]) == {"it", "pt"}
    assert train.main([*args, "--languages", "pt", "--output-dir", str(tmp_path / "pt")]) == 0  # the run's languages
    assert evaluate.main([str(tmp_path / "pt"), "--test-dir", str(tmp_path / "tests"), "--no-progress"]) == 0
    assert set(json.loads((tmp_path / "pt" / "results-test.json").read_text())["per_language"]) == {"pt"}


def test_bad_settings_name_the_flag(tiny_bert_dir, sentiment_run, tmp_path, capsys):
    d = sentiment_run
    base = ["--task", "classify", "--model", str(tiny_bert_dir), "--output-dir", str(tmp_path / "r"), "--no-progress",
            "--max-steps", "1", "--batch-size", "8"]
    files = ["--train-file", str(d / "train.csv"), "--dev-file", str(d / "dev.csv")]
    cases = [
        ([*base, *files], "--text-columns: give one text column, or two"),
        ([*base, *files, "--text-columns", "a,b,c"], "--text-columns: give one text column, or two"),
        ([*base, "--text-columns", "text"], "--train-file: --task classify needs train data"),
        ([*base, *files, "--text-columns", "text", "--labels", "a,a"], "--labels: give two or more distinct labels"),
        ([*base, *files, "--text-columns", "text", "--file-pattern", "x.csv"], "--file-pattern: the pattern needs {lang}"),
        ([*base, "--text-columns", "text", "--dataset", "paws-x"], "--dataset: 'paws-x' is not a namespaced Hub id"),
        ([*base, *files, "--text-columns", "words"], f"--train-file: {d / 'train.csv'}:1: 3 cells; expected 2"),
        ([*base, *files, "--text-columns", "text", "--labels", "pos,neg"], "label 'mixed' is not one of the labels"),
    ]
    for argv, message in cases:
        assert train.main(argv) == 2, argv
        assert message in capsys.readouterr().err, message
    assert not (tmp_path / "r" / "config.json").exists()


def test_sigterm_then_resume_is_bit_identical(tiny_bert_dir, sentiment_run, tmp_path):
    """The label set found in the training data at the start is the same on resume, and so is everything else."""
    d = sentiment_run

    def args(out):
        return ["--task", "classify", "--text-columns", "text", "--model", str(tiny_bert_dir), "--train-file",
                str(d / "train.csv"), "--dev-file", str(d / "dev.csv"), "--output-dir", str(out), "--batch-size", "8",
                "--schedule", "gu", "--k", "3", "--max-steps", "24", "--log-every", "1", "--eval-every", "8",
                "--save-every", "1000", "--no-progress", "--threads", "1"]
    assert train_cli(args(tmp_path / "ref")).returncode == 0
    code, err = kill_when(tmp_path / "killed", args(tmp_path / "killed"), 6, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    resumed = train_cli(args(tmp_path / "killed") + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "ref", tmp_path / "killed")


# --- several runs: one table ------------------------------------------------------------------------------------------

def test_several_runs_one_table_with_mean_and_std_over_seeds(tiny_bert_dir, sentiment_run, tmp_path, capsys):
    d = sentiment_run
    common = ["--task", "classify", "--text-columns", "text", "--model", str(tiny_bert_dir), "--train-file",
              str(d / "train.csv"), "--dev-file", str(d / "dev.csv"), "--batch-size", "8", "--max-steps", "3",
              "--no-progress", "--lr", "1e-3"]
    for name, seed, extra in (("gu", 1, ["--schedule", "gu", "--k", "1"]), ("gu", 2, ["--schedule", "gu", "--k", "1"]),
                              ("standard", 1, [])):
        assert train.main([*common, *extra, "--seed", str(seed), "--output-dir", str(tmp_path / name / f"seed{seed}")]) == 0
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "gu" / "seed*"), str(tmp_path / "standard" / "seed1"), "--test-dir",
                          str(d / "test"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("classify (accuracy / macro_f1, test)\n| run |"):].splitlines()
    assert table[1] == "| run | seed | en | lowest | avg | de | fr |" and len(table) == 1 + 2 + 3 + 1
    results = [json.loads((tmp_path / n / f"seed{s}" / "results-test.json").read_text())
               for n, s in (("gu", 1), ("gu", 2))]
    row = table[-1].split(" | ")
    assert row[0] == f"| {tmp_path / 'gu' / 'seed'}*: mean ± std" and row[1] == "1,2"
    de = [r["per_language"]["de"] for r in results]
    mean = sum(r["accuracy"] for r in de) / 2
    std = abs(de[0]["accuracy"] - de[1]["accuracy"]) / 2 ** 0.5  # the sample std of two values
    assert row[5].startswith(f"{mean:.2f} ± {std:.2f} / ")
    assert evaluate.main([str(tmp_path / "gu" / "seed*"), "--output", str(tmp_path / "x.json")]) == 2
    assert evaluate.main([str(tmp_path / "nothing*")]) == 2
    assert "no run directory (with a config.json) matches" in capsys.readouterr().err


def test_sweep_and_aggregate_take_classify(tiny_bert_dir, sentiment_run, tmp_path, capsys):
    from experiments import aggregate, sweep
    d = sentiment_run
    extra = (f"--text-columns text --model {tiny_bert_dir} --train-file {d / 'train.csv'} --dev-file {d / 'dev.csv'} "
             "--batch-size 8 --max-steps 2 --no-progress")
    argv = ["--tasks", "classify", "--schedules", "standard,gu", "--seeds", "1,2", "--root", str(tmp_path / "sweep"),
            "--extra", extra, "--evaluate", f"--test-dir {d / 'test'} --no-progress"]
    launched = []

    def launch(cmd, env, log):
        launched.append(cmd)
        module = train if cmd[1].endswith("train.py") else evaluate
        return module.main(cmd[2:])

    assert sweep.main(argv, launch=launch) == 0 and len(launched) == 8
    text = aggregate.aggregate([tmp_path / "sweep"])
    assert "| model | method | seeds | En (accuracy / macro_f1) |" in text and "| gu | 1,2 |" in text

"""What evaluate.py gives researchers: predictions files in the official formats that round-trip to the reported
numbers, test data in every official layout (XNLI 1.0's one file of 15 languages, per-language JSONL), runs trained
with a relative model path, and messages that say which files were expected."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evaluate
import train
from fun.metrics import accuracy, qa_metrics
from fun.tasks import TASKS
from tiny import QA_PARAGRAPHS, ROOT, write_copa, write_nli, write_squad

XNLI = TASKS["xnli"]
LABELS = ("entailment", "neutral", "contradiction")


@pytest.fixture(scope="module")
def xnli_run(tiny_bert_dir, nli_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("xnli") / "run"
    assert train.main(["--model", str(tiny_bert_dir), "--train-file", str(nli_files[0]), "--dev-file", str(nli_files[1]),
                       "--output-dir", str(out), "--batch-size", "8", "--max-steps", "4", "--no-progress"]) == 0
    return out


def xnli_1_0(path: Path, languages: dict[str, Path]) -> Path:
    """XNLI 1.0's official layout: one TSV of every language, a header, a `language` column, `pairID`."""
    lines = ["language\tgold_label\tsentence1_binary_parse\tsentence1\tsentence2\tpromptID\tpairID"]
    for lang, source in languages.items():
        for i, row in enumerate(source.read_text().splitlines()):
            premise, hypothesis, label = row.split("\t")
            lines.append(f"{lang}\t{label}\t( x )\t{premise}\t{hypothesis}\t{i}\t{lang}{i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_xnli_1_0_single_file_is_split_by_language(xnli_run, tmp_path, capsys):
    sources = {lang: write_nli(tmp_path / f"{lang}.tsv", 10 + i, seed=20 + i, fmt="tsv")
               for i, lang in enumerate(("en", "de", "sw"))}
    xnli_1_0(tmp_path / "XNLI-1.0" / "xnli.test.tsv", sources)
    assert evaluate.main([str(xnli_run), "--test-dir", str(tmp_path / "XNLI-1.0"), "--output", str(tmp_path / "r.json"),
                          "--no-progress"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["examples"] == {"en": 10, "de": 11, "sw": 12}  # each language its own rows, not one mixed set
    # the same numbers as XTREME's per-language files of the same rows
    (tmp_path / "xtreme").mkdir()
    for lang, source in sources.items():
        shutil.copy(source, tmp_path / "xtreme" / f"test-{lang}.tsv")
    assert evaluate.main([str(xnli_run), "--test-dir", str(tmp_path / "xtreme"), "--output", str(tmp_path / "x.json"),
                          "--no-progress"]) == 0
    xtreme = json.loads((tmp_path / "x.json").read_text())
    assert (xtreme["source"], xtreme["per_language"]) == (results["source"], results["per_language"])
    records = [json.loads(line) for line in (tmp_path / "r-predictions" / "de.jsonl").read_text().splitlines()]
    assert records[0]["id"] == "de0" and records[0]["label"] in LABELS  # pairID and the label's name
    # English rows of the official dev file select the checkpoint when it is the --dev-file
    assert [e["premise"] for e in XNLI.load("dev", str(tmp_path / "XNLI-1.0" / "xnli.test.tsv"))] == [
        line.split("\t")[0] for line in sources["en"].read_text().splitlines()]
    with pytest.raises(ValueError, match="no rows of language 'fr' in its language column \\(it holds de, en, sw\\)"):
        XNLI.load("test", str(tmp_path / "XNLI-1.0"), "fr")


def test_per_language_jsonl_test_dir(xnli_run, tmp_path):
    (tmp_path / "jsonl").mkdir()
    for lang in ("en", "de"):
        write_nli(tmp_path / "jsonl" / f"test-{lang}.jsonl", 9, seed=3)
    assert evaluate.main([str(xnli_run), "--test-dir", str(tmp_path / "jsonl"), "--languages", "de", "--output",
                          str(tmp_path / "r.json"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["examples"] == {"en": 9, "de": 9} and results["source"] == results["per_language"]["de"]


def test_classification_predictions_round_trip(xnli_run, tmp_path):
    (tmp_path / "tsv").mkdir()
    for lang in ("en", "de", "fr"):
        write_nli(tmp_path / "tsv" / f"test-{lang}.tsv", 15, seed=ord(lang[0]), fmt="tsv")
    assert evaluate.main([str(xnli_run), "--test-dir", str(tmp_path / "tsv"), "--languages", "de,fr",
                          "--no-progress"]) == 0
    results = json.loads((xnli_run / "results-test.json").read_text())
    assert results["predictions"] == str(xnli_run / "predictions-test")
    for lang in ("en", "de", "fr"):
        records = [json.loads(line) for line in (xnli_run / "predictions-test" / f"{lang}.jsonl").read_text().splitlines()]
        assert [r["line"] for r in records] == list(range(1, 16))
        score = accuracy([LABELS.index(r["prediction"]) for r in records], [LABELS.index(r["label"]) for r in records])
        assert score == (results["source"] if lang == "en" else results["per_language"][lang])["accuracy"]


def test_xcopa_predictions_name_the_examples(tiny_bert_dir, tmp_path):
    train_file, dev_file = write_copa(tmp_path / "train.jsonl", 16), write_copa(tmp_path / "val.jsonl", 8, seed=1)
    out = tmp_path / "run"
    assert train.main(["--task", "xcopa", "--model", str(tiny_bert_dir), "--train-file", str(train_file), "--dev-file",
                       str(dev_file), "--output-dir", str(out), "--batch-size", "4", "--max-steps", "2",
                       "--no-progress"]) == 0
    write_copa(tmp_path / "xcopa" / "et" / "test.et.jsonl", 6, seed=4)
    assert evaluate.main([str(out), "--test-dir", str(tmp_path / "xcopa"), "--source-file", str(dev_file),
                          "--languages", "et", "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "predictions-test" / "et.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == list(range(6)) and {r["prediction"] for r in records} <= {0, 1}
    results = json.loads((out / "results-test.json").read_text())
    assert accuracy([r["prediction"] for r in records], [r["label"] for r in records]) == results["average"]["accuracy"]


def test_qa_predictions_in_the_official_format_round_trip(tiny_bert_dir, tmp_path):
    """{question id: answer text}, which the official SQuAD v1.1 and MLQA scripts read; our metric on the file gives
    the reported F1 and EM."""
    train_file = write_squad(tmp_path / "train.json", QA_PARAGRAPHS * 2)
    out = tmp_path / "run"
    assert train.main(["--task", "xquad", "--model", str(tiny_bert_dir), "--train-file", str(train_file),
                       "--dev-file", str(train_file), "--output-dir", str(out), "--batch-size", "4", "--max-length",
                       "48", "--max-steps", "3", "--lr", "1e-2", "--no-progress"]) == 0
    for lang in ("en", "de"):
        write_squad(tmp_path / "xquad" / f"xquad.{lang}.json", QA_PARAGRAPHS)
        write_squad(tmp_path / "mlqa" / f"test-context-{lang}-question-{lang}.json", QA_PARAGRAPHS)
    references = {q[0]: [q[2]] for _, qas in QA_PARAGRAPHS for q in qas}
    for task, style in (("xquad", "squad"), ("mlqa", "mlqa")):
        assert evaluate.main([str(out), "--task", task, "--test-dir", str(tmp_path / task), "--languages", "de",
                              "--no-progress"]) == 0
        suffix = "" if task == "xquad" else "-mlqa"
        results = json.loads((out / f"results{suffix}-test.json").read_text())
        predictions = json.loads((out / f"predictions{suffix}-test" / "de.json").read_text())
        assert set(predictions) == set(references) and all(isinstance(v, str) for v in predictions.values())
        assert qa_metrics(predictions, references, "de", style) == results["per_language"]["de"]


def test_no_test_files_say_which_names_and_dev(xnli_run, tmp_path, capsys):
    write_nli(tmp_path / "dev-de.tsv", 5, fmt="tsv")
    assert evaluate.main([str(xnli_run), "--test-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no xnli test files for any of ar, de" in err
    assert ("expected test-<lang>.tsv or test-<lang>.jsonl or test-<lang>.json or test-<lang>.txt or xnli.test.tsv or "
            "xnli.test.jsonl; --test-split dev reads the dev files instead (dev-<lang>.tsv or") in err


def test_relative_model_path_is_found_from_elsewhere_or_fails_at_once(tiny_bert_dir, nli_files, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_bert_dir, work / "models" / "tiny")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["--model", "models/tiny", "--train-file", str(nli_files[0]), "--dev-file", str(nli_files[1]),
            "--output-dir", "runs/r", "--batch-size", "8", "--max-steps", "2", "--no-progress", "--threads", "1"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=work, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    run = work / "runs" / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "models/tiny" and cfg["model_dir"] == str((work / "models" / "tiny").resolve())
    (tmp_path / "test").mkdir()
    write_nli(tmp_path / "test" / "test-de.tsv", 6, fmt="tsv")
    evaluate_from = lambda cwd: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "evaluate.py"), str(run), "--test-dir", str(tmp_path / "test"), "--no-progress",
         "--source-file", str(nli_files[1])], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    proc = evaluate_from(tmp_path)  # another directory: models/tiny is not there, the absolute path is
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "results-test.json").read_text())["model"] == cfg["model_dir"]
    shutil.move(work / "models", tmp_path / "moved")
    start = time.time()
    proc = evaluate_from(tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --model: the run's model directory models/tiny")
    assert str(tmp_path / "models" / "tiny") in proc.stderr and cfg["model_dir"] in proc.stderr
    assert time.time() - start < 60 and "Traceback" not in proc.stderr  # before anything loads (interpreter start)

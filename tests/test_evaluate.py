"""evaluate.py end to end: train a tiny run with train.main, evaluate it zero-shot on synthetic test dirs."""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import evaluate
import train
from cli import UsageError
from fun.adapters import AdapterSet
from fun.model import AdapterModel
from fun.tasks import TASKS
from tiny import QA_PARAGRAPHS, write_copa, write_squad

ROOT = Path(__file__).resolve().parents[1]
XCOPA_TARGETS = ("et", "qu", "zh")  # the synthetic test dir holds these; the other 8 are skipped


@pytest.fixture(scope="module")
def xcopa_run(tiny_bert_dir, tmp_path_factory):
    """A 4-step XCOPA run on synthetic COPA files, plus a synthetic XCOPA test dir (3 of 11 languages)."""
    d = tmp_path_factory.mktemp("xcopa")
    train_file, dev_file = write_copa(d / "train.jsonl", 32, seed=0), write_copa(d / "val.jsonl", 16, seed=1)
    run = d / "run"
    assert train.main(["--task", "xcopa", "--model", str(tiny_bert_dir), "--train-file", str(train_file),
                       "--dev-file", str(dev_file), "--output-dir", str(run), "--batch-size", "8",
                       "--max-steps", "4", "--eval-every", "2", "--no-progress"]) == 0
    for i, lang in enumerate(XCOPA_TARGETS):
        write_copa(d / "xcopa" / lang / f"test.{lang}.jsonl", 10 + i, seed=10 + i)
    return types.SimpleNamespace(run=run, test_dir=d / "xcopa", dev_file=dev_file,
                                 source_file=write_copa(d / "copa-test.jsonl", 12, seed=5))


def test_xcopa_results_json_and_table(xcopa_run, capsys):
    r = xcopa_run
    assert evaluate.main([str(r.run), "--test-dir", str(r.test_dir), "--source-file", str(r.source_file),
                          "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((r.run / "results-test.json").read_text())
    assert (results["task"], results["metric"], results["split"], results["checkpoint"]) == ("xcopa", "accuracy", "test", "best")
    assert set(results["per_language"]) == set(XCOPA_TARGETS)  # English is the source, not a target
    assert set(results["skipped"]) == set(TASKS["xcopa"].languages) - set(XCOPA_TARGETS)
    assert results["examples"] == {"en": 12, "et": 10, "qu": 11, "zh": 12}
    accs = {lang: m["accuracy"] for lang, m in results["per_language"].items()}
    assert results["average"] == {"accuracy": pytest.approx(sum(accs.values()) / 3)}  # English excluded
    assert results["lowest"] == {"lang": min(accs, key=accs.get), "value": min(accs.values())}
    assert 0 <= results["source"]["accuracy"] <= 100
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| task | en | lowest | avg |"))
    assert lines[header].count("|") == lines[header + 2].count("|") == 4 + 11 + 1
    assert lines[header + 2].startswith("| xcopa (accuracy, test) | ") and "skipped (no data): ht:" in printed


def test_reloaded_adapter_reproduces_training_dev_score(xcopa_run, tmp_path):
    """The source score on the dev file equals the best dev score train.py logged: weights reload exactly."""
    r = xcopa_run
    out = tmp_path / "res.json"
    assert evaluate.main([str(r.run), "--test-dir", str(r.test_dir), "--source-file", str(r.dev_file),
                          "--languages", "et", "--output", str(out), "--no-progress"]) == 0
    best = json.loads((r.run / "summary.json").read_text())["best"]
    results = json.loads(out.read_text())
    assert results["source"] == best["metrics"] and results["step"] == best["step"]
    assert list(results["per_language"]) == ["et"] and results["average"] == results["per_language"]["et"]


def test_language_adapters_swapped_per_target(xcopa_run, tmp_path, monkeypatch):
    run = shutil.copytree(xcopa_run.run, tmp_path / "run")
    cfg_path = run / "best" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, lang_adapter="en=adapters/en")))  # as if trained on top of one
    loaded, active = [], []

    def load_lang_adapter(path, encoder):
        loaded.append(path)
        return AdapterSet(encoder.config.hidden_size, encoder.config.num_hidden_layers, reduction_factor=2)

    monkeypatch.setitem(sys.modules, "fun.adapterhub", types.SimpleNamespace(load_lang_adapter=load_lang_adapter))
    original = AdapterModel.set_lang_adapter
    monkeypatch.setattr(AdapterModel, "set_lang_adapter",
                        lambda self, a: (active.append(a is not None), original(self, a))[1])
    base = [str(run), "--test-dir", str(xcopa_run.test_dir), "--source-file", str(xcopa_run.source_file), "--no-progress"]
    assert evaluate.main(base) == 2 and not loaded  # targets without an adapter: refused before any work
    assert evaluate.main(base + ["--lang-adapters", "et=adapters/et", "--no-lang-adapter-ok"]) == 0
    assert loaded == ["adapters/en", "adapters/et"] and active == [True, True, False, False]  # en, et, qu, zh
    results = json.loads((run / "results-test.json").read_text())
    assert results["lang_adapters"] == {"en": "adapters/en", "et": "adapters/et", "qu": None, "zh": None}


def test_hub_data_and_english_source_not_on_hub(xcopa_run, tmp_path, monkeypatch):
    import datasets
    rows = [json.loads(line) for line in xcopa_run.source_file.read_text().splitlines()]
    hub = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: hub.append((path, name, split)) or rows)
    out = tmp_path / "hub.json"
    assert evaluate.main([str(xcopa_run.run), "--languages", "et,qu", "--output", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert hub == [("cambridgeltl/xcopa", "et", "test"), ("cambridgeltl/xcopa", "qu", "test")]
    assert set(results["per_language"]) == {"et", "qu"} and "--source-file" in results["skipped"]["en"]


def test_plan_adapters():
    assert evaluate.plan_adapters(None, {}, ["de"], False) == {"en": None, "de": None}
    assert evaluate.plan_adapters("en-dir", {"de": "de-dir", "en": "other"}, ["de"], False) == {"en": "other", "de": "de-dir"}
    with pytest.raises(UsageError, match="no --lang-adapters for es"):
        evaluate.plan_adapters("en-dir", {"de": "de-dir"}, ["de", "es"], False)
    with pytest.raises(UsageError, match="trained without a language adapter"):
        evaluate.plan_adapters(None, {"de": "de-dir"}, ["de"], True)
    assert evaluate.plan_adapters("en-dir", {"es": "x"}, ["de"], True) == {"en": "en-dir", "de": None}  # es not evaluated


def test_usage_errors(xcopa_run, tmp_path, capsys):
    r = xcopa_run
    bad_dir = tmp_path / "bad"
    bad = write_copa(bad_dir / "et" / "test.et.jsonl", 3)
    bad.write_text(bad.read_text().replace('"label": 0', '"label": 7', 1).replace('"label": 1', '"label": 7', 1))
    xnli_dir = tmp_path / "xnli"
    xnli_dir.mkdir()
    (xnli_dir / "test-de.tsv").write_text("a man\tthe man\tentailment\n")
    cases = [
        ([str(tmp_path)], "no config.json"),
        ([str(r.run), "--test-dir", str(bad_dir)], f"{bad}:1: 'label' is 7"),
        ([str(r.run), "--test-dir", str(r.test_dir), "--languages", "de"], "de not target languages of xcopa"),
        ([str(r.run), "--test-dir", str(r.test_dir), "--lang-adapters", "et=x"], "trained without a language adapter"),
        ([str(r.run), "--test-dir", str(r.test_dir), "--lang-adapters", "ett=x"], "ett not languages of xcopa"),
        ([str(r.run), "--test-dir", str(r.test_dir), "--lang-adapters", "et"], "'et' is not LANG=PATH"),
        ([str(r.run), "--test-dir", str(tmp_path)], "no xcopa test files for any of"),
        ([str(r.run), "--task", "xnli", "--test-dir", str(xnli_dir)], "does not fit task xnli"),
        ([str(r.run), "--test-dir", str(r.test_dir), "--batch-size", "0"], "--batch-size: 0: must be a positive integer"),
    ]
    for argv, message in cases:
        assert evaluate.main(argv + ["--no-progress"]) == 2, argv
        assert message in capsys.readouterr().err, message


def test_qa_train_then_evaluate_xquad_and_mlqa(tiny_bert_dir, tmp_path):
    train_file = write_squad(tmp_path / "train.json", QA_PARAGRAPHS * 2)
    dev_file = write_squad(tmp_path / "dev.json", QA_PARAGRAPHS)
    run = tmp_path / "run"
    assert train.main(["--task", "xquad", "--model", str(tiny_bert_dir), "--train-file", str(train_file),
                       "--dev-file", str(dev_file), "--output-dir", str(run), "--batch-size", "4", "--max-length", "48",
                       "--max-steps", "3", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["max_length"] == 48
    for lang in ("en", "de", "es"):
        write_squad(tmp_path / "xquad" / f"xquad.{lang}.json", QA_PARAGRAPHS)
    assert evaluate.main([str(run), "--test-dir", str(tmp_path / "xquad"), "--languages", "de,es", "--no-progress"]) == 0
    results = json.loads((run / "results-test.json").read_text())
    assert (results["task"], results["metric"], results["max_length"]) == ("xquad", "f1", 48)
    assert set(results["per_language"]) == {"de", "es"} and set(results["source"]) == {"f1", "exact_match"}
    for key in ("f1", "exact_match"):
        values = [results["per_language"][lang][key] for lang in ("de", "es")]
        assert results["average"][key] == pytest.approx(sum(values) / 2) and all(0 <= v <= 100 for v in values)
    # the SQuAD-trained run on MLQA (same head): its own results file, MLQA's official file names
    write_squad(tmp_path / "mlqa" / "test-context-de-question-de.json", QA_PARAGRAPHS)
    assert evaluate.main([str(run), "--task", "mlqa", "--test-dir", str(tmp_path / "mlqa"), "--no-progress"]) == 0
    results = json.loads((run / "results-mlqa-test.json").read_text())
    assert list(results["per_language"]) == ["de"] and "en" in results["skipped"] and results["source"] is None


def test_cli_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "no config.json" in proc.stderr

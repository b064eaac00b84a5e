"""`--task classify` on a Hugging Face Hub dataset, offline: the README's Hub example (PAWS-X) against a record of what
the Hub holds, with the calls of today's `datasets` recorded, and the errors of a wrong column or no network.

`python -m pytest -m online` (tests/test_hub_online.py) runs the same example on the real Hub.
"""

import json
import re
import shlex

import evaluate
import train
from tiny import ROOT

# --- the Hub: the README's example against a record of what the Hub holds --------------------------------------------

# google-research-datasets/paws-x (its dataset card; Parquet, loaded with datasets >= 5 by name alone): configs
# de en es fr ja ko zh; splits train / validation / test; columns id, sentence1, sentence2, label (ClassLabel '0', '1').
PAWSX = ("google-research-datasets/paws-x", {c: {"train", "validation", "test"} for c in "de en es fr ja ko zh".split()})


def readme_command(marker: str, script: str) -> list[str]:
    """The arguments of the `python SCRIPT ...` line in the README's code block that follows `marker`."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme[readme.index(marker):], re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return shlex.split(next(line for line in lines if line.startswith(f"python {script}")))[2:]


class FakePawsx:
    """`datasets.load_dataset` as the Hub answers for PAWS-X: a Dataset with a ClassLabel column, -1 for no label."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, name=None, split=None, **kwargs):
        import datasets
        self.calls.append((path, name, split, kwargs))
        repo, configs = PAWSX
        if path.count("/") != 1:
            raise ValueError(f"Repository id must be 'namespace/name', got '{path}'")
        assert path == repo and name in configs and split in configs[name], (path, name, split)
        features = datasets.Features(id=datasets.Value("int32"), sentence1=datasets.Value("string"),
                                     sentence2=datasets.Value("string"), label=datasets.ClassLabel(names=["0", "1"]))
        rows = [dict(id=i, sentence1="the man went home", sentence2=["he went home", "a dog ran"][i % 2],
                     label=[1, 0][i % 2] if i != 5 else -1) for i in range(24)]
        return datasets.Dataset.from_list(rows, features=features)


def test_readme_hub_example_against_the_hub_record(tiny_bert_dir, tmp_path, monkeypatch):
    import datasets
    fake = FakePawsx()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    args = readme_command("**A Hub example", "train.py")
    cfg = train.parse_config(args)
    assert cfg.task == "classify" and cfg.dataset == PAWSX[0]
    run = tmp_path / "pawsx"
    small = ["--model", str(tiny_bert_dir), "--output-dir", str(run), "--max-steps", "2", "--batch-size", "4",
             "--no-progress"]
    assert train.main([*args, *small]) == 0  # later flags win: a tiny model, two steps
    assert fake.calls[:2] == [(PAWSX[0], "en", "train", {}), (PAWSX[0], "en", "validation", {})]
    assert json.loads((run / "config.json").read_text())["labels"] == ["0", "1"]  # the ClassLabel's names
    assert readme_command("**A Hub example", "evaluate.py")[0] == cfg.output_dir
    assert evaluate.main([str(run), "--no-progress"]) == 0
    results = json.loads((run / "results-test.json").read_text())
    assert set(results["per_language"]) == set(cfg.languages) == {"de", "es", "fr", "ja", "ko", "zh"}
    assert results["examples"]["de"] == 23  # the row labelled -1 (the Hub's "no label") is left out
    assert {(c[1], c[2]) for c in fake.calls[2:]} == {(lang, "test") for lang in ["en", *cfg.languages]}
    records = [json.loads(line) for line in (run / "predictions-test" / "ja.jsonl").read_text().splitlines()]
    assert records[0]["id"] == 0 and records[0]["row"] == 0 and records[0]["label"] == "1"


def test_hub_errors_are_clear(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", FakePawsx())
    base = ["--task", "classify", "--model", str(tiny_bert_dir), "--output-dir", str(tmp_path / "r"), "--max-steps",
            "1", "--no-progress", "--dataset", PAWSX[0], "--dataset-config", "{lang}"]
    assert train.main([*base, "--text-columns", "premise,hypothesis"]) == 2
    assert "no column premise, hypothesis (columns: id, sentence1, sentence2, label)" in capsys.readouterr().err
    monkeypatch.setattr(datasets, "load_dataset", lambda **kw: (_ for _ in ()).throw(
        ConnectionError("Couldn't reach 'google-research-datasets/paws-x' on the Hub (LocalEntryNotFoundError)")))
    assert train.main([*base, "--text-columns", "sentence1,sentence2"]) == 2
    err = capsys.readouterr().err
    assert "--dataset: dataset google-research-datasets/paws-x config en split train: no network" in err
    monkeypatch.setattr(datasets, "load_dataset", lambda **kw: (_ for _ in ()).throw(
        RuntimeError("Dataset scripts are no longer supported, but found paws-x.py")))
    assert train.main([*base, "--text-columns", "sentence1,sentence2"]) == 2
    err = capsys.readouterr().err
    assert "only a loading script" in err and "--dataset-revision refs/convert/parquet" in err

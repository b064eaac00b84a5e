"""The Hugging Face Hub contract, offline: every dataset, model and adapter id, config, split and revision the code
asks for, checked against what the Hub holds (a record written from the public sources that fun/hub.py names),
with the calls of today's libraries recorded; then training and evaluation from a cache, without network.

`python -m pytest -m online` (tests/test_hub_online.py) loads the same rows from the real Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import train
from cli import UsageError
from fun import hub
from fun.config import resolve
from fun.presets import PRESETS
from fun.tasks import TASKS
from tiny import ROOT, make_tokenizer, tiny_config, write_nli

# --- what the Hub holds -----------------------------------------------------------------------------------------

XNLI_LANGS = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
MLQA_LANGS = "ar de en es hi vi zh".split()
HUB_DATASETS = {  # (repo, revision or None for main) → {config (None: default; "dir:X": data_dir X): splits}
    ("nyu-mll/multi_nli", None): {None: {"train", "validation_matched", "validation_mismatched"}},
    ("facebook/xnli", None): {c: {"train", "validation", "test"} for c in XNLI_LANGS + ["all_languages"]},
    ("aps/super_glue", "refs/convert/parquet"): {f"dir:{c}": {"train", "validation", "test"}
                                                 for c in "axb axg boolq cb copa multirc record rte wic wsc".split()},
    ("cambridgeltl/xcopa", None): {c: {"validation", "test"} for c in "et ht id it qu sw ta th tr vi zh".split()},
    ("rajpurkar/squad", None): {"plain_text": {"train", "validation"}},
    ("google/xquad", None): {f"xquad.{c}": {"validation"} for c in "ar de el en es hi ro ru th tr vi zh".split()},
    ("google/xtreme", None): {f"MLQA.{c}.{q}": {"test", "validation"} for c in MLQA_LANGS for q in MLQA_LANGS},
    ("wikimedia/wikipedia", None): {f"20231101.{c}": {"train"} for c in XNLI_LANGS + "et ht id it qu ta".split()},
}
SCRIPT_ONLY_ON_MAIN = {"aps/super_glue": "super_glue.py", "facebook/mlqa": "mlqa.py"}
# AdapterHub's index (adapter-hub/Hub adapters/ukp/*.yaml): the HF repository of each is AdapterHub/<file name>
ADAPTERHUB_INDEX = {f"AdapterHub/bert-base-multilingual-cased-{c}-wiki_pfeiffer"
                    for c in "ar de el en es et fr hi ht ja qu ru sw zh".split()} | {
    "AdapterHub/bert-base-multilingual-cased_tr_wiki_pfeiffer", "AdapterHub/bert-base-multilingual-cased_vi_wiki_pfeiffer",
    "AdapterHub/bert-base-multilingual-cased_wiki_id_pfeiffer"} | {
    f"AdapterHub/xlm-roberta-base-{c}-wiki_pfeiffer"
    for c in "ar de el en es et hi ht id it ja qu ru sw ta th tr vi zh".split()}
HUB_MODELS = {"google-bert/bert-base-multilingual-cased": "bert", "FacebookAI/xlm-roberta-base": "xlmr",
              "microsoft/mdeberta-v3-base": "deberta"}


def rows_for(repo: str) -> list[dict]:
    if repo in ("nyu-mll/multi_nli", "facebook/xnli"):
        return [dict(premise="the man went home", hypothesis="he went", label=i % 3) for i in range(6)]
    if repo in ("aps/super_glue", "cambridgeltl/xcopa"):
        return [dict(premise="the man ran", choice1="a", choice2="b", question="cause", label=i % 2, idx=i)
                for i in range(4)]
    return [dict(id=f"q{i}", title="t", context="the dog ran fast", question="what ran ?",
                 answers={"text": ["dog"], "answer_start": [4]}) for i in range(3)]


class FakeHub:
    """`datasets.load_dataset` as datasets 5 answers it, against HUB_DATASETS; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, name=None, split=None, revision=None, data_dir=None, **kwargs):
        self.calls.append(dict(path=path, name=name, split=split, revision=revision, data_dir=data_dir))
        if path.count("/") != 1:
            raise ValueError(f"Invalid HF URI 'hf://datasets/{path}'. Repository id must be 'namespace/name', got "
                             f"'{path}'")  # datasets >= 5 (huggingface/datasets#8612)
        if path in SCRIPT_ONLY_ON_MAIN and revision in (None, "main"):
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {SCRIPT_ONLY_ON_MAIN[path]}")
        configs = HUB_DATASETS.get((path, revision))
        assert configs is not None, f"no repository {path} at revision {revision or 'main'}"
        config = f"dir:{data_dir}" if data_dir else name
        assert config in configs, f"{path}: no config {config} (has {sorted(map(str, configs))})"
        assert split in configs[config], f"{path} {config}: no split {split}"
        assert not kwargs, kwargs
        return rows_for(path)


def languages(task):
    return ["en", *task.languages, *task.extra_languages]


def load_everything(fake: FakeHub) -> list[tuple]:
    """Every task's train, dev and test data in every language, as train.py and evaluate.py load it."""
    loaded = []
    for task in TASKS.values():
        for split in ("train", "dev", "test"):
            for lang in languages(task) if split != "train" else ["en"]:
                try:
                    examples = task.load(split, None, lang)
                except ValueError as err:  # splits the Hub does not have: a clear message, no call
                    assert (task.name, split) in {("xquad", "dev"), ("xcopa", "test")}, err
                    continue
                assert examples, (task.name, split, lang)
                loaded.append((task.name, split, lang))
    return loaded


def test_every_task_split_and_language_loads_by_namespaced_id_without_scripts(monkeypatch):
    import datasets
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    loaded = load_everything(fake)
    assert len(loaded) == len(fake.calls)
    calls = {(c["path"], c["name"], c["split"], c["revision"], c["data_dir"]) for c in fake.calls}
    expected_train = {("nyu-mll/multi_nli", None, "train", None, None),
                      ("aps/super_glue", None, "train", "refs/convert/parquet", "copa"),
                      ("rajpurkar/squad", "plain_text", "train", None, None)}
    assert expected_train <= calls
    assert ("aps/super_glue", None, "validation", "refs/convert/parquet", "copa") in calls  # COPA val: selection
    assert ("rajpurkar/squad", "plain_text", "validation", None, None) in calls           # SQuAD dev: selection
    assert {("google/xtreme", f"MLQA.{lang}.{lang}", "test", None, None) for lang in MLQA_LANGS if lang != "en"} <= calls
    assert {("facebook/xnli", lang, "test", None, None) for lang in XNLI_LANGS} <= calls
    assert all("/" in c["path"] and c["path"] not in SCRIPT_ONLY_ON_MAIN or c["revision"] for c in fake.calls)


@pytest.mark.parametrize("row, short", [("MULTI_NLI_TRAIN", "multi_nli"), ("XNLI_TEST", "xnli"),
                                        ("SQUAD_TRAIN", "squad"), ("XQUAD_TEST", "xquad")])
def test_the_contract_fails_when_an_id_is_put_back_to_its_short_form(monkeypatch, row, short):
    import dataclasses
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", FakeHub())
    spec = getattr(hub, row)
    with pytest.raises(hub.HubError, match="no such repository"):
        hub.load_dataset(dataclasses.replace(spec, id=short), "de")
    with pytest.raises(hub.HubError, match="only a loading script"):
        hub.load_dataset(dataclasses.replace(hub.COPA_TRAIN, revision=None, data_dir=None, config="copa"))
    with pytest.raises(hub.HubError, match="only a loading script"):
        hub.load_dataset(hub.HubDataset("facebook/mlqa", "mlqa.de.de", "test"))


def test_wikipedia_text_for_language_adapters(monkeypatch):
    import datasets
    from fun import mlm
    fake = FakeHub()

    def load(**kwargs):
        fake(**kwargs)
        return datasets.Dataset.from_list([{"text": f"Dokument {i}"} for i in range(40)] + [{"text": " "}])

    monkeypatch.setattr(datasets, "load_dataset", load)
    train_docs, dev_docs = mlm.load_corpus("de", None, None)
    assert fake.calls == [dict(path="wikimedia/wikipedia", name="20231101.de", split="train", revision=None,
                               data_dir=None)]
    assert len(train_docs) == 38 and len(dev_docs) == 2  # the blank text dropped; every 20th document held out


# --- models and language adapters ---------------------------------------------------------------------------------

class FakeModels:
    """transformers' from_pretrained and huggingface_hub's snapshot_download, recording the ids asked for; a tiny
    model of the right architecture and a tiny AdapterHub adapter stand in for the downloads."""

    def __init__(self, adapter_dirs: dict[str, Path]):
        self.models, self.adapters, self.adapter_dirs = [], [], adapter_dirs

    def config(self, name, **kwargs):
        self.models.append(name)
        assert name in HUB_MODELS, f"{name}: not a canonical model id"
        config = tiny_config(HUB_MODELS[name], vocab_size=len(make_tokenizer()))
        config.max_position_embeddings = 514  # as the real ones: room for the presets' 384 tokens
        return config

    def model(self, name, **kwargs):
        from transformers import AutoModel
        kwargs.pop("dtype", None), kwargs.pop("add_pooling_layer", None)
        return AutoModel.from_config(self.config(name), **{k: v for k, v in kwargs.items() if k == "attn_implementation"})

    def tokenizer(self, name, **kwargs):
        self.models.append(name)
        return make_tokenizer()

    def snapshot(self, repo_id, allow_patterns=None, **kwargs):
        self.adapters.append(repo_id)
        assert repo_id in ADAPTERHUB_INDEX, f"{repo_id}: not in AdapterHub's index"
        assert {"adapter_config.json", "pytorch_adapter.bin"} <= set(allow_patterns)
        return str(self.adapter_dirs["xlm-roberta" if "xlm-roberta" in repo_id else "bert"])


@pytest.fixture
def fake_models(monkeypatch, tmp_path):
    import huggingface_hub
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from fun.adapterhub import save_adapterhub
    from fun.adapters import AdapterSet
    dirs = {kind: save_adapterhub(AdapterSet(32, 4, 2, invertible=True), tmp_path / kind, "en", "tiny", kind)
            for kind in ("bert", "xlm-roberta")}
    fake = FakeModels(dirs)
    monkeypatch.setattr(AutoConfig, "from_pretrained", fake.config)
    monkeypatch.setattr(AutoModel, "from_pretrained", fake.model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake.tokenizer)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot)
    return fake


def test_every_preset_resolves_canonical_models_and_adapterhub_adapters(fake_models):
    """Each preset's encoder by its canonical id; MAD-X presets stack the model's English AdapterHub adapter and
    evaluate with the target languages' ones (or say in one line how to train a missing one)."""
    built = set()
    for name, preset in PRESETS.items():
        cfg = resolve(train.parse_config(["--preset", name, "--output-dir", "unused"]))
        assert cfg.model in hub.MODELS.values(), name
        tag = hub.model_tag(cfg.model)
        if tag == "mdeberta" or cfg.schedule == "full":  # no AdapterHub adapters for mDeBERTa; no adapters in full FT
            assert cfg.lang_adapter is None, name
        else:
            assert cfg.lang_adapter == hub.LANG_ADAPTERS[tag]["en"] in ADAPTERHUB_INDEX, name
        if (cfg.model, cfg.lang_adapter) not in built:
            train.build_model(cfg, TASKS[cfg.task])
            built.add((cfg.model, cfg.lang_adapter))
        if cfg.lang_adapter:
            task = TASKS[cfg.task]
            available = [lang for lang in task.languages if lang in hub.LANG_ADAPTERS[tag]]
            plan = evaluate.plan_adapters(cfg.lang_adapter, {}, available, False, cfg.model)
            assert all(plan[lang] in ADAPTERHUB_INDEX for lang in available), name
            missing = [lang for lang in task.languages if lang not in hub.LANG_ADAPTERS[tag]]
            if missing:
                with pytest.raises(UsageError, match=f"no {missing[0]}.* --task mlm --lang LANG"):
                    evaluate.plan_adapters(cfg.lang_adapter, {}, list(task.languages), False, cfg.model)
    assert set(fake_models.models) == set(hub.MODELS.values())
    assert set(fake_models.adapters) == {hub.LANG_ADAPTERS["mbert"]["en"], hub.LANG_ADAPTERS["xlmr"]["en"]}


def test_model_family_from_config_model_type(tmp_path):
    """Hyperparameter columns follow config.model_type, not the name: an XLM-R model in a directory called 'bert'."""
    from tiny import save_tiny_model
    assert hub.model_family(str(save_tiny_model(tmp_path / "bert-lookalike", "xlmr"))) == "xlmr"
    assert hub.model_family(str(save_tiny_model(tmp_path / "xlm-lookalike", "bert"))) == "mbert"
    assert [hub.model_family(m) for m in hub.MODELS.values()] == ["mbert", "xlmr", "mdeberta"]
    assert hub.model_tag("bert-base-multilingual-cased") == "mbert" and hub.model_tag("some/dir/") == "dir"


def test_missing_adapterhub_adapters_say_how_to_train_them():
    with pytest.raises(ValueError, match="no th language adapter .* --task mlm --lang th"):
        hub.lang_adapter_id(hub.MODELS["mbert"], "th")
    with pytest.raises(ValueError, match="no de language adapter for microsoft/mdeberta-v3-base; train one"):
        hub.lang_adapter_id(hub.MODELS["mdeberta"], "de")  # AdapterHub has none for mDeBERTa
    with pytest.raises(ValueError, match="no AdapterHub language adapters are listed for my/encoder"):
        hub.lang_adapter_id("my/encoder", "de")
    assert hub.lang_adapter_id("bert-base-multilingual-cased", "vi") == "AdapterHub/bert-base-multilingual-cased_vi_wiki_pfeiffer"
    assert set(hub.LANG_ADAPTERS["mbert"].values()) | set(hub.LANG_ADAPTERS["xlmr"].values()) <= ADAPTERHUB_INDEX


def test_mdeberta_tokenizer_converts_from_spm_model(tmp_path):
    """microsoft/mdeberta-v3-base ships only spm.model: transformers converts it (needs sentencepiece + protobuf,
    both in requirements.txt). A tiny DeBERTa-v2 SentencePiece model, loaded as the real one is."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, DebertaV2Config
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the man went home", "der Hund lief schnell", "el perro corre rápido"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm"), vocab_size=28,
                                   model_type="unigram", character_coverage=1.0, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
                                   user_defined_symbols=["[MASK]"], minloglevel=2)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    DebertaV2Config(vocab_size=28, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path), use_fast=True)  # as fun.model.load_encoder loads it
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    assert tok.is_fast and len(tok) == processor.get_piece_size()
    text = "der Hund lief schnell"
    ids = tok(text)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", *processor.encode(text, out_type=str), "[SEP]"]


def test_max_length_beyond_the_models_positions_is_one_line(tmp_path, nli_files, capsys):
    from tiny import save_tiny_model
    model = save_tiny_model(tmp_path / "short", "xlmr")  # 128 positions, counted from padding_idx (0) + 1: 127 tokens
    out = tmp_path / "run"
    code = train.main(["--model", str(model), "--train-file", str(nli_files[0]), "--dev-file", str(nli_files[1]),
                       "--output-dir", str(out), "--max-length", "384", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --max-length 384: " in err and "at most 127 tokens" in err and "Traceback" not in err
    assert not out.exists()


# --- offline: run from a cache ------------------------------------------------------------------------------------

def hub_snapshot(cache: Path, repo_id: str, files: dict[str, Path | bytes], repo_type: str = "model",
                 revision: str = "main") -> Path:
    """A repository in the Hugging Face Hub cache layout (HF_HUB_CACHE): refs/<revision> → snapshots/<commit>/."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    (folder / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    for name, content in files.items():
        target = folder / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    return folder / "snapshots" / commit


def dataset_cache(cache: Path, repo_id: str, config: str | None, splits: dict[str, list[dict]]) -> None:
    """A dataset as datasets stores an earlier Hub load (HF_DATASETS_CACHE/<namespace>___<name>/<config>/...)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    namespace, name = repo_id.split("/")
    name = datasets.naming.camelcase_to_snakecase(name)
    directory = cache / f"{namespace}___{name}" / (config or "default") / "0.0.0" / "0123456789abcdef"
    directory.mkdir(parents=True, exist_ok=True)
    infos = datasets.SplitDict(dataset_name=name)
    for split, rows in splits.items():
        table = datasets.Dataset.from_list(rows)
        with ArrowWriter(path=str(directory / f"{name}-{split}.arrow"), features=table.features) as writer:
            writer.write_table(table.data.table)
            count, size = writer.finalize()
        infos.add(datasets.SplitInfo(name=split, num_examples=count, num_bytes=size, dataset_name=name))
    datasets.DatasetInfo(dataset_name=name, config_name=config or "default", features=table.features,
                         splits=infos).write_to_directory(str(directory))


def test_train_and_evaluate_offline_from_the_caches(tmp_path):
    """What prefetch.py leaves in the caches is all a MAD-X preset run needs with HF_HUB_OFFLINE=1: the model by its
    Hub id, AdapterHub adapters, MultiNLI and XNLI; COPA (read with data_dir) from its Parquet files."""
    from safetensors.torch import save_file
    from fun.adapterhub import save_adapterhub
    from fun.adapters import AdapterSet
    from tiny import save_tiny_model

    home = tmp_path / "hf"
    model_dir = save_tiny_model(tmp_path / "mbert", "bert")
    hub_snapshot(home / "hub", hub.MODELS["mbert"], {p.name: p for p in model_dir.iterdir()})
    for lang in ("en", "de", "sw"):
        adapter = save_adapterhub(AdapterSet(32, 4, 2, invertible=True), tmp_path / f"la-{lang}", lang, "tiny", "bert")
        hub_snapshot(home / "hub", hub.LANG_ADAPTERS["mbert"][lang], {p.name: p for p in adapter.iterdir()})
    nli = [json.loads(line) for line in write_nli(tmp_path / "nli.jsonl", 24).read_text().splitlines()]
    dataset_cache(home / "datasets", "nyu-mll/multi_nli", None, {"train": nli})
    for lang in ("en", "de", "sw"):
        dataset_cache(home / "datasets", "facebook/xnli", lang, {"validation": nli[:8], "test": nli[8:16]})
    import datasets
    copa = home / "copa.parquet"
    datasets.Dataset.from_list(rows_for("aps/super_glue")).to_parquet(str(copa))
    hub_snapshot(home / "hub", "aps/super_glue", {"copa/train/0000.parquet": copa}, "dataset", "refs/convert/parquet")

    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None), env.pop("HF_DATASETS_CACHE", None)
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset", "xnli-mbert-gu", "--output-dir", str(run),
           "--max-steps", "3", "--k", "1", "--batch-size", "4", "--eval-every", "3", "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["lang_adapter"] == hub.LANG_ADAPTERS["mbert"]["en"]
    cmd = [sys.executable, str(ROOT / "evaluate.py"), str(run), "--languages", "de,sw", "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run / "results-test.json").read_text())
    assert set(results["per_language"]) == {"de", "sw"} and results["lang_adapters"]["sw"] == hub.LANG_ADAPTERS["mbert"]["sw"]
    # not prefetched: one line saying so
    cmd = [sys.executable, str(ROOT / "evaluate.py"), str(run), "--languages", "ar", "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "prefetch.py" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # COPA's data_dir rows come from the Hub cache's Parquet files
    code = ("import sys; sys.path.insert(0, '.'); from fun import hub; "
            "print(len(hub.load_dataset(hub.COPA_TRAIN)))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "4", proc.stderr[-2000:]


def test_prefetch_fetches_what_the_presets_need(monkeypatch, capsys):
    import prefetch
    fetched = []

    def downloads(task, model, lang_adapters, lang, data):
        items = prefetch_downloads(task, model, lang_adapters, lang, data)
        return [(what, lambda what=what: fetched.append(what)) for what, _ in items]

    prefetch_downloads = prefetch.downloads
    monkeypatch.setattr(prefetch, "downloads", downloads)
    assert prefetch.main(["--presets", "xcopa-mbert-gu,xcopa-mbert-standard"]) == 0
    out, err = capsys.readouterr()
    assert fetched[0] == f"model {hub.MODELS['mbert']}" and len(fetched) == len(set(fetched))
    assert f"language adapter {hub.LANG_ADAPTERS['mbert']['en']}" in fetched
    assert "dataset aps/super_glue copa train" in fetched and "dataset cambridgeltl/xcopa qu test" in fetched
    assert "no th language adapter" in err and "--task mlm --lang th" in err  # said once per missing language
    assert "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in out


@pytest.mark.parametrize("error, says", [
    (RuntimeError("Dataset scripts are no longer supported, but found mlqa.py"), "only a loading script"),
    (ValueError("Invalid HF URI. Repository id must be 'namespace/name', got 'xnli'"), "no such repository"),
    (ValueError("BuilderConfig 'xquad.xx' not found. Available: ['xquad.ar', 'xquad.de']"), "no such config"),
    (ValueError('Unknown split "dev". Should be one of [\'train\', \'test\'].'), "no such split"),
    (ConnectionError("Couldn't reach 'facebook/xnli' on the Hub (ConnectError)"), "no network"),
    (ValueError("Couldn't find cache for facebook/xnli for config 'ar'"), "not in the local cache"),
])
def test_hub_errors_say_what_failed(error, says):
    """One sentence per way a Hub load fails: not the same "offline?" for every error."""
    assert says in hub.explain(error)

"""Every Hugging Face Hub resource the project uses, in one table: datasets, models, language adapters.

All code that touches the Hub reads this module; each row names the public record that confirms it. Dataset ids
are namespaced (datasets >= 5 rejects short ids such as "xnli") and every dataset loads from data files alone
(datasets >= 4 refuses loading scripts): where a repository's main branch still holds only a script, the row
reads the Hub's automatic Parquet conversion (`revision="refs/convert/parquet"`). `python -m pytest -m online`
loads every row (tests/test_hub_online.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


# --- datasets ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubDataset:
    """One split of a Hub dataset: `load_dataset(id, config, split=split, revision=..., data_dir=...)`.
    `{lang}` in `config` is replaced by the language code."""
    id: str
    config: str | None
    split: str
    revision: str | None = None
    data_dir: str | None = None

    def args(self, lang: str = "en") -> dict:
        """The keyword arguments of `datasets.load_dataset` for this split in `lang`."""
        kwargs = dict(path=self.id, name=self.config.format(lang=lang) if self.config else None, split=self.split)
        kwargs.update({k: v for k, v in (("revision", self.revision), ("data_dir", self.data_dir)) if v})
        return kwargs


# MultiNLI: Parquet on main since "Convert dataset to Parquet" (nyu-mll/multi_nli commit da70db2); config "default";
# splits train / validation_matched / validation_mismatched. https://huggingface.co/datasets/nyu-mll/multi_nli
MULTI_NLI_TRAIN = HubDataset("nyu-mll/multi_nli", None, "train")
# XNLI: Parquet per language (facebook/xnli commit b8dd5d7): configs ar bg de el en es fr hi ru sw th tr ur vi zh,
# splits train / validation / test. https://huggingface.co/datasets/facebook/xnli
XNLI_DEV = HubDataset("facebook/xnli", "{lang}", "validation")
XNLI_TEST = HubDataset("facebook/xnli", "{lang}", "test")
# COPA: aps/super_glue's main branch holds only super_glue.py (tree ee65e3e); the Hub's Parquet conversion has
# copa/{train,validation,test}/0000.parquet (refs/convert/parquet, commits 5ac8656, a65f286); test labels are -1.
COPA_TRAIN = HubDataset("aps/super_glue", None, "train", revision="refs/convert/parquet", data_dir="copa")
COPA_DEV = HubDataset("aps/super_glue", None, "validation", revision="refs/convert/parquet", data_dir="copa")
# XCOPA: Parquet per language (cambridgeltl/xcopa commit 042f789): configs et ht id it qu sw ta th tr vi zh,
# splits validation / test. https://huggingface.co/datasets/cambridgeltl/xcopa
XCOPA_DEV = HubDataset("cambridgeltl/xcopa", "{lang}", "validation")
XCOPA_TEST = HubDataset("cambridgeltl/xcopa", "{lang}", "test")
# SQuAD v1.1: config plain_text, splits train / validation; loaded by datasets' own test suite
# (huggingface/datasets tests/test_inspect.py). https://huggingface.co/datasets/rajpurkar/squad
SQUAD_TRAIN = HubDataset("rajpurkar/squad", "plain_text", "train")
SQUAD_DEV = HubDataset("rajpurkar/squad", "plain_text", "validation")
# XQuAD: Parquet per language (google/xquad commit 51adfef): configs xquad.<lang>, one split, validation.
XQUAD_TEST = HubDataset("google/xquad", "xquad.{lang}", "validation")
# MLQA: facebook/mlqa holds only mlqa.py, which datasets >= 4 refuses. XTREME's copy is Parquet (google/xtreme
# commit ec5f1f4): configs MLQA.<context lang>.<question lang>, splits test / validation, built from the official
# MLQA_V1 files (test-context-<c>-question-<q>.json). https://huggingface.co/datasets/google/xtreme
MLQA_TEST = HubDataset("google/xtreme", "MLQA.{lang}.{lang}", "test")
MLQA_DEV = HubDataset("google/xtreme", "MLQA.{lang}.{lang}", "validation")
# Wikipedia text for MLM language adapters: configs 20231101.<lang>, split train, a `text` column (Parquet;
# wikimedia/wikipedia commit a350536 for sw). https://huggingface.co/datasets/wikimedia/wikipedia
WIKIPEDIA = HubDataset("wikimedia/wikipedia", "20231101.{lang}", "train")

TRAIN = {"xnli": MULTI_NLI_TRAIN, "xcopa": COPA_TRAIN, "xquad": SQUAD_TRAIN, "mlqa": SQUAD_TRAIN}
ENGLISH_DEV = {"xnli": XNLI_DEV, "xcopa": COPA_DEV, "xquad": SQUAD_DEV, "mlqa": SQUAD_DEV}  # model selection
TARGETS = {"xnli": {"dev": XNLI_DEV, "test": XNLI_TEST}, "xcopa": {"dev": XCOPA_DEV, "test": XCOPA_TEST},
           "xquad": {"test": XQUAD_TEST}, "mlqa": {"dev": MLQA_DEV, "test": MLQA_TEST}}


def dataset_for(task: str, split: str, lang: str = "en") -> HubDataset:
    """The Hub dataset of a task's split ("train", "dev", "test") in `lang`: English training data, English dev data
    for model selection, per-language data for zero-shot evaluation. ValueError where the Hub has none."""
    if split == "train":
        return TRAIN[task]
    if split == "dev" and lang == "en":
        return ENGLISH_DEV[task]
    if split not in TARGETS[task]:
        raise ValueError(f"{task} has no {split} split on the Hub (its splits: {', '.join(TARGETS[task])})")
    if task == "xcopa" and lang == "en":  # SuperGLUE hides COPA's test labels (-1)
        raise ValueError("the English XCOPA test set (the COPA originals) has no labels on the Hub; "
                         "pass a local copy of COPA's test.jsonl")
    return TARGETS[task][split]


# Repositories whose main branch holds only a loading script (datasets >= 4 refuses them): read through the Hub's
# Parquet conversion instead. aps/super_glue: tree ee65e3e; facebook/mlqa: tree 397ed40 (replaced by google/xtreme).
SCRIPT_ONLY = frozenset({"aps/super_glue", "facebook/mlqa"})


class HubError(OSError):
    """A Hub resource could not be loaded; the message says why (offline, unknown id, script-only, no such config)."""


def load_dataset(spec: HubDataset, lang: str = "en"):
    """`datasets.load_dataset` for one table row, with one clear error for each way it fails.

    Offline (HF_HUB_OFFLINE=1), datasets reads its own cache of an earlier load, which it finds by config name;
    a row read with `data_dir` has none, so its Parquet files are read from the Hub cache (prefetch.py puts them
    there)."""
    import datasets

    kwargs = spec.args(lang)
    what = f"dataset {spec.id}" + (f" config {kwargs['name']}" if kwargs["name"] else "") + f" split {spec.split}"
    try:
        if spec.data_dir and offline():
            return datasets.load_dataset("parquet", data_files=str(cached_files(spec) / "*.parquet"), split="train")
        return datasets.load_dataset(**kwargs)
    except Exception as err:  # the exception types differ across datasets / huggingface_hub versions
        raise HubError(f"{what}: {explain(err)}") from None


def offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def parquet_pattern(spec: HubDataset) -> str:
    """The files of a `data_dir` row in the Hub's Parquet conversion: <data_dir>/<split>/NNNN.parquet."""
    return f"{spec.data_dir}/{spec.split}/*.parquet"


def cached_files(spec: HubDataset, download: bool = False) -> Path:
    """The directory of a `data_dir` row's Parquet files in the local Hub cache (`download`: fetch them first)."""
    from huggingface_hub import snapshot_download
    root = snapshot_download(spec.id, repo_type="dataset", revision=spec.revision,
                             allow_patterns=[parquet_pattern(spec)], local_files_only=not download)
    return Path(root) / spec.data_dir / spec.split


def explain(err: Exception) -> str:
    """What went wrong when loading from the Hub, in one sentence, from the exception datasets / hub raised."""
    text, name = str(err), type(err).__name__
    if "scripts are no longer supported" in text:
        return "the repository holds only a loading script, which datasets >= 4 refuses (" + text.splitlines()[0] + ")"
    if "Repository id must be" in text or name in ("RepositoryNotFoundError", "DatasetNotFoundError"):
        return f"no such repository on the Hub (unknown or renamed id; {name})"
    if name in ("RevisionNotFoundError",):
        return f"no such revision ({name})"
    if "BuilderConfig" in text or "Config name is missing" in text or "config" in text.lower() and "available" in text:
        return f"no such config ({text.splitlines()[0][:200]})"
    if "Unknown split" in text or "split" in text.lower() and "should be one of" in text:
        return f"no such split ({text.splitlines()[0][:200]})"
    if "Couldn't find cache" in text or "is not cached" in text or "outgoing traffic has been disabled" in text.lower():
        return ("not in the local cache, and offline (HF_HUB_OFFLINE=1); fetch it on a machine with internet with "
                "python prefetch.py, or pass local files")
    if name in ("ConnectionError", "ConnectError", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
                "MaxRetryError", "Timeout", "ReadTimeout") or "offline" in text.lower() or "connect" in text.lower():
        return ("no network (or HF_HUB_OFFLINE=1) and not in the local cache; on a machine with internet run "
                "python prefetch.py first, or pass local files")
    return f"{name}: {text.splitlines()[0][:300] if text else ''}"


# --- models -----------------------------------------------------------------------------------------------------

# Canonical ids (the old short ids redirect to them): google-bert/bert-base-multilingual-cased and
# FacebookAI/xlm-roberta-base (https://huggingface.co/google-bert/bert-base-multilingual-cased,
# https://huggingface.co/FacebookAI/xlm-roberta-base); microsoft/mdeberta-v3-base ships only spm.model and
# pytorch_model.bin, so its tokenizer is converted by transformers (needs sentencepiece and protobuf).
MODELS = {"mbert": "google-bert/bert-base-multilingual-cased", "xlmr": "FacebookAI/xlm-roberta-base",
          "mdeberta": "microsoft/mdeberta-v3-base"}
LEGACY_MODEL_IDS = {"bert-base-multilingual-cased": "mbert", "xlm-roberta-base": "xlmr"}
MODEL_TYPES = {"mbert": "bert", "xlmr": "xlm-roberta", "mdeberta": "deberta-v2"}
# paper Table 3 has columns for mBERT and XLM-R; the family of a model type picks its column (mDeBERTa: mBERT's)
FAMILIES = {"bert": "mbert", "xlm-roberta": "xlmr", "roberta": "xlmr", "deberta-v2": "mdeberta"}


def model_tag(model: str) -> str:
    """mbert / xlmr / mdeberta for the paper's models (any of their ids), else the model directory's name."""
    for tag, hub_id in MODELS.items():
        if model == hub_id:
            return tag
    return LEGACY_MODEL_IDS.get(model) or Path(model.rstrip("/")).name


def model_type(model: str) -> str:
    """`config.model_type` of a model: from the table for the paper's ids, else its config.json (a local
    directory, or the Hub through transformers' cache)."""
    tag = model_tag(model)
    if tag in MODEL_TYPES and (model in MODELS.values() or model in LEGACY_MODEL_IDS):
        return MODEL_TYPES[tag]
    config = Path(model) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type", "")
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(model).model_type
    except Exception as err:
        raise HubError(f"{model}: not a local model directory, and its config could not be loaded from the Hub: "
                       f"{explain(err)}") from None


def model_family(model: str) -> str:
    """The paper's hyperparameter column for a model, from its `config.model_type` (mDeBERTa takes mBERT's values)."""
    return FAMILIES.get(model_type(model), "mbert")


# --- MAD-X language adapters ------------------------------------------------------------------------------------

# AdapterHub's index (github.com/adapter-hub/Hub, adapters/ukp/*.yaml at a53c6b7) moved every adapter to the HF Hub
# as AdapterHub/<index file name> (scripts/migrate_to_hf.py, added in 85848b06); each repository holds
# adapter_config.json + pytorch_adapter.bin. Most are <model>-<lang>-wiki_pfeiffer; three mBERT ones are named
# irregularly (tr, vi, id). mBERT: gelu, rf 2, version "nd"; XLM-R base: relu, rf 2, version "madx".
# No adapter exists for mBERT bg it ro ta th ur, XLM-R base bg fr ro ur, or any mDeBERTa language:
# train one with `python train.py --task mlm --lang LANG ...` (paper App. B).
_MBERT = "AdapterHub/bert-base-multilingual-cased-{}-wiki_pfeiffer"
_XLMR = "AdapterHub/xlm-roberta-base-{}-wiki_pfeiffer"
LANG_ADAPTERS: dict[str, dict[str, str]] = {
    "mbert": {**{lang: _MBERT.format(lang) for lang in
                 "ar de el en es et fr hi ht ja qu ru sw zh".split()},
              "tr": "AdapterHub/bert-base-multilingual-cased_tr_wiki_pfeiffer",
              "vi": "AdapterHub/bert-base-multilingual-cased_vi_wiki_pfeiffer",
              "id": "AdapterHub/bert-base-multilingual-cased_wiki_id_pfeiffer"},
    "xlmr": {lang: _XLMR.format(lang) for lang in
             "ar de el en es et hi ht id it ja qu ru sw ta th tr vi zh".split()},
    "mdeberta": {},
}


def lang_adapter_id(model: str, lang: str) -> str:
    """The AdapterHub language adapter of `lang` for one of the paper's models; ValueError when there is none."""
    tag = model_tag(model)
    if tag not in LANG_ADAPTERS:
        raise ValueError(f"no AdapterHub language adapters are listed for {model}; train one with "
                         f"`python train.py --task mlm --lang {lang} --model {model} ...`")
    if lang not in LANG_ADAPTERS[tag]:
        raise ValueError(f"AdapterHub has no {lang} language adapter for {MODELS[tag]}; train one with "
                         f"`python train.py --task mlm --lang {lang} --model {MODELS[tag]} ...` (paper App. B)")
    return LANG_ADAPTERS[tag][lang]

"""Your own task (`--task classify`): sentence or sentence-pair classification with an English training set and
per-language test sets, from local files or a Hugging Face Hub dataset.

It takes exactly XNLI's path through the model (paper §3.1, §4): one or two text columns are tokenised as one
sequence or a pair, a first-token classification head gives logits (B, 1, labels), the loss is cross-entropy,
and the English dev set selects the checkpoint by accuracy. Its default hyperparameters are paper Table 3's
MultiNLI column. Metrics: accuracy and macro-F1.

Labels are strings or integers. The label set is `--labels` in that order, else the sorted set of the training
labels. When the labels are names, an integer is a class id, a position in the set (as MultiNLI's JSONL and the
Hub's ClassLabel columns store them). A dev or test label outside the set is an error naming the file, line and
label.

Local files: CSV, TSV or JSONL (fun.data.read_table: a CSV/TSV header, or the text columns then the label column
by position). A test directory holds one file per language, `<split>-<lang>.<tsv|csv|jsonl>` (`test-de.tsv`,
`dev-fr.jsonl`), or the names of `--file-pattern`, e.g. `'{lang}/{split}.csv'`. Rows of a file with a `language`
column are those of the language asked for. Hub: `--dataset ID`, a config per language (`--dataset-config '{lang}'`)
and the split names of `--dataset-{train,dev,test}-split`, under fun/hub.py's rules (namespaced ids, no scripts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fun import hub
from fun.data import LanguageNotFound, Split, read_table
from fun.heads import ClassificationHead
from fun.metrics import accuracy, macro_f1
from fun.tasks.base import SettingError, Task, argmax_choices
from fun.tasks.xnli import XNLI

SPLITS = ("train", "dev", "test")
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl")  # the default names: <split>-<lang><suffix>
LANGUAGE_COLUMN = "language"


class Classification(Task):
    name = "classify"
    metric = "accuracy"          # model selection on the English dev set, as XNLI
    languages: tuple[str, ...] = ()
    defaults = XNLI.defaults     # paper Table 3, MultiNLI: the closest of the paper's tasks

    def __init__(self, text_columns: list[str], label_column: str = "label", labels: list[str] | None = None,
                 id_column: str = "id", languages: list[str] | None = None, file_pattern: str | None = None,
                 dataset: str | None = None, dataset_config: str | None = None, dataset_revision: str | None = None,
                 dataset_splits: Mapping[str, str] | None = None, train_file: str | None = None):
        if not text_columns or len(text_columns) > 2:
            raise SettingError("text_columns", "give one text column, or two for sentence pairs, e.g. "
                                               "--text-columns sentence1,sentence2")
        if labels is not None and (len(set(labels)) != len(labels) or len(labels) < 2):
            raise SettingError("labels", "give two or more distinct labels, in the order of the class ids")
        if file_pattern is not None and "{lang}" not in file_pattern:
            raise SettingError("file_pattern", "the pattern needs {lang} (and may use {split}), e.g. '{split}-{lang}.tsv'")
        if dataset is not None and dataset.count("/") != 1:
            raise SettingError("dataset", f"{dataset!r} is not a namespaced Hub id (owner/name): datasets >= 5 "
                                          "refuses short ids; e.g. google-research-datasets/paws-x")
        self.text_columns, self.label_column, self.id_column = list(text_columns), label_column, id_column
        self.languages = tuple(languages or ())
        self.file_pattern, self.dataset, self.dataset_config = file_pattern, dataset, dataset_config
        self.dataset_revision = dataset_revision
        self.dataset_splits = {"train": "train", "dev": "validation", "test": "test", **(dataset_splits or {})}
        self.train_file = train_file
        self.labels = tuple(labels) if labels is not None else None  # None: found in the training data when needed
        self.cache: dict[tuple, list] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Classification:
        """The task a run's settings (TrainConfig fields or config.json) describe."""
        get = settings.get
        return cls(get("text_columns") or [], get("label_column") or "label", get("labels"), get("id_column") or "id",
                   get("languages"), get("file_pattern"), get("dataset"), get("dataset_config"),
                   get("dataset_revision"), {split: get(f"dataset_{split}_split") for split in SPLITS
                                             if get(f"dataset_{split}_split")}, get("train_file"))

    def check_training(self, settings: Mapping[str, Any]) -> None:
        for split in ("train", "dev"):
            if not settings.get(f"{split}_file") and self.dataset is None:
                raise SettingError(f"{split}_file", f"--task classify needs {split} data: --{split}-file FILE, or "
                                                    "--dataset ID for a Hub dataset")

    def settings(self) -> dict:
        return dict(text_columns=self.text_columns, label_column=self.label_column, labels=list(self.label_set()),
                    id_column=self.id_column, languages=list(self.languages) or None, file_pattern=self.file_pattern,
                    dataset=self.dataset, dataset_config=self.dataset_config, dataset_revision=self.dataset_revision,
                    **{f"dataset_{split}_split": self.dataset_splits[split] for split in SPLITS})

    # --- labels -------------------------------------------------------------------------------------------------
    def label_set(self) -> tuple[str, ...]:
        """The class names in class-id order: --labels, or the sorted set of the training labels (numerically when
        they are all integers), read from the training data on first use."""
        if self.labels is None:
            found = {label for _, _, label in self.rows("train", self.train_file, "en")}
            self.labels = tuple(sorted(found, key=lambda x: (0, int(x), x) if is_integer(x) else (1, 0, x)))
            if len(self.labels) < 2:
                raise ValueError(f"training data: one label only ({', '.join(self.labels)}); a classifier needs two "
                                 "or more")
        return self.labels

    def label_id(self, value: str, where: str) -> int:
        """A label's class id: its position in the label set; an integer is itself a class id, unless the labels
        are integers themselves."""
        labels = self.label_set()
        if value in labels:
            return labels.index(value)
        numeric = all(is_integer(x) for x in labels)
        if not numeric and is_integer(value) and 0 <= int(value) < len(labels):
            return int(value)
        hint = "; if the training data stores class ids, name the classes in order with --labels" if numeric else ""
        raise ValueError(f"{where}: label {value!r} is not one of the labels {', '.join(labels)}{hint}")

    def label_name(self, index: int) -> str:
        return self.label_set()[index]

    # --- data ---------------------------------------------------------------------------------------------------
    def rows(self, split: str, path: str | None, lang: str) -> list[tuple[dict, str, str]]:
        """(example {line | row[, id], texts}, where it is for errors, its label as a string) per row. The training
        data is read once, though both the label set and the training split need it."""
        key = (split, path, lang)
        if key in self.cache:
            return self.cache[key]
        rows = self.read_file(path, lang) if path is not None else self.read_hub(split, lang)
        if split == "train":
            self.cache[key] = rows
        return rows

    def read_file(self, path: str, lang: str) -> list[tuple[dict, str, str]]:
        columns = [*self.text_columns, self.label_column]
        out, languages = [], set()
        for n, row in read_table(path, columns, f"{self.name} data file"):
            if LANGUAGE_COLUMN in row:  # a file of several languages: the rows of `lang`
                languages.add(str(row[LANGUAGE_COLUMN]))
                if str(row[LANGUAGE_COLUMN]) != lang:
                    continue
            where = {"line": n} | ({"id": row[self.id_column]} if self.id_column in row else {})
            out.append((where | {"texts": self.texts(row, f"{path}:{n}")}, f"{path}:{n}",
                        str(row[self.label_column]).strip()))
        if not out and languages:
            raise LanguageNotFound(f"{path}: no rows of language {lang!r} in its language column "
                                   f"(it holds {', '.join(sorted(languages))})")
        return out

    def read_hub(self, split: str, lang: str) -> list[tuple[dict, str, str]]:
        spec = self.hub_split(split, lang)
        try:
            rows = hub.load_dataset(spec, lang)
        except hub.HubError as err:
            if "loading script" not in str(err) or spec.revision:
                raise
            raise hub.HubError(f"{err}; read the Hub's Parquet conversion of it with --dataset-revision "
                               "refs/convert/parquet") from None
        columns = list(getattr(rows, "column_names", None) or (rows[0] if len(rows) else []))
        missing = [c for c in (*self.text_columns, self.label_column) if c not in columns]
        what = f"Hub dataset {spec.id}" + (f" config {spec.args(lang)['name']}" if spec.config else "") + \
            f" split {spec.split}"
        if missing:
            raise ValueError(f"{what}: no column {', '.join(missing)} (columns: {', '.join(columns)})")
        feature = getattr(rows, "features", {}).get(self.label_column)
        names = getattr(feature, "names", None)  # a ClassLabel column stores class ids
        out = []
        for i, row in enumerate(rows):
            label = row[self.label_column]
            if names is not None:
                if label == -1:  # the Hub's "no label" (MultiNLI, PAWS-X): left out
                    continue
                label = names[label]
            where = {"row": i} | ({"id": row[self.id_column]} if self.id_column in row else {})
            out.append((where | {"texts": self.texts(row, f"{what} row {i}")}, f"{what} row {i}", str(label).strip()))
        return out

    def hub_split(self, split: str, lang: str) -> hub.HubDataset:
        """The Hub dataset split of `split` in `lang`: `{lang}` in --dataset-config or a split name is the language."""
        name = self.dataset_splits[split].format(lang=lang)
        return hub.HubDataset(self.dataset, self.dataset_config, name, revision=self.dataset_revision)

    def texts(self, row: Mapping, where: str) -> list[str]:
        texts = [row[c] for c in self.text_columns]
        for column, text in zip(self.text_columns, texts):
            if not isinstance(text, str):
                raise ValueError(f"{where}: column {column!r} is {text!r}; expected a text")
        return texts

    def load(self, split: str, path: str | None = None, lang: str = "en") -> list[dict]:
        if path is not None and Path(path).is_dir():
            path = str(self.local_file(split, path, lang))
        if path is None and self.dataset is None:
            raise ValueError(f"no {split} data: pass a local file or directory (this run has no --dataset)")
        return [dict(example, label=self.label_id(label, where)) for example, where, label in self.rows(split, path, lang)]

    def local_files(self, split: str, directory: str | Path, lang: str) -> list[Path]:
        patterns = [self.file_pattern] if self.file_pattern else [f"{{split}}-{{lang}}{s}" for s in FILE_SUFFIXES]
        return [Path(directory) / p.format(split=split, lang=lang) for p in patterns]

    def target_languages(self, split: str, directory: str | Path | None) -> tuple[str, ...]:
        """--languages of the run, else the languages of the per-language files in `directory`."""
        if self.languages or directory is None:
            return self.languages
        found = set()
        for pattern in [self.file_pattern] if self.file_pattern else [f"{{split}}-{{lang}}{s}" for s in FILE_SUFFIXES]:
            regex = re.escape(pattern.format(split=split, lang="\0")).replace("\0", "(?P<lang>[^/]+)")
            found |= {m["lang"] for p in Path(directory).glob(pattern.format(split=split, lang="*"))
                      if (m := re.fullmatch(regex, p.relative_to(directory).as_posix()))}
        return tuple(sorted(found - {self.source_lang}))

    def known_languages(self) -> None:
        return None  # any language a file or config is named after

    # --- model and metrics ----------------------------------------------------------------------------------------
    def encode(self, examples, tokenizer, max_length, train):
        columns = [[e["texts"][c] for e in examples] for c in range(len(self.text_columns))]
        enc = tokenizer(*columns, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{**{k: enc[k][i] for k in keys}, "labels": e["label"]} for i, e in enumerate(examples)]

    def make_head(self, hidden_size, dropout):
        return ClassificationHead(hidden_size, len(self.label_set()), dropout)

    def decode(self, split: Split, logits) -> list[int]:
        return argmax_choices(logits)

    def metrics(self, split: Split, predictions: list[int]) -> dict[str, float]:
        labels = [e["label"] for e in split.examples]
        return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}


def is_integer(value: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", value) is not None

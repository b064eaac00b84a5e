"""Opt-in, with internet: every Hub resource of fun/hub.py loads with today's libraries.

    python -m pytest -m online          # skipped when huggingface.co cannot be reached; CI does not run them

5 rows of every dataset × config × split the code reads (streamed, so nothing large is downloaded), the config and
tokenizer of each model, and the English language adapter of each model that has AdapterHub adapters.
"""

from __future__ import annotations

import itertools
import socket
import types

import pytest

from fun import hub
from fun.tasks import TASKS


def reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
        return True
    except OSError:
        return False


pytestmark = [pytest.mark.online, pytest.mark.skipif(not reachable(), reason="huggingface.co is not reachable")]


def dataset_rows() -> list[tuple[hub.HubDataset, str]]:
    """Every (row, language) that train.py and evaluate.py read from the Hub, plus Wikipedia for one language."""
    rows = {}
    for task in TASKS.values():
        for split, langs in (("train", ["en"]), ("dev", ["en", *task.languages, *task.extra_languages]),
                             ("test", ["en", *task.languages, *task.extra_languages])):
            for lang in langs:
                try:
                    spec = hub.dataset_for(task.name, split, lang)
                except ValueError:
                    continue
                rows.setdefault((spec, spec.args(lang)["name"]), (spec, lang))
    return list(rows.values()) + [(hub.WIKIPEDIA, "sw")]


COLUMNS = {"nyu-mll/multi_nli": {"premise", "hypothesis", "label"}, "facebook/xnli": {"premise", "hypothesis", "label"},
           "aps/super_glue": {"premise", "choice1", "choice2", "question", "label"},
           "cambridgeltl/xcopa": {"premise", "choice1", "choice2", "question", "label"},
           "rajpurkar/squad": {"id", "question", "context", "answers"}, "google/xquad": {"id", "question", "context", "answers"},
           "google/xtreme": {"id", "question", "context", "answers"}, "wikimedia/wikipedia": {"text"}}


@pytest.mark.parametrize("spec, lang", dataset_rows(), ids=lambda x: x if isinstance(x, str) else f"{x.id}:{x.split}")
def test_dataset_loads_five_rows(spec, lang):
    import datasets
    stream = datasets.load_dataset(**spec.args(lang), streaming=True)
    rows = list(itertools.islice(stream, 5))
    assert len(rows) == 5 and COLUMNS[spec.id] <= set(rows[0])


@pytest.mark.parametrize("tag", list(hub.MODELS))
def test_model_config_and_tokenizer_load(tag):
    from transformers import AutoConfig, AutoTokenizer
    config = AutoConfig.from_pretrained(hub.MODELS[tag])
    assert config.model_type == hub.MODEL_TYPES[tag] and hub.model_family(hub.MODELS[tag]) == tag
    tokenizer = AutoTokenizer.from_pretrained(hub.MODELS[tag], use_fast=True)
    assert len(tokenizer) > 100_000 and tokenizer.mask_token_id is not None
    ids = tokenizer("Der Hund lief schnell.")["input_ids"]
    assert tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("tag", [tag for tag in hub.MODELS if hub.LANG_ADAPTERS[tag]])
def test_english_language_adapter_loads(tag):
    from transformers import AutoConfig
    from fun.adapterhub import load_adapterhub, resolve_directory
    directory = resolve_directory(hub.LANG_ADAPTERS[tag]["en"])
    adapter = load_adapterhub(directory, types.SimpleNamespace(config=AutoConfig.from_pretrained(hub.MODELS[tag])))
    assert adapter.config["reduction_factor"] == 2 and adapter.invertible is not None


def test_readme_hub_example_loads_trains_and_evaluates(tmp_path):
    """The README's Hub example (`--task classify` on PAWS-X) as written, with a tiny model and a few examples: every
    config and split its flags name loads, trains two steps and evaluates in every language."""
    import json

    import evaluate
    import train
    from test_classify import readme_command
    from tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    run = tmp_path / "run"
    small = ["--model", str(model), "--output-dir", str(run), "--max-steps", "2", "--batch-size", "4",
             "--max-train-samples", "16", "--max-dev-samples", "8", "--no-progress"]
    assert train.main([*readme_command("**A Hub example", "train.py"), *small]) == 0
    assert evaluate.main([str(run), "--max-samples", "8", "--no-progress"]) == 0
    results = json.loads((run / "results-test.json").read_text())
    assert set(results["per_language"]) == {"de", "es", "fr", "ja", "ko", "zh"} and results["source"]

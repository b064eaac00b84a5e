import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

torch.set_num_threads(1)  # tiny models: threads only add overhead, and keep CPU results reproducible


def pytest_configure(config):
    """The tests are offline: no call may reach the Hugging Face Hub (and none waits for its retries), except
    the opt-in `-m online` tests."""
    if "online" not in (config.option.markexpr or ""):
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    from tiny import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory):
    from tiny import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("tiny-xlmr"), "xlmr")


@pytest.fixture(scope="session")
def nli_files(tmp_path_factory):
    from tiny import write_nli
    d = tmp_path_factory.mktemp("nli")
    return write_nli(d / "train.jsonl", 96, seed=0), write_nli(d / "dev.tsv", 30, seed=1, fmt="tsv")

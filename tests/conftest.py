"""Shared test set-up: offline hub access, the shared corpora, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared corpora ($NMT_DATA_DIR, else ../shared/data beside the checkout)."""
    path = Path(os.environ.get("NMT_DATA_DIR", DEFAULT_DATA_DIR))
    if not (path / "multi30k" / "train.en.gz").is_file():
        pytest.fail(f"corpora not found under {path}; set NMT_DATA_DIR to the shared data folder")
    return path

"""Shared test set-up: offline hub access, the shared corpora, small thread counts."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from serving import free_port, serve_command, wait_healthy

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


@pytest.fixture(scope="session")
def tiny_corpus_dir() -> Path:
    """The small German-English corpus shipped with the tests (see tests/data/README.md)."""
    return Path(__file__).resolve().parent / "data" / "tiny"


@pytest.fixture
def tiny_corpus_files(tiny_corpus_dir: Path) -> dict[str, list[str]]:
    """`data.files` for the tiny corpus, German to English (a new dict per test to modify)."""
    return {
        split: [str(tiny_corpus_dir / f"{split}.{lang}") for lang in ("de", "en")]
        for split in ("train", "valid", "test")
    }


def tiny_config_dict(data_dir: Path, run_dir: Path, arch: str = "transformer") -> dict:
    """A config small enough to train in seconds on a Multi30k slice (de -> en)."""
    model = {
        "arch": arch,
        "embed_dim": 32,
        "hidden_size": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "heads": 2,
        "ffn_size": 64,
        "dropout": 0.1,
        "max_positions": 128,
    }
    return {
        "name": "tiny",
        "data": {
            "preset": "multi30k",
            "dir": str(data_dir),
            "src_lang": "de",
            "tgt_lang": "en",
            "train_limit": 1000,
            "max_len": 40,
        },
        "tokenizer": {"vocab_size": 400},
        "model": model,
        "train": {
            "run_dir": str(run_dir),
            "seed": 3,
            "device": "cpu",
            "precision": "fp32",
            "lr": 0.003,
            "warmup_steps": 10,
            "batch_tokens": 1024,
            "max_steps": 40,
            "log_every": 5,
            "valid_every": 20,
            "valid_limit": 16,
            "threads": 1,  # as the tests' process: fixed, not following the machine's load
            "keep_last": 2,
            "keep_best": 1,
        },
        "decode": {"beam_size": 2, "max_len_a": 1.2, "max_len_b": 5},
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: SentencePiece on a Multi30k slice, a tiny Transformer trained briefly."""
    from nmt.config import config_from_dict
    from nmt.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    train(config_from_dict(tiny_config_dict(data_dir, run_dir)))
    return run_dir / "best.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint_en_de(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real checkpoint, translating the other way (en -> de): servers with several
    models route between the two."""
    from nmt.config import config_from_dict
    from nmt.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run_en_de")
    config = tiny_config_dict(data_dir, run_dir)
    config["data"].update(src_lang="en", tgt_lang="de")
    train(config_from_dict(config))
    return run_dir / "best.pt"


@dataclass(frozen=True)
class LiveServer:
    url: str
    api_key: str


LIVE_API_KEY = "live-test-key"


@pytest.fixture(scope="session")
def live_server(tiny_checkpoint: Path, tiny_checkpoint_en_de: Path) -> Iterator[LiveServer]:
    """The real `nmt serve` on a free 127.0.0.1 port, hosting de-en and en-de, with an API key:
    for clients that need real HTTP (a browser, LibreTranslate's client)."""
    port = free_port()
    command = serve_command(
        port,
        *("--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint_en_de)),
        *("--api-key", LIVE_API_KEY),
    )
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(lambda path: httpx.get(url + path, timeout=5), process=process)
        yield LiveServer(url=url, api_key=LIVE_API_KEY)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

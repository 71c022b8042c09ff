#!/usr/bin/env python3
"""Download the preset corpora into a data folder (the layout `data.preset` expects).

    python scripts/download_data.py [--dest DIR] [--corpus multi30k small_parallel_enja] [--force]

DIR defaults to $NMT_DATA_DIR, else ./data. Files already present are kept unless --force.
  DIR/multi30k/{train,val,test_2016_flickr}.{en,de,fr,cs}.gz   raw text
      (github.com/multi30k/dataset)
  DIR/multi30k/tok/{val,test_2016_flickr}.lc.norm.tok.LANG     the literature's tokenized refs
  DIR/small_parallel_enja/{train,dev,test}.{en,ja}
      (github.com/odashi/small_parallel_enja)
Only the standard library is used, so this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1"
ENJA_URL = "https://raw.githubusercontent.com/odashi/small_parallel_enja/master"
MULTI30K_LANGS = ("en", "de", "fr", "cs")
# Upstream also keeps the training files in five parts; used if the whole file is missing.
ENJA_TRAIN_PARTS = 5


def multi30k_files() -> list[tuple[str, str]]:
    """(url, path relative to the data folder) of every Multi30k file."""
    files = []
    for split in ("train", "val", "test_2016_flickr"):
        for lang in MULTI30K_LANGS:
            files.append((f"{MULTI30K_URL}/raw/{split}.{lang}.gz", f"multi30k/{split}.{lang}.gz"))
    for split in ("val", "test_2016_flickr"):
        for lang in MULTI30K_LANGS:
            name = f"{split}.lc.norm.tok.{lang}"
            files.append((f"{MULTI30K_URL}/tok/{name}", f"multi30k/tok/{name}"))
    return files


def enja_files() -> list[tuple[str, str]]:
    return [
        (f"{ENJA_URL}/{split}.{lang}", f"small_parallel_enja/{split}.{lang}")
        for split in ("train", "dev", "test")
        for lang in ("en", "ja")
    ]


def fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "nmt-download-data"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def save(path: Path, data: bytes) -> None:
    """Write through a temporary file so an interrupted download never looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_enja_train(url: str) -> bytes:
    """The whole training file, or its upstream parts (.000 ... .004) joined."""
    try:
        return fetch(url)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    return b"".join(fetch(f"{url}.{i:03d}") for i in range(ENJA_TRAIN_PARTS))


def download(dest: Path, corpora: list[str], force: bool) -> int:
    """Fetch the missing files; returns the number of failures."""
    files = []
    if "multi30k" in corpora:
        files += multi30k_files()
    if "small_parallel_enja" in corpora:
        files += enja_files()
    failures = 0
    for url, relative in files:
        path = dest / relative
        if path.is_file() and not force:
            print(f"have   {path}")
            continue
        try:
            is_enja_train = relative.startswith("small_parallel_enja/train.")
            data = fetch_enja_train(url) if is_enja_train else fetch(url)
        except (urllib.error.URLError, OSError) as e:
            print(f"FAILED {url}: {e}", file=sys.stderr)
            failures += 1
            continue
        save(path, data)
        print(f"got    {path} ({len(data):,} bytes)")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path(os.environ.get("NMT_DATA_DIR") or "data"),
        help="data folder (default: $NMT_DATA_DIR, else ./data)",
    )
    parser.add_argument(
        "--corpus",
        nargs="+",
        choices=["multi30k", "small_parallel_enja"],
        default=["multi30k", "small_parallel_enja"],
    )
    parser.add_argument("--force", action="store_true", help="download files that exist already")
    args = parser.parse_args(argv)
    failures = download(args.dest, args.corpus, args.force)
    if failures:
        print(f"{failures} file(s) failed; run again to retry", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

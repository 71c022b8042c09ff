"""SentencePiece subword models: train, save/load, encode, decode; nothing else.

One model shared by both languages (`joint`, which allows tying all embeddings) or one
model per language. Every model uses the fixed special ids of `nmt.specials`
(pad=0, unk=1, bos=2, eos=3), so ids mean the same thing in the data, the models and search.

`tokenizer.vocab_size` is an upper bound: sentencepiece is trained with
`hard_vocab_limit=False`, so a corpus too small for the requested size yields a smaller
vocabulary (logged as a warning) instead of failing; the real sizes are
`src_vocab_size` / `tgt_vocab_size`.

Already space-tokenized corpora (small_parallel_enja's Japanese, segmented by KyTea) are
trained as they are: the spaces become word boundaries (▁) the model learns. Decoding into a
language listed in `detok_remove_spaces` removes every space again, so Japanese output reads
as normal unsegmented text. (Spaces between Latin-script words inside such output are removed
too.) The references still carry the segmentation spaces, so scoring removes them as well
(`nmt.evaluate.remove_word_spaces`, in validation and `nmt evaluate`) before sacreBLEU
re-tokenizes both sides with its Japanese tokenizer.

With `lowercase`, every sentence is lowercased before training and encoding, so the models
never see case and decoding returns lowercase text.

Text goes through sentencepiece's default NFKC normalization, so decoding returns normalized
text (e.g. full-width digits come back as ASCII digits).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from nmt.config import TokenizerConfig
from nmt.files import write_bytes_atomic
from nmt.specials import (
    BOS_ID,
    BOS_PIECE,
    EOS_ID,
    EOS_PIECE,
    PAD_ID,
    PAD_PIECE,
    UNK_ID,
    UNK_PIECE,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
SETTINGS_FILE = "tokenizer.json"
# Seed of the sentence sample drawn when a side has more than input_sentence_size lines.
SAMPLE_SEED = 1
Span = tuple[int, int]  # [start, end) character offsets in a text


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or loaded, phrased for the user."""


class Tokenizer:
    """Source and target SentencePiece models (possibly one shared model) plus their settings."""

    def __init__(
        self, models: dict[str, bytes], src_lang: str, tgt_lang: str, config: TokenizerConfig
    ) -> None:
        """`models` is {"joint": proto} or {"src": proto, "tgt": proto} (serialized ModelProtos)."""
        if set(models) not in ({"joint"}, {"src", "tgt"}):
            raise TokenizerError(f"expected models 'joint' or 'src'+'tgt', got {sorted(models)}")
        self.models = dict(models)
        self.joint = "joint" in models
        self.src_lang = src_lang
        self.tgt_lang = tgt_lang
        self.config = config
        self._src = _processor(models["joint" if self.joint else "src"])
        self._tgt = self._src if self.joint else _processor(models["tgt"])

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    # ------------------------------------------------------------------ training, storage

    @classmethod
    def train(
        cls,
        config: TokenizerConfig,
        src_texts: list[str],
        tgt_texts: list[str],
        src_lang: str,
        tgt_lang: str,
        out_dir: Path,
    ) -> Tokenizer:
        """Train the model(s) on the given sentences and save them under `out_dir`."""
        src_sample = _sample(_case_normalised(src_texts, config), config.input_sentence_size)
        tgt_sample = _sample(_case_normalised(tgt_texts, config), config.input_sentence_size)
        if config.joint:
            models = {"joint": _train_model(src_sample + tgt_sample, config, "joint")}
        else:
            models = {
                "src": _train_model(src_sample, config, src_lang),
                "tgt": _train_model(tgt_sample, config, tgt_lang),
            }
        tokenizer = cls(models, src_lang, tgt_lang, config)
        tokenizer.save(Path(out_dir))
        return tokenizer

    def save(self, out_dir: Path) -> None:
        """Write `<name>.model` file(s) and the settings file; drop model files of other layouts."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("joint", "src", "tgt"):
            path = out_dir / f"{name}.model"
            if name in self.models:
                write_bytes_atomic(path, self.models[name])
            else:
                path.unlink(missing_ok=True)
        settings = {
            "version": STATE_VERSION,
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "joint": self.joint,
            "config": dataclasses.asdict(self.config),
        }
        write_bytes_atomic(out_dir / SETTINGS_FILE, json.dumps(settings, indent=2).encode("utf-8"))

    @classmethod
    def load(cls, out_dir: Path) -> Tokenizer:
        """Load a tokenizer saved by `train`/`save`."""
        out_dir = Path(out_dir)
        settings_path = out_dir / SETTINGS_FILE
        if not settings_path.is_file():
            raise TokenizerError(f"no tokenizer in {out_dir} (missing {settings_path.name})")
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
        names = ["joint"] if settings["joint"] else ["src", "tgt"]
        models = {}
        for name in names:
            path = out_dir / f"{name}.model"
            if not path.is_file():
                raise TokenizerError(f"tokenizer model file not found: {path}")
            models[name] = path.read_bytes()
        return cls(
            models,
            settings["src_lang"],
            settings["tgt_lang"],
            TokenizerConfig(**settings["config"]),
        )

    def to_state(self) -> dict[str, Any]:
        """Plain-type state (bytes, str, numbers) that survives torch.load(weights_only=True)."""
        return {
            "version": STATE_VERSION,
            "models": dict(self.models),
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "config": dataclasses.asdict(self.config),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        if state.get("version") != STATE_VERSION:
            raise TokenizerError(f"unsupported tokenizer state version {state.get('version')!r}")
        return cls(
            dict(state["models"]),
            state["src_lang"],
            state["tgt_lang"],
            TokenizerConfig(**state["config"]),
        )

    # ------------------------------------------------------------------ encoding, decoding

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        """Source ids: pieces followed by EOS (the encoder sees where the sentence ends)."""
        return [ids + [EOS_ID] for ids in self._src.encode(_case_normalised(texts, self.config))]

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        """Target ids: pieces only; the data pipeline adds BOS/EOS for decoder input/output."""
        return self._tgt.encode(_case_normalised(texts, self.config))

    def encode_src_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_src` as int32 ids back to back plus lengths (the corpus store's layout)."""
        return _flat(self._src.encode(_case_normalised(texts, self.config)), EOS_ID)

    def encode_tgt_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_tgt` as int32 ids back to back plus lengths."""
        return _flat(self._tgt.encode(_case_normalised(texts, self.config)), None)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Text of target ids: cut at the first EOS, drop pad/bos, detokenize."""
        return self._decode(self._tgt, ids, self.tgt_lang)

    def decode_src(self, ids: list[list[int]]) -> list[str]:
        """Text of source ids (same rules as decode_tgt)."""
        return self._decode(self._src, ids, self.src_lang)

    def src_pieces(self, ids: list[int]) -> list[str]:
        """Piece strings of source ids (▁ marks a word start, EOS shows as "</s>")."""
        return [self._src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self._tgt.id_to_piece(int(i)) for i in ids]

    def src_spans(self, text: str) -> list[Span]:
        """[start, end) character offsets in `text` of each piece `encode_src` gives (no EOS)."""
        return _encoded_spans(self._src, text, self.config.lowercase)

    def tgt_spans(self, text: str) -> list[Span]:
        """[start, end) character offsets in `text` of each piece `encode_tgt` gives."""
        return _encoded_spans(self._tgt, text, self.config.lowercase)

    def output_spans(self, ids: list[int], text: str) -> list[Span]:
        """Offsets of target pieces `ids` (no EOS) in `text`, their decoded translation as
        returned to users (stripped; spaces removed for `detok_remove_spaces` languages)."""
        decoded = self._tgt.decode([int(i) for i in ids], return_type="proto")
        spans = _trimmed_spans(decoded.text, decoded.pieces)
        position = _subsequence_positions(decoded.text, text)
        return [(position[start], position[end]) for start, end in spans]

    def _decode(
        self, processor: spm.SentencePieceProcessor, ids: list[list[int]], lang: str
    ) -> list[str]:
        cleaned = [_strip_specials(seq) for seq in ids]
        texts = processor.decode(cleaned) if cleaned else []
        if lang in self.config.detok_remove_spaces:
            texts = [t.replace(" ", "") for t in texts]
        return texts


def _encoded_spans(processor: spm.SentencePieceProcessor, text: str, lowercase: bool) -> list[Span]:
    """Character spans in `text` of its pieces: SentencePiece reports byte offsets into the
    text it encoded (normalisation such as NFKC keeps them pointing at the original), and a
    lowercased text is mapped back character by character."""
    if not lowercase:
        return _trimmed_spans(text, processor.encode(text, return_type="proto").pieces)
    lowered, origin = "", []
    for index, char in enumerate(text):
        lowered += char.lower()
        origin.extend([index] * len(char.lower()))
    origin.append(len(text))
    spans = _trimmed_spans(lowered, processor.encode(lowered, return_type="proto").pieces)
    return [
        (origin[start], origin[end - 1] + 1 if end > start else origin[start])
        for start, end in spans
    ]


def _trimmed_spans(text: str, pieces: Any) -> list[Span]:
    """Pieces' byte offsets (`begin`, `end`) -> character spans without surrounding whitespace
    (a word-start piece's span includes the space before it; a bare ▁ piece's span is empty)."""
    char_at = [0] * (len(text.encode("utf-8")) + 1)
    position = 0
    for index, char in enumerate(text):
        size = len(char.encode("utf-8"))
        char_at[position : position + size] = [index] * size
        position += size
    char_at[position] = len(text)
    spans = []
    for piece in pieces:
        start, end = char_at[piece.begin], char_at[piece.end]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return spans


def _subsequence_positions(raw: str, final: str) -> list[int]:
    """For each index of `raw` (and its end), the index in `final`, which is `raw` with some
    characters deleted (stripping, space removal)."""
    positions, j = [], 0
    for char in raw:
        positions.append(j)
        if j < len(final) and final[j] == char:
            j += 1
    positions.append(j)
    return positions


def _case_normalised(texts: list[str], config: TokenizerConfig) -> list[str]:
    """The texts as the models see them: lowercased when `tokenizer.lowercase` is set."""
    return [t.lower() for t in texts] if config.lowercase else list(texts)


def _flat(rows: list[list[int]], suffix: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows back to back (each followed by `suffix` if given) and their lengths."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    pieces = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(lengths.sum()))
    if suffix is None:
        return pieces, lengths
    lengths += 1
    ends = np.cumsum(lengths) - 1
    flat = np.full(int(lengths.sum()), suffix, dtype=np.int32)
    is_piece = np.ones(len(flat), dtype=bool)
    is_piece[ends] = False
    flat[is_piece] = pieces
    return flat, lengths


def _strip_specials(ids: list[int]) -> list[int]:
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


def _processor(proto: bytes) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor(model_proto=proto)
    expected = {PAD_ID: PAD_PIECE, UNK_ID: UNK_PIECE, BOS_ID: BOS_PIECE, EOS_ID: EOS_PIECE}
    actual = {i: processor.id_to_piece(i) for i in expected if i < processor.get_piece_size()}
    if actual != expected:
        raise TokenizerError(
            f"sentencepiece model has special pieces {actual}, expected {expected}"
        )
    return processor


def _sample(texts: list[str], limit: int | None) -> list[str]:
    """Non-empty sentences, at most `limit` of them (a seeded sample, in corpus order)."""
    texts = [t for t in texts if t.strip()]
    if limit is None or len(texts) <= limit:
        return texts
    keep = sorted(random.Random(SAMPLE_SEED).sample(range(len(texts)), limit))
    return [texts[i] for i in keep]


def _train_model(texts: list[str], config: TokenizerConfig, name: str) -> bytes:
    """Train one sentencepiece model in memory and return its serialized proto."""
    if not texts:
        raise TokenizerError(f"no non-empty sentences to train the {name} tokenizer on")
    log.info(
        "training %s %s tokenizer on %d sentences (vocab <= %d)",
        name,
        config.type,
        len(texts),
        config.vocab_size,
    )
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=writer,
            model_type=config.type,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            hard_vocab_limit=False,
            input_sentence_size=0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece=PAD_PIECE,
            unk_piece=UNK_PIECE,
            bos_piece=BOS_PIECE,
            eos_piece=EOS_PIECE,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"sentencepiece could not train the {name} tokenizer: {e}") from None
    proto = writer.getvalue()
    size = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    if size < config.vocab_size:
        log.warning(
            "%s tokenizer: the corpus supports only %d pieces (tokenizer.vocab_size=%d)",
            name,
            size,
            config.vocab_size,
        )
    return proto

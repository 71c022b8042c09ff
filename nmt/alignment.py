"""Alignments from attention: soft matrices, hard links (Pharaoh), word level, heatmaps.

Conventions (kept everywhere: library, CLI, server):
- The soft matrix is [target pieces x source pieces] WITHOUT the EOS of either side: the
  decoder's EOS step (last row) and the source EOS (last column) are dropped and every row
  is renormalised to sum to 1 over the real source pieces. (Models park much attention on
  the source EOS; it is not a word anyone can align to.) A row whose whole mass was on
  dropped columns becomes uniform.
- Hard links: for each target piece the source piece with the most attention, written in
  Pharaoh format "i-j" = source index - target index (0-based), as fast_align and Moses do.
- Words: SentencePiece pieces are merged back into words at "▁" (a word start). Word-level
  attention sums the source pieces of a source word (mass that fell on the word) and
  averages the target pieces of a target word (one distribution per word), so word rows
  still sum to 1. Word links are the argmax of that merged matrix. For ordinary languages
  word j is the j-th whitespace-separated token of the detokenized text.
- Character offsets: each piece and word also carries [start, end) offsets (Python string
  indices: Unicode code points) into the original source string and the target string
  (the translation as returned, or the given target of a forced alignment), without the
  space before a word, so clients can highlight words without re-tokenising. A bare ▁
  piece has an empty span. Alignments built without the texts have no offsets (empty lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

WORD_START = "\u2581"  # "▁"
# Font families with CJK glyphs, in order of preference (file-name patterns as fallback).
CJK_FAMILIES = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans JP",
    "Noto Serif CJK JP",
    "IPAGothic",
    "IPAexGothic",
    "IPAPGothic",
    "TakaoGothic",
    "TakaoPGothic",
    "VL Gothic",
    "Source Han Sans JP",
    "Droid Sans Fallback",
    "WenQuanYi Zen Hei",
    "Unifont",
)
CJK_FILE_PATTERNS = (
    "notosanscjk",
    "notoserifcjk",
    "ipag",
    "ipaexg",
    "takao",
    "vl-gothic",
    "droidsansfallback",
    "wqy",
    "sourcehansans",
)

Link = tuple[int, int]  # (source index, target index)
Span = tuple[int, int]  # [start, end) character offsets into a text


@dataclass
class Alignment:
    src_tokens: list[str]  # source pieces (S, no EOS)
    tgt_tokens: list[str]  # target pieces (T, no EOS)
    soft: list[list[float]]  # [T][S], rows sum to 1
    hard: list[Link]  # piece links (source, target)
    src_words: list[str]
    tgt_words: list[str]
    word_soft: list[list[float]]  # [T_words][S_words], rows sum to 1
    word_hard: list[Link]
    src_offsets: list[Span] = field(default_factory=list)  # per source piece
    tgt_offsets: list[Span] = field(default_factory=list)  # per target piece
    src_word_offsets: list[Span] = field(default_factory=list)
    tgt_word_offsets: list[Span] = field(default_factory=list)

    def pharaoh(self, words: bool = True) -> str:
        """Links as one Pharaoh line, e.g. "0-0 1-2 2-1" (word level unless words=False)."""
        return pharaoh(self.word_hard if words else self.hard)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hard"] = [list(link) for link in self.hard]
        data["word_hard"] = [list(link) for link in self.word_hard]
        for key in OFFSET_FIELDS:
            data[key] = [list(span) for span in getattr(self, key)]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alignment:
        values = dict(data)
        for key in ("hard", "word_hard", *OFFSET_FIELDS):
            values[key] = [tuple(pair) for pair in data.get(key, [])]
        return cls(**values)


OFFSET_FIELDS = ("src_offsets", "tgt_offsets", "src_word_offsets", "tgt_word_offsets")


def pharaoh(links: Sequence[Link]) -> str:
    return " ".join(f"{i}-{j}" for i, j in links)


def normalise_rows(matrix: Tensor) -> Tensor:
    """Rows scaled to sum to 1; all-zero rows become uniform. matrix [T, S]."""
    if matrix.size(1) == 0:
        return matrix
    sums = matrix.sum(dim=1, keepdim=True)
    uniform = torch.full_like(matrix, 1.0 / matrix.size(1))
    return torch.where(sums > 0, matrix / sums.clamp_min(1e-30), uniform)


def hard_links(matrix: Tensor) -> list[Link]:
    """(source, target) argmax link per target row of a [T, S] matrix."""
    if matrix.numel() == 0:
        return []
    return [(int(i), t) for t, i in enumerate(matrix.argmax(dim=1).tolist())]


def word_groups(pieces: Sequence[str]) -> list[list[int]]:
    """Piece indices of each word: a piece starting with ▁ opens a word; a bare ▁ joins the next."""
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        previous_bare = bool(groups) and [pieces[j] for j in groups[-1]] == [WORD_START]
        if not groups or (piece.startswith(WORD_START) and not previous_bare):
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def group_text(pieces: Sequence[str], groups: list[list[int]]) -> list[str]:
    return ["".join(pieces[i] for i in g).replace(WORD_START, " ").strip() for g in groups]


def merge_words(matrix: Tensor, src_groups: list[list[int]], tgt_groups: list[list[int]]) -> Tensor:
    """[T, S] pieces -> [T_words, S_words]: sum over source pieces, mean over target pieces."""
    src_proj = torch.zeros(matrix.size(1), len(src_groups), dtype=matrix.dtype)
    for w, group in enumerate(src_groups):
        src_proj[group, w] = 1.0
    tgt_proj = torch.zeros(len(tgt_groups), matrix.size(0), dtype=matrix.dtype)
    for w, group in enumerate(tgt_groups):
        tgt_proj[w, group] = 1.0 / len(group)
    return tgt_proj @ matrix @ src_proj


def build_alignment(
    attention: Tensor,
    src_pieces: list[str],
    tgt_pieces: list[str],
    src_spans: Sequence[Span] = (),
    tgt_spans: Sequence[Span] = (),
) -> Alignment:
    """Alignment of one translation.

    attention [T', S'] with T' >= len(tgt_pieces), S' >= len(src_pieces): a hypothesis's
    attention (EOS step and source EOS included); rows/columns past the pieces are dropped.
    src_spans / tgt_spans: the pieces' character offsets in their texts (or none).
    """
    t, s = len(tgt_pieces), len(src_pieces)
    matrix = normalise_rows(attention[:t, :s].detach().double().cpu())
    src_groups, tgt_groups = word_groups(src_pieces), word_groups(tgt_pieces)
    words = merge_words(matrix, src_groups, tgt_groups)
    src_spans, tgt_spans = list(src_spans)[:s], list(tgt_spans)[:t]
    return Alignment(
        src_tokens=list(src_pieces),
        tgt_tokens=list(tgt_pieces),
        soft=_rounded(matrix),
        hard=hard_links(matrix),
        src_words=group_text(src_pieces, src_groups),
        tgt_words=group_text(tgt_pieces, tgt_groups),
        word_soft=_rounded(words),
        word_hard=hard_links(words),
        src_offsets=src_spans,
        tgt_offsets=tgt_spans,
        src_word_offsets=word_spans(src_spans, src_groups) if src_spans else [],
        tgt_word_offsets=word_spans(tgt_spans, tgt_groups) if tgt_spans else [],
    )


def word_spans(spans: Sequence[Span], groups: list[list[int]]) -> list[Span]:
    """Each word's span: from its first non-empty piece's start to its last one's end."""
    out = []
    for group in groups:
        filled = [spans[i] for i in group if spans[i][1] > spans[i][0]]
        out.append((filled[0][0], filled[-1][1]) if filled else spans[group[0]])
    return out


def _rounded(matrix: Tensor, digits: int = 6) -> list[list[float]]:
    """Plain floats, rounded so JSON output stays compact (rows still sum to 1 within 1e-5)."""
    return [[round(value, digits) for value in row] for row in matrix.tolist()]


# --------------------------------------------------------------------------- heatmaps


@lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """Path of an installed font with CJK glyphs (Noto Sans CJK, IPA, Takao, ...), or None.

    Looks at matplotlib's font list first, then at the system font files (matplotlib's cache
    may predate a font installed later, e.g. `apt-get install fonts-noto-cjk`).
    """
    from matplotlib import font_manager

    by_name = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in by_name:
            return by_name[family]
    files = sorted(font_manager.findSystemFonts())
    for pattern in CJK_FILE_PATTERNS:
        for path in files:
            name = Path(path).name.lower()
            if pattern in name and "bold" not in name:
                return path
    return None


def _needs_cjk(labels: Sequence[str]) -> bool:
    return any(ord(ch) >= 0x2E80 for label in labels for ch in label)


def plot_attention(
    matrix: Sequence[Sequence[float]] | Tensor,
    src_labels: Sequence[str],
    tgt_labels: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write a PNG heatmap of a [T, S] attention matrix (source on x, target on y).

    Uses a font with CJK glyphs when the labels need one and one is installed; otherwise
    matplotlib's default font (CJK glyphs then show as boxes).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    data = torch.as_tensor(matrix, dtype=torch.float32).reshape(len(tgt_labels), len(src_labels))
    font_path = find_cjk_font() if _needs_cjk(list(src_labels) + list(tgt_labels)) else None
    font = FontProperties(fname=font_path) if font_path else None
    width = max(4.0, 0.45 * len(src_labels) + 2.0)
    height = max(3.0, 0.35 * len(tgt_labels) + 2.0)
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(data.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_labels)))
    ax.set_xticklabels(list(src_labels), rotation=90, fontproperties=font)
    ax.set_yticks(range(len(tgt_labels)))
    ax.set_yticklabels(list(tgt_labels), fontproperties=font)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if title:
        fig.suptitle(title, fontproperties=font)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_alignment(
    alignment: Alignment, path: str | Path, words: bool = True, title: str | None = None
) -> Path:
    """Heatmap of one alignment, word level (labels = words) or piece level."""
    if words:
        return plot_attention(
            alignment.word_soft, alignment.src_words, alignment.tgt_words, path, title
        )
    return plot_attention(alignment.soft, alignment.src_tokens, alignment.tgt_tokens, path, title)

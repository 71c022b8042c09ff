"""The report's figures, as PNG bytes (matplotlib's Agg canvas: no display, no global state).

Small on purpose (a study's plots are committed beside its report): 100 dpi, one figure per
question, every model in one chart with one colour each throughout.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nmt.alignment import Alignment

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _colour(index: int) -> str:
    return f"C{index % 10}"


def curves(
    series: dict[str, list[dict[str, float]]], x: str, y: str, xlabel: str, ylabel: str
) -> bytes:
    """One line per model: `y` against `x` of its points (e.g. valid BLEU against minutes)."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, points) in enumerate(series.items()):
        pts = [p for p in points if y in p]
        if pts:
            ax.plot([p[x] for p in pts], [p[y] for p in pts], label=name, color=_colour(i), lw=1.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, ncol=2, loc="best")
    return _png(fig)


def length_bars(
    buckets: Sequence[str], sentences: Sequence[int], bleu: dict[str, list[float | None]]
) -> bytes:
    """Grouped bars: BLEU per source-length bucket, one bar per model in each group; a bucket
    without test sentences is left out, the others name their count (small ones are noisy)."""
    kept = [i for i, n in enumerate(sentences) if n]
    buckets = [f"{buckets[i]} words\n({sentences[i]:,} sentences)" for i in kept]
    bleu = {name: [scores[i] for i in kept] for name, scores in bleu.items()}
    fig = Figure(figsize=(9.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(bleu), 1)
    for i, (name, scores) in enumerate(bleu.items()):
        xs = [b + (i - (len(bleu) - 1) / 2) * width for b in range(len(buckets))]
        ax.bar(xs, [s or 0.0 for s in scores], width, label=name, color=_colour(i))
    ax.set_xticks(range(len(buckets)))
    ax.set_xticklabels(buckets)
    ax.set_xlabel("source sentence length")
    ax.set_ylabel("BLEU")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the bars
    return _png(fig)


def heatmap_grid(alignments: dict[str, Alignment], title: str) -> bytes:
    """Word-level attention of one test sentence, one panel per model, side by side."""
    panels = len(alignments)
    columns = min(panels, 4)
    rows = (panels + columns - 1) // columns
    fig = Figure(figsize=(max(3.4 * columns, 6.0), 3.2 * rows + 0.6))
    for i, (name, a) in enumerate(alignments.items()):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(a.word_soft, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(a.src_words)))
        ax.set_xticklabels(a.src_words, rotation=90, fontsize=6)
        ax.set_yticks(range(len(a.tgt_words)))
        ax.set_yticklabels(a.tgt_words, fontsize=6)
        ax.set_title(name, fontsize=8)
    fig.suptitle(textwrap.fill(title, 90), fontsize=8)
    return _png(fig)


def heatmap_file(index: int) -> str:
    """The file name of the heatmaps of the report's `index`-th heatmap sentence."""
    return f"attention_{index + 1}.png"


def all_plots(report: dict[str, Any], heatmaps: list[dict[str, Alignment]]) -> dict[str, bytes]:
    """Every figure of a report (file name -> PNG), from its JSON and the heatmap alignments."""
    models = report["models"]
    valid = {m["name"]: m["curves"]["valid"] for m in models}
    train = {m["name"]: m["curves"]["train"] for m in models}
    buckets = [row["bucket"] for row in models[0]["by_length"]]
    sentences = [row["sentences"] for row in models[0]["by_length"]]
    plots = {
        "valid_bleu_by_time.png": curves(
            valid, "minutes", "bleu", "training minutes", "validation BLEU (greedy)"
        ),
        "valid_bleu_by_step.png": curves(
            valid, "step", "bleu", "optimiser steps", "validation BLEU (greedy)"
        ),
        "train_loss.png": curves(
            train, "step", "loss", "optimiser steps", "training loss (per target token)"
        ),
        "bleu_by_length.png": length_bars(
            buckets, sentences, {m["name"]: [r["bleu"] for r in m["by_length"]] for m in models}
        ),
    }
    for i, (row, panels) in enumerate(zip(report["heatmap_sentences"], heatmaps)):
        if panels:
            title = f"test sentence {row['index']}: {row['source']}"
            plots[heatmap_file(i)] = heatmap_grid(panels, title)
    return plots

"""Ensembles: log-probabilities averaged at every step of the shared search, any architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from archs import tiny_config
from serving import run_nmt
from test_search import LENGTHS, VOCAB, tiny_model

from nmt.ensemble import Ensemble, EnsembleError
from nmt.model import Seq2Seq, build_model
from nmt.search import beam_search, greedy_search
from nmt.specials import BOS_ID, PAD_ID
from nmt.translator import Translator


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    src = torch.full((len(LENGTHS), max(LENGTHS)), PAD_ID, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        src[row, :length] = torch.randint(4, VOCAB, (length,))
    return src, src != PAD_ID


def _model(name: str, seed: int = 0) -> Seq2Seq:
    model = tiny_model(name, seed=seed)
    assert isinstance(model, Seq2Seq)
    return model


def test_an_ensemble_of_one_model_twice_decodes_as_the_model() -> None:
    model = _model("transformer-pre")
    twice = Ensemble([model, model])
    src, mask = _batch()
    for search in (
        lambda m: greedy_search(m, src, mask, 1.5, 4, with_attention=True),
        lambda m: beam_search(m, src, mask, 3, n_best=2, max_len_b=4, with_attention=True),
    ):
        alone, ensemble = search(model), search(twice)
        for a, b in zip(alone, ensemble):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
            for ha, hb in zip(a, b):
                assert ha.attention is not None and hb.attention is not None
                torch.testing.assert_close(ha.attention, hb.attention)


def test_step_log_probs_are_the_members_mean() -> None:
    members = [_model("transformer-pre"), _model("lstm-bi-bahdanau", seed=1)]
    ensemble = Ensemble(members)
    src, mask = _batch()
    prev = torch.full((len(LENGTHS),), BOS_ID)
    log_probs, attention, _ = ensemble.decode_step(ensemble.encode(src, mask), prev)
    expected = [m.decode_step(m.encode(src, mask), prev) for m in members]
    torch.testing.assert_close(log_probs, (expected[0][0] + expected[1][0]) / 2)
    assert attention is not None
    torch.testing.assert_close(attention, (expected[0][1] + expected[1][1]) / 2)
    only_second = Ensemble(members, alignment_member=1)
    _, chosen, _ = only_second.decode_step(only_second.encode(src, mask), prev)
    torch.testing.assert_close(chosen, expected[1][1])


def test_mixed_architectures_are_batch_invariant_in_beam_search() -> None:
    """A sentence gets the same translation alone and in a batch (the states of a Transformer,
    an RNN with attention and one without are reordered by their own models)."""
    ensemble = Ensemble(
        [_model("transformer-post"), _model("gru-bahdanau", seed=1), _model("lstm-none", seed=2)]
    )
    src, mask = _batch()
    batched = beam_search(ensemble, src, mask, 3, max_len_b=5, with_attention=True)
    for row, length in enumerate(LENGTHS):
        alone = beam_search(
            ensemble, src[row : row + 1, :length], mask[row : row + 1, :length], 3, max_len_b=5
        )
        assert alone[0][0].tokens == batched[row][0].tokens
    # one member has no attention: the alignment is the mean of the two that have it
    assert batched[0][0].attention is not None


def test_members_must_share_the_vocabulary() -> None:
    model = _model("transformer-pre")
    with pytest.raises(EnsembleError, match="at least two"):
        Ensemble([model])
    bigger = build_model(tiny_config("transformer-pre"), VOCAB, VOCAB + 5)
    with pytest.raises(EnsembleError, match="different target vocabulary"):
        Ensemble([model, bigger])
    with pytest.raises(EnsembleError, match="alignment member 2"):
        Ensemble([model, model], alignment_member=2)


@pytest.mark.slow
def test_cli_translates_and_evaluates_with_an_ensemble(
    tmp_path: Path, tiny_checkpoint: Path, data_dir: Path
) -> None:
    sources = ["Ein Hund läuft.", "Zwei Männer spielen Fußball im Park."]
    (tmp_path / "in.de").write_text("\n".join(sources) + "\n")
    single = Translator.load(tiny_checkpoint).translate(sources, beam_size=2)
    ensemble = Translator.load_ensemble([tiny_checkpoint, tiny_checkpoint])
    assert ensemble.info.arch == "ensemble" and len(ensemble.info.members) == 2
    assert [t.text for t in ensemble.translate(sources, beam_size=2)] == [t.text for t in single]

    out = run_nmt(
        "translate",
        "--checkpoint",
        str(tiny_checkpoint),
        str(tiny_checkpoint),
        "--beam",
        "2",
        "--input",
        str(tmp_path / "in.de"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [t.text for t in single]
    test = data_dir / "multi30k" / "test_2016_flickr"
    report = tmp_path / "report.json"
    out = run_nmt(
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        str(tiny_checkpoint),
        "--src",
        f"{test}.de.gz",
        "--ref",
        f"{test}.en.gz",
        "--report",
        str(report),
        "--beam",
        "1",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(report.read_text())["checkpoint"]["members"] == [str(tiny_checkpoint)] * 2

"""The model interface, for every architecture: shapes, attention, padding, cached decoding
against teacher forcing, reordering, gradients, bf16 autocast, learning, build errors."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from archs import ARCHS, NO_ATTENTION, TINY, tiny_config

from nmt.config import ConfigError
from nmt.model import Seq2Seq, build_model, count_parameters
from nmt.specials import BOS_ID, EOS_ID, PAD_ID

VOCAB = 16  # 4 specials + 12 symbols


def make_model(name: str, seed: int = 0, **overrides) -> Seq2Seq:
    torch.manual_seed(seed)
    return build_model(tiny_config(name, **overrides), VOCAB, VOCAB, joint_vocab=True)


def pad_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, ids != PAD_ID


def sample_batch(gen: torch.Generator, size: int, lo: int = 3, hi: int = 8):
    """Reverse task: src = x + EOS, tgt_in = BOS + reversed(x), tgt_out = reversed(x) + EOS."""
    seqs = [
        torch.randint(4, VOCAB, (int(n),), generator=gen).tolist()
        for n in torch.randint(lo, hi + 1, (size,), generator=gen)
    ]
    src, src_mask = pad_batch([s + [EOS_ID] for s in seqs])
    tgt_in, _ = pad_batch([[BOS_ID] + s[::-1] for s in seqs])
    tgt_out, tgt_mask = pad_batch([s[::-1] + [EOS_ID] for s in seqs])
    return src, src_mask, tgt_in, tgt_out, tgt_mask


@pytest.fixture()
def batch():
    return sample_batch(torch.Generator().manual_seed(1), 5)


def decode_teacher_forced(model: Seq2Seq, src, src_mask, tgt_in):
    """Run decode_step over tgt_in: log-probs [B,T,V] and attention [B,T,S] (or None)."""
    state = model.encode(src, src_mask)
    log_probs, attentions = [], []
    for t in range(tgt_in.size(1)):
        lp, attention, state = model.decode_step(state, tgt_in[:, t])
        log_probs.append(lp)
        attentions.append(attention)
    attention = None if attentions[0] is None else torch.stack(attentions, 1)
    return torch.stack(log_probs, 1), attention


def assert_attention_valid(attention: torch.Tensor, src_mask: torch.Tensor) -> None:
    """attention [B,T,S]: sums to 1 over real source tokens, exactly 0 on padding."""
    assert attention.dtype == torch.float32
    mask = src_mask.unsqueeze(1).expand_as(attention)
    assert torch.all(attention[~mask] == 0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    assert torch.all(attention >= 0)


@pytest.mark.parametrize("name", ARCHS)
def test_shapes_and_attention(name: str, batch) -> None:
    model = make_model(name).eval()
    src, src_mask, tgt_in, _, _ = batch
    logits, attention = model(src, src_mask, tgt_in, with_attention=True)
    assert logits.shape == (5, tgt_in.size(1), VOCAB)
    assert model(src, src_mask, tgt_in)[1] is None  # not asked for
    state = model.encode(src, src_mask)
    log_probs, step_attention, state = model.decode_step(state, tgt_in[:, 0])
    assert log_probs.shape == (5, VOCAB) and log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(5))
    if name in NO_ATTENTION:
        assert attention is None and step_attention is None
        return
    assert attention.shape == (5, tgt_in.size(1), src.size(1))
    assert_attention_valid(attention, src_mask)
    assert step_attention.shape == (5, src.size(1))
    assert_attention_valid(step_attention.unsqueeze(1), src_mask)
    assert model.decode_step(state, tgt_in[:, 1], with_attention=False)[1] is None


@pytest.mark.parametrize("name", ARCHS)
def test_padding_does_not_change_a_sentence(name: str) -> None:
    model = make_model(name).eval()
    short = ([5, 6, 7, EOS_ID], [BOS_ID, 7, 6])
    long = ([8, 9, 10, 11, 12, 13, EOS_ID], [BOS_ID, 13, 12, 11, 10, 9, 8])
    alone = model(*pad_batch([short[0]]), pad_batch([short[1]])[0], with_attention=True)
    src, src_mask = pad_batch([short[0], long[0]])
    together = model(src, src_mask, pad_batch([short[1], long[1]])[0], with_attention=True)
    torch.testing.assert_close(together[0][0, :3], alone[0][0], atol=1e-5, rtol=1e-5)
    if name not in NO_ATTENTION:
        torch.testing.assert_close(together[1][0, :3, :4], alone[1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_decode_step_matches_teacher_forcing(name: str, batch) -> None:
    model = make_model(name).eval()
    src, src_mask, tgt_in, _, tgt_mask = batch
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, with_attention=True)
        log_probs, step_attention = decode_teacher_forced(model, src, src_mask, tgt_in)
    expected = F.log_softmax(logits.float(), -1)
    keep = tgt_mask.unsqueeze(-1).expand_as(expected)  # positions after the end are junk
    torch.testing.assert_close(log_probs[keep], expected[keep], atol=1e-5, rtol=1e-5)
    if attention is not None:
        torch.testing.assert_close(step_attention, attention, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_reorder_equals_decoding_the_reordered_batch(name: str, batch) -> None:
    model = make_model(name).eval()
    src, src_mask, tgt_in, _, _ = batch
    indices = torch.tensor([3, 0, 0, 4, 1, 1])  # a permutation with repeats (beam expansion)
    with torch.no_grad():
        state = model.encode(src, src_mask)
        for t in range(2):
            _, _, state = model.decode_step(state, tgt_in[:, t])
        state = model.reorder(state, indices[:, None], indices)  # each row its own sentence
        parts = {**state.source, **state.rows}
        assert all(value.size(0) == len(indices) for value in parts.values())
        reordered = model.encode(src[indices], src_mask[indices])
        for t in range(2):
            _, _, reordered = model.decode_step(reordered, tgt_in[indices, t])
        for t in range(2, 4):
            got, got_attention, state = model.decode_step(state, tgt_in[indices, t])
            want, want_attention, reordered = model.decode_step(reordered, tgt_in[indices, t])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            if want_attention is not None:
                torch.testing.assert_close(got_attention, want_attention, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_beam_layout_keeps_source_entries_once_per_sentence(name: str, batch) -> None:
    """Beam-search reorders (expand to 3 beams, follow beams, drop sentences) keep one copy of
    the source entries per sentence and decode exactly like a batch built in that order."""
    model = make_model(name).eval()
    src, src_mask, tgt_in, _, _ = batch
    expand = (torch.arange(5).repeat_interleave(3).view(5, 3), None)  # 5 sentences x 3 beams
    follow = (torch.tensor([2, 0, 0, 3, 5, 4, 6, 6, 8, 9, 9, 10, 14, 12, 12]).view(5, 3), None)
    drop = (torch.tensor([[3, 4, 4], [12, 14, 13]]), torch.tensor([1, 4]))  # 1 and 4 go on
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        state = model.encode(src, src_mask)
        sentences, history = torch.arange(5), tgt_in[:, :1]  # input sentence, tokens fed per row
        _, _, state = model.decode_step(state, history[:, 0])
        for rows, kept in (expand, follow, drop):
            source = state.source
            state = model.reorder(state, rows, kept)
            assert (state.source is source) == (kept is None)  # shared until a sentence drops
            flat = rows.flatten()
            history = history[flat]
            sentences = sentences if kept is None else sentences[kept]
            assert all(v.size(0) == len(sentences) for v in state.source.values())
            assert all(v.size(0) == len(flat) for v in state.rows.values())
            if kept is None:
                tokens = torch.randint(4, VOCAB, (len(flat),), generator=gen)
                _, _, state = model.decode_step(state, tokens)
                history = torch.cat([history, tokens[:, None]], dim=1)
        assert sentences.tolist() == [1, 4]
        last = torch.randint(4, VOCAB, (len(history),), generator=gen)
        got, got_attention, _ = model.decode_step(state, last)
        reference = model.encode(src[[1, 1, 1, 4, 4, 4]], src_mask[[1, 1, 1, 4, 4, 4]])
        for t in range(history.size(1)):
            _, _, reference = model.decode_step(reference, history[:, t])
        want, want_attention, _ = model.decode_step(reference, last)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if want_attention is not None:
        torch.testing.assert_close(got_attention, want_attention, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm-bi-bahdanau", "transformer-pre"])
def test_decoding_never_changes_the_source_part(name: str, batch) -> None:
    """Only per-row entries change per step, so sharing the source part across beams is safe."""
    model = make_model(name).eval()
    src, src_mask, tgt_in, _, _ = batch
    with torch.no_grad():
        state = model.encode(src, src_mask)
        _, _, stepped = model.decode_step(state, tgt_in[:, 0])
    assert stepped.source is state.source and stepped.rows.keys() == state.rows.keys()
    with pytest.raises(ValueError, match="lines of rows"):  # dropping a sentence needs its index
        model.reorder(stepped, torch.tensor([[0], [2]]))


@pytest.mark.parametrize("name", ARCHS)
def test_every_parameter_gets_a_gradient(name: str, batch) -> None:
    model = make_model(name).train()
    src, src_mask, tgt_in, tgt_out, _ = batch
    logits, _ = model(src, src_mask, tgt_in)
    F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD_ID).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_autocast(name: str, batch) -> None:
    model = make_model(name).train()
    src, src_mask, tgt_in, tgt_out, _ = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, attention = model(src, src_mask, tgt_in, with_attention=True)
        loss = F.cross_entropy(
            logits.float().reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD_ID
        )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if attention is not None:
        mask = src_mask.unsqueeze(1).expand_as(attention)
        assert torch.all(attention[~mask] == 0)
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = model.encode(src, src_mask)
        log_probs, _, _ = model.decode_step(state, tgt_in[:, 0])
    assert log_probs.dtype == torch.float32 and torch.isfinite(log_probs).all()


def token_accuracy(model: Seq2Seq, data) -> float:
    src, src_mask, tgt_in, tgt_out, tgt_mask = data
    model.eval()
    with torch.no_grad():
        predicted = model(src, src_mask, tgt_in)[0].argmax(-1)
    model.train()
    return ((predicted == tgt_out) & tgt_mask).sum().item() / tgt_mask.sum().item()


def _learn(name: str, max_steps: int, **overrides) -> float:
    """Train on the reverse task until >= 95% teacher-forced token accuracy or max_steps."""
    size = dict(
        embed_dim=32,
        hidden_size=32,
        encoder_layers=1,
        decoder_layers=1,
        heads=4,
        ffn_size=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    model = make_model(name, **{**size, **overrides})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    held_out = sample_batch(torch.Generator().manual_seed(99), 256)
    accuracy = 0.0
    for step in range(1, max_steps + 1):
        src, src_mask, tgt_in, tgt_out, _ = sample_batch(gen, 64)
        logits, _ = model(src, src_mask, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            accuracy = token_accuracy(model, held_out)
            if accuracy >= 0.95:
                break
    return accuracy


# Without attention the whole sentence must pass through one state vector: a wider state
# and more steps, hence slow.
SLOW_LEARNERS = {name: dict(embed_dim=64, hidden_size=64) for name in NO_ATTENTION}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_LEARNERS else n for n in ARCHS],
)
def test_learns_reverse_task(name: str) -> None:
    start = time.perf_counter()
    max_steps = 1500 if name in SLOW_LEARNERS else 600
    accuracy = _learn(name, max_steps, **SLOW_LEARNERS.get(name, {}))
    assert accuracy >= 0.95, f"{name}: token accuracy {accuracy:.3f}"
    assert time.perf_counter() - start < 120


def test_tied_embeddings_share_one_tensor() -> None:
    three_way = make_model("transformer-pre")
    untied = make_model("transformer-pre", tie_embeddings=False)
    weight = three_way.decoder.embed.embedding.weight
    assert three_way.encoder.embed.embedding.weight is weight
    assert three_way.decoder.output.weight is weight
    assert count_parameters(untied) == count_parameters(three_way) + 2 * weight.numel()
    torch.manual_seed(0)
    two_way = build_model(tiny_config("lstm-bi-bahdanau"), VOCAB, VOCAB + 4)
    assert two_way.decoder.output.proj.weight is two_way.decoder.embedding.weight
    assert two_way.encoder.embedding.weight is not two_way.decoder.embedding.weight


@pytest.mark.parametrize("name", ["lstm-bi-bahdanau", "transformer-pre"])
def test_state_dict_round_trip(name: str, batch) -> None:
    trained, fresh = make_model(name, seed=1).eval(), make_model(name, seed=2).eval()
    fresh.load_state_dict(trained.state_dict())
    src, src_mask, tgt_in, _, _ = batch
    torch.testing.assert_close(fresh(src, src_mask, tgt_in)[0], trained(src, src_mask, tgt_in)[0])


def test_interface_attributes() -> None:
    model = build_model(replace(TINY, positions="learned"), 20, 24)
    assert (model.src_vocab_size, model.tgt_vocab_size, model.arch) == (20, 24, "transformer")
    assert model.max_source_len == TINY.max_positions == model.max_target_len
    src, src_mask = pad_batch([[5] * (TINY.max_positions + 1)])
    with pytest.raises(ValueError, match="exceeds"):
        model.encode(src, src_mask)


@pytest.mark.parametrize(
    ("overrides", "vocab", "field"),
    [
        (dict(arch="transformer", embed_dim=30, heads=4), (16, 16), "model.heads"),
        (dict(arch="rnn", attention="luong", local_window=-1), (16, 16), "model.local_window"),
        (dict(self_attention_window=-2), (16, 16), "model.self_attention_window"),
        (
            dict(self_attention="linear", self_attention_window=2),
            (16, 16),
            "model.self_attention_window needs softmax",
        ),
        (dict(cross_attention="sparse"), (16, 16), "model.cross_attention"),
        (dict(arch="rnn", cell="lstmx"), (16, 16), "model.cell"),
        (dict(arch="rnn", attention="global"), (16, 16), "model.attention"),
        (dict(arch="rnn", luong_score="bilinear"), (16, 16), "model.luong_score"),
        (dict(arch="cnn"), (16, 16), "model.arch"),
        (dict(tie_embeddings=True), (16, 20), "model.tie_embeddings"),
        (dict(decoder_layers=2, alignment_layer=2), (16, 16), "model.alignment_layer"),
        (dict(decoder_layers=2, alignment_layer=-3), (16, 16), "model.alignment_layer"),
        (dict(decoder_layers=1, alignment_layer=-3), (16, 16), "model.alignment_layer"),
        (dict(arch="rnn", hidden_size=0), (16, 16), "model.hidden_size"),
        (dict(norm="middle"), (16, 16), "model.norm: 'middle' is not one of pre, post"),
    ],
)
def test_bad_configs_fail_at_build_time(overrides: dict, vocab: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_model(replace(TINY, **overrides), *vocab, joint_vocab=True)


def test_fields_of_the_other_architecture_are_not_checked() -> None:
    """An RNN has no heads and a Transformer no hidden_size: unused values cannot break them."""
    rnn = build_model(
        tiny_config(
            "gru-bahdanau",
            heads=0,
            ffn_size=0,
            embed_dim=15,
            attention_dropout=1.0,
            alignment_layer=9,
        ),
        VOCAB,
        VOCAB,
    )
    transformer = build_model(
        tiny_config("transformer-pre", hidden_size=0, local_window=-1), VOCAB, VOCAB
    )
    assert rnn.arch == "rnn" and transformer.arch == "transformer"


def test_alignment_layer_default_with_one_decoder_layer() -> None:
    one = build_model(replace(TINY, decoder_layers=1), VOCAB, VOCAB)
    three = build_model(replace(TINY, decoder_layers=3), VOCAB, VOCAB)
    assert one.decoder.alignment_layer == 0
    assert three.decoder.alignment_layer == 1
    untied = build_model(replace(TINY, tie_embeddings=False), VOCAB, VOCAB + 4, joint_vocab=True)
    assert untied.tgt_vocab_size == VOCAB + 4

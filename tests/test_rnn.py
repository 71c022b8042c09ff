"""RNN specifics: packed encoder, bridge, and when each attention reads the decoder state."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nmt.config import ModelConfig
from nmt.model import build_model
from nmt.precision import DeviceCaps, device_caps, recurrent_fp32
from nmt.rnn import Bridge, RNNEncoder, make_rnn, run_rnn
from nmt.specials import BOS_ID

VOCAB = 20
TINY = ModelConfig(
    arch="rnn", embed_dim=8, hidden_size=6, encoder_layers=2, decoder_layers=2, dropout=0.0
)


def make(**overrides):
    torch.manual_seed(0)
    return build_model(replace(TINY, **overrides), VOCAB, VOCAB).eval()


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_encoder_ignores_padding(cell: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    encoder = RNNEncoder(
        torch.nn.Embedding(VOCAB, 8, padding_idx=0), cell, 6, 2, bidirectional, 0.0
    ).eval()
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        alone, alone_final = encoder(short, short != 0)
        both, both_final = encoder(padded, padded != 0)
    width = 12 if bidirectional else 6
    assert both.shape == (2, 5, width)
    torch.testing.assert_close(both[:1, :3], alone, atol=1e-6, rtol=1e-5)
    assert torch.all(both[0, 3:] == 0)
    assert len(both_final) == (2 if cell == "lstm" else 1)
    for got, want in zip(both_final, alone_final):
        assert got.shape == (2, 2, width)  # [B, layers, directions*H]
        torch.testing.assert_close(got[:1], want, atol=1e-6, rtol=1e-5)


def test_encoder_final_state_concatenates_both_directions() -> None:
    torch.manual_seed(0)
    encoder = RNNEncoder(torch.nn.Embedding(VOCAB, 8), "gru", 6, 1, True, 0.0).eval()
    src = torch.tensor([[5, 6, 7, 0]])
    memory, (final,) = encoder(src, src != 0)
    # forward direction ends at the last real token, backward direction at the first
    torch.testing.assert_close(final[0, 0, :6], memory[0, 2, :6])
    torch.testing.assert_close(final[0, 0, 6:], memory[0, 0, 6:])


def test_bridge_maps_layers_from_the_top_and_projects_wider_states() -> None:
    states = torch.arange(3.0).view(1, 3, 1).expand(1, 3, 4)  # encoder layer l holds l
    copy = Bridge(encoder_layers=3, decoder_layers=2, in_size=4, hidden_size=4, kinds=1)
    (mapped,) = copy((states,))
    assert mapped[0, :, 0].tolist() == [1.0, 2.0]
    deeper = Bridge(encoder_layers=1, decoder_layers=3, in_size=4, hidden_size=4, kinds=1)
    assert deeper((states[:, :1],))[0].shape == (1, 3, 4)
    projected = Bridge(encoder_layers=3, decoder_layers=2, in_size=4, hidden_size=2, kinds=2)
    h, c = projected((states, states))
    assert h.shape == c.shape == (1, 2, 2)
    assert torch.all(h.abs() < 1) and not torch.equal(h, c)  # tanh, separate weights


def test_bahdanau_attends_with_the_previous_state() -> None:
    model = make(attention="bahdanau", cell="lstm")
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    state = model.encode(src, src != 0)
    decoder = model.decoder
    query = state.rows["hidden"][:, -1:]  # the bridge's state: s_0, before any recurrent step
    source = state.source
    _, expected = decoder.attention(query, source["keys"], source["memory"], source["src_mask"])
    _, attention, _ = model.decode_step(state, torch.tensor([BOS_ID, BOS_ID]))
    torch.testing.assert_close(attention, expected.squeeze(1))


@pytest.mark.parametrize("input_feeding", [False, True])
def test_luong_attends_with_the_current_state(input_feeding: bool) -> None:
    model = make(attention="luong", luong_score="general", input_feeding=input_feeding)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    state = model.encode(src, src != 0)
    _, attention, new_state = model.decode_step(state, torch.tensor([BOS_ID, BOS_ID]))
    query = new_state.rows["hidden"][:, -1:]  # h_1, after the recurrent step
    source = state.source
    attention_module = model.decoder.attention
    _, expected = attention_module(query, source["keys"], source["memory"], source["src_mask"])
    torch.testing.assert_close(attention, expected.squeeze(1))
    if input_feeding:
        assert new_state.rows["feed"].shape == (2, 6) and new_state.rows["feed"].abs().max() > 0


def test_state_keeps_batch_first() -> None:
    model = make(attention="luong", cell="lstm", bidirectional=True, decoder_layers=3)
    src = torch.tensor([[5, 6, 7], [9, 10, 0]])
    state = model.encode(src, src != 0)
    assert state.rows["hidden"].shape == state.rows["cell"].shape == (2, 3, 6)
    assert state.source["memory"].shape == (2, 3, 12) and state.source["keys"].shape == (2, 3, 6)
    assert state.rows["feed"].shape == (2, 6)


def test_recurrent_precision_decision() -> None:
    """CUDA leaves autocast (its cuDNN RNN wrapper would cast to fp16, even under bf16
    autocast); a CPU runs bf16 recurrent layers only with native bf16 instructions."""
    assert recurrent_fp32(DeviceCaps.cuda((8, 0))) and recurrent_fp32(DeviceCaps.cuda((7, 0)))
    assert recurrent_fp32(DeviceCaps("cpu", native_bf16=False))
    assert not recurrent_fp32(DeviceCaps("cpu", native_bf16=True))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_rnn_under_autocast_keeps_the_dtype_we_intend(cell: str) -> None:
    torch.manual_seed(0)
    rnn = make_rnn(cell, 8, 6, 2, 0.0)
    inputs = torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, hx = run_rnn(rnn, inputs, fp32=True)
        assert outputs.dtype == torch.float32
        assert all(h.dtype == torch.float32 for h in (hx if isinstance(hx, tuple) else (hx,)))
        if device_caps(torch.device("cpu")).native_bf16:  # oneDNN's bf16 RNN needs it
            assert run_rnn(rnn, inputs, fp32=False)[0].dtype == torch.bfloat16
    assert run_rnn(rnn, inputs, fp32=True)[0].dtype == torch.float32  # no autocast: as is

"""Linear (kernel) attention (Katharopoulos et al., 2020, "Transformers are RNNs").

softmax(QK^T)V is replaced by phi(Q) (phi(K)^T V) / (phi(Q) . sum phi(K)), with the feature
map phi(x) = elu(x) + 1 (positive, so the weights phi(q).phi(k) / normaliser are a proper
distribution). Cost grows linearly with length, and causal attention becomes a recurrence
with a fixed-size state per row and head: S = sum phi(k) v^T [dh,dh] and z = sum phi(k) [dh].
A decoding step adds the new position to S and z and reads them with phi(q): O(1) time and
memory per token, whatever the prefix length.

- Non-causal (encoder self-attention, cross-attention): padded keys get phi(k) = 0, so they
  add nothing to S or z and get a weight of exactly 0. Cross-attention keys and values are
  fixed per sentence, so `summarise` computes phi(K) and phi(K)^T [V 1] (S and z in one
  tensor) once, and each decoding step reads them in O(dh^2) per head, whatever the source
  length (`attend_summary`).
- Causal, whole sequence (training): prefix sums of phi(k) v^T, computed per chunk of
  `CHUNK` positions: within a chunk the masked quadratic form (phi(Q_c) phi(K_c)^T, lower
  triangle) V_c, across chunks the prefix sums of the chunks' phi(K_c)^T V_c. Both are exact;
  chunking keeps the [dh,dh] state per chunk instead of per position (per-position prefix
  sums would hold T x dh x dh floats per head for backward) and makes the work matmuls.
  Multi30k sentences fit one chunk.
- Causal, one step (decoding): the recurrence above, the state kept in `DecoderState.rows`.

Numerics: S, z, the normaliser and the prefix sums are float32 even under bf16 autocast:
they are running sums of positive terms, and bf16's 8-bit mantissa stops a sum growing once
a term is below 1/256 of it (a long prefix would be silently forgotten), while the
numerator and normaliser must round alike for their ratio to be a weighted mean. The
normaliser has `EPS` added: phi(k) underflows to 0 for very negative inputs and positions
without any real key (chunk padding) have a zero normaliser, and 0/0 would make NaN in the
output and, through the division's gradient, in every parameter.

There is no attention matrix to drop out, so `attention_dropout` does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.attention import MultiHeadAttention

EPS = 1e-6
CHUNK = 64


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al., 2020)."""
    return F.elu(x) + 1.0


class LinearAttention(nn.Module):
    """Multi-head linear attention with `MultiHeadAttention`'s projections (q/k/v in one
    matrix, the output projection); only the kernel differs. Same `project_*` / `attend`
    calls, plus `step` for the recurrent decoding state. Shapes as in MultiHeadAttention."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.projections = MultiHeadAttention(embed_dim, heads, dropout=0.0)
        self.embed_dim = embed_dim
        self.heads = heads
        self.head_dim = embed_dim // heads

    def project_q(self, x: Tensor) -> Tensor:
        return self.projections.project_q(x)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.projections.project_kv(x)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.projections.project_qkv(x)

    def initial_state(self, rows: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Empty recurrent state: S [R,h,dh,dh] and z [R,h,dh], float32 zeros."""
        dh = self.head_dim
        s = torch.zeros(rows, self.heads, dh, dh, device=device)
        return s, torch.zeros(rows, self.heads, dh, device=device)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """q [B,h,T,dh], k/v [B,h,S,dh], mask: keys [B,1,1,S] bool (True = real token) or None
        -> output [B,T,E], weights [B,T,S] float32 averaged over heads (or None).

        Causal attention takes no mask (target padding comes after the real tokens, so
        causality already keeps it out) and returns no weights.
        """
        if mask is not None and mask.size(-2) != 1:
            raise ValueError("linear attention takes a key mask [B,1,1,S], not a [T,S] mask")
        dtype = v.dtype
        weights = None
        with torch.autocast(q.device.type, enabled=False):
            phi_q, phi_k, v = elu_feature_map(q.float()), elu_feature_map(k.float()), v.float()
            if mask is not None:
                phi_k = phi_k * mask.transpose(-1, -2)  # [B,1,S,1]: padded keys add nothing
            if is_causal:
                context = causal_linear_attention(phi_q, phi_k, v)
            else:
                s = phi_k.transpose(-1, -2) @ v  # [B,h,dh,dh]
                normaliser = phi_q @ phi_k.sum(2).unsqueeze(-1) + EPS  # [B,h,T,1]
                context = (phi_q @ s) / normaliser
                if need_weights:
                    weights = ((phi_q @ phi_k.transpose(-1, -2)) / normaliser).mean(dim=1)
        return self._merge(context.to(dtype)), weights

    def summarise(self, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values that do not change (cross-attention): k/v [N,h,S,dh], mask [N,S] ->
        phi(k) with padded keys 0 [N,h,S,dh] (for alignments) and phi(K)^T [V 1]
        [N,h,dh,dh+1] (S and z side by side), both float32."""
        with torch.autocast(k.device.type, enabled=False):
            phi_k = elu_feature_map(k.float()) * mask[:, None, :, None]
            ones = torch.ones_like(v[..., :1], dtype=torch.float32)
            return phi_k, phi_k.transpose(-1, -2) @ torch.cat((v.float(), ones), dim=-1)

    def attend_summary(
        self, q: Tensor, phi_k: Tensor, summary: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """`attend` on summarised keys/values: q [N,h,T,dh], phi_k and summary from
        `summarise` -> output [N,T,E], weights [N,T,S] float32 head mean (or None)."""
        dtype = q.dtype
        weights = None
        with torch.autocast(q.device.type, enabled=False):
            phi_q = elu_feature_map(q.float())
            both = phi_q @ summary  # [N,h,T,dh+1]: numerator and normaliser
            normaliser = both[..., -1:] + EPS
            context = both[..., :-1] / normaliser
            if need_weights:
                weights = ((phi_q @ phi_k.transpose(-1, -2)) / normaliser).mean(dim=1)
        return self._merge(context.to(dtype)), weights

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One causal position: q/k/v [R,h,1,dh], state (S [R,h,dh,dh], z [R,h,dh]) of the
        positions before -> output [R,1,E], the state including this position."""
        dtype = v.dtype
        with torch.autocast(q.device.type, enabled=False):
            phi_q, phi_k = elu_feature_map(q.float()), elu_feature_map(k.float())
            s = state[0] + phi_k.transpose(-1, -2) @ v.float()  # + phi(k) v^T
            z = state[1] + phi_k.squeeze(2)
            normaliser = phi_q @ z.unsqueeze(-1) + EPS  # [R,h,1,1]
            context = (phi_q @ s) / normaliser
        return self._merge(context.to(dtype)), (s, z)

    def _merge(self, context: Tensor) -> Tensor:
        """[B,h,T,dh] -> output projection of the concatenated heads [B,T,E]."""
        batch, _, length, _ = context.shape
        merged = context.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.projections.out_proj(merged)


def causal_linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
    """Position t attends to positions <= t: phi_q/phi_k/v [B,h,T,dh] float32 -> [B,h,T,dh].

    Chunks of CHUNK positions: the quadratic form inside a chunk, the prefix sums of the
    earlier chunks' states across them (see the module docstring).
    """
    batch, heads, length, dh = phi_q.shape
    pad = -length % CHUNK if length > CHUNK else 0  # one shorter chunk needs no padding
    if pad:  # zero rows: no contribution as keys, a zero normaliser (EPS) as queries
        phi_q, phi_k, v = (F.pad(x, (0, 0, 0, pad)) for x in (phi_q, phi_k, v))
    chunks = max(1, (length + pad) // CHUNK)
    q, k, v = (x.reshape(batch, heads, chunks, -1, dh) for x in (phi_q, phi_k, v))
    scores = (q @ k.transpose(-1, -2)).tril()  # [B,h,n,C,C]
    numerator = scores @ v
    normaliser = scores.sum(-1, keepdim=True)
    if chunks > 1:
        s = k.transpose(-1, -2) @ v  # each chunk's sum of phi(k) v^T [B,h,n,dh,dh]
        z = k.sum(3)  # [B,h,n,dh]
        s_before = torch.cat((torch.zeros_like(s[:, :, :1]), s[:, :, :-1].cumsum(2)), dim=2)
        z_before = torch.cat((torch.zeros_like(z[:, :, :1]), z[:, :, :-1].cumsum(2)), dim=2)
        numerator = numerator + q @ s_before
        normaliser = normaliser + q @ z_before.unsqueeze(-1)
    context = numerator / (normaliser + EPS)
    return context.reshape(batch, heads, -1, dh)[:, :, :length]

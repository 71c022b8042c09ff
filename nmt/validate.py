"""Validation during training: teacher-forced loss/perplexity and sacreBLEU of decoded output."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from nmt.batching import SplitIds, TokenBatchSampler
from nmt.config import Config
from nmt.data import PreparedData
from nmt.evaluate import ScoringPolicy, corpus_bleu
from nmt.model import Seq2Seq
from nmt.optim import label_smoothed_nll
from nmt.precision import autocast_dtype
from nmt.translator import ModelInfo, Translator


@torch.inference_mode()
def validation_loss(
    model: Seq2Seq, data: PreparedData, config: Config, device: torch.device, precision: str
) -> float:
    """Mean per-token NLL on the validation split (no label smoothing).

    In the run's training `precision` (autocast), and through the chunked loss, which under
    inference mode computes no gradient and never holds a [N, V] log-softmax: at GPU batch
    sizes a float32 log-softmax of the whole batch can exhaust the memory training fit in.
    """
    ids = SplitIds.of(data.splits[config.data.valid_split])
    sampler = TokenBatchSampler(*ids.batch_lengths(), config.train.batch_tokens, shuffle=False)
    dtype = autocast_dtype(precision)
    model.eval()
    nll = torch.zeros((), device=device)
    tokens = 0
    for indices in sampler:
        batch = ids.batch(indices).to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, _ = model(batch.src, batch.src_mask, batch.tgt_in)
        nll += label_smoothed_nll(logits, batch.tgt_out, 0.0)[1]
        tokens += batch.num_tgt_tokens
    return float(nll) / max(tokens, 1)


def validate(
    model: Seq2Seq, data: PreparedData, config: Config, device: torch.device, precision: str
) -> dict[str, Any]:
    """Loss, perplexity and BLEU on (a prefix of) the validation split, decoding as configured.

    BLEU follows the model's ScoringPolicy, as `nmt evaluate` of its checkpoint would.
    """
    loss = validation_loss(model, data, config, device, precision)
    ds = data.splits[config.data.valid_split]
    rows = ds[: config.train.valid_limit or len(ds)]
    sources, references = rows["src"], rows["tgt"]
    decode = dataclasses.replace(config.decode, beam_size=config.train.valid_beam_size, n_best=1)
    info = ModelInfo.of(config.name, config.model, model, data.tokenizer)
    translator = Translator(model, data.tokenizer, decode, device, info=info)
    hypotheses = [t.text for t in translator.translate(sources)]
    policy = ScoringPolicy.of(data.tokenizer)
    bleu, signature = corpus_bleu(hypotheses, references, config.data.tgt_lang, policy)
    model.train()
    return {
        "loss": round(loss, 5),
        "ppl": round(math.exp(min(loss, 50)), 3),
        "bleu": round(bleu, 2),
        "bleu_signature": signature,
        "beam_size": decode.beam_size,
        "sentences": len(sources),
    }

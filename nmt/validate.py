"""Validation during training: teacher-forced loss/perplexity and sacreBLEU of decoded output."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from nmt.batching import TokenBatchSampler, collate
from nmt.config import Config
from nmt.data import PreparedData
from nmt.evaluate import bleu_metric, remove_word_spaces
from nmt.translator import Translator


@torch.inference_mode()
def validation_loss(model: nn.Module, data: PreparedData, config: Config, device: torch.device) -> float:
    """Mean per-token NLL on the validation split (no label smoothing)."""
    columns = data.splits[config.data.valid_split][:]
    src_ids, tgt_ids = columns["src_ids"], columns["tgt_ids"]
    sampler = TokenBatchSampler([len(x) for x in src_ids], [len(y) + 1 for y in tgt_ids],
                                config.train.batch_tokens, shuffle=False)
    model.eval()
    nll, tokens = 0.0, 0
    for indices in sampler:
        batch = collate([{"src_ids": src_ids[i], "tgt_ids": tgt_ids[i]} for i in indices], indices)
        batch = batch.to(device)
        logits, _ = model(batch.src, batch.src_mask, batch.tgt_in)
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        gold = lprobs.gather(-1, batch.tgt_out.unsqueeze(-1)).squeeze(-1)
        nll -= float((gold * batch.tgt_mask).sum())
        tokens += batch.num_tgt_tokens
    return nll / max(tokens, 1)


def validate(model: nn.Module, data: PreparedData, config: Config, device: torch.device) -> dict[str, Any]:
    """Loss, perplexity and BLEU on (a prefix of) the validation split, decoding as configured."""
    loss = validation_loss(model, data, config, device)
    ds = data.splits[config.data.valid_split]
    rows = ds[: config.train.valid_limit or len(ds)]
    sources, references = rows["src"], rows["tgt"]
    if config.data.tgt_lang in config.tokenizer.detok_remove_spaces:
        # The decoder removes the spaces of pre-segmented targets: score against the same form.
        references = remove_word_spaces(references)
    decode = dataclasses.replace(config.decode, beam_size=config.train.valid_beam_size, n_best=1)
    translator = Translator(model, data.tokenizer, decode, device, info={"name": config.name})
    hypotheses = [t.text for t in translator.translate(sources)]
    metric = bleu_metric(config.data.tgt_lang, lowercase=config.tokenizer.lowercase)
    bleu = metric.corpus_score(hypotheses, [references])
    model.train()
    return {
        "loss": round(loss, 5),
        "ppl": round(math.exp(min(loss, 50)), 3),
        "bleu": round(bleu.score, 2),
        "bleu_signature": str(metric.get_signature()),
        "beam_size": decode.beam_size,
        "sentences": len(sources),
    }

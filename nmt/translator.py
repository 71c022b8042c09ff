"""Translator: text in, translations (with scores, n-best lists and alignments) out.

`Translator.load(checkpoint)` needs only the checkpoint file (weights, config, SentencePiece
models). Training validation builds one from the in-memory model instead. Inputs are
encoded, sorted by length into sub-batches of at most `decode.batch_tokens` padded source
tokens, decoded (greedy for beam size 1, else beam search), and returned in input order.

With `rerank_with(Reranker)` every search's hypotheses are reranked by reverse models
(nmt.rerank) before the best is taken.

`Translator.info` (ModelInfo) says what the model is; `Translator.decode` holds the decoding
defaults, once; `TranslateOptions` are one call's choices; `translate_chunks` is the loop
that translates a file or a stream chunk by chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from nmt.alignment import Alignment, build_alignment
from nmt.checkpoint import file_sha256, load_checkpoint
from nmt.config import DecodeConfig, ModelConfig
from nmt.ct2_engine import ENGINE as CT2_ENGINE
from nmt.ct2_engine import CTranslate2Engine, SearchSettings, open_exported
from nmt.ensemble import Ensemble, EnsembleError
from nmt.forced_alignment import Forced, ForcedAlignment, teacher_force
from nmt.model import Seq2Seq, build_model, count_parameters
from nmt.precision import decoding_precision, device_caps, prepare_device
from nmt.rerank import Reranker
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.specials import EOS_ID, PAD_ID
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class TranslationError(ValueError):
    """An input or request the translator cannot serve, phrased for the user."""


@dataclass
class Translation:
    source: str
    text: str
    score: float  # length-normalised log-probability of the best hypothesis
    tokens: list[str]  # target pieces (no EOS)
    src_tokens: list[str]  # source pieces (no EOS), after truncation if any
    alignment: Alignment | None = None  # when asked for and the model has attention
    n_best: list[tuple[str, float]] | None = None  # (text, score), best first, when n_best > 1
    truncated: bool = False  # the source was cut to the model's maximum length

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (one JSONL line of `nmt translate --format jsonl`)."""
        data = dataclasses.asdict(self)
        data["alignment"] = self.alignment.to_dict() if self.alignment is not None else None
        data["n_best"] = [list(item) for item in self.n_best] if self.n_best is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Translation:
        values = dict(data)
        if data.get("alignment") is not None:
            values["alignment"] = Alignment.from_dict(data["alignment"])
        if data.get("n_best") is not None:
            values["n_best"] = [(str(text), float(score)) for text, score in data["n_best"]]
        return cls(**values)


@dataclass(frozen=True)
class ModelInfo:
    """What a translator's model is, for reports, scripts and the server's /info.

    The decoding settings are not part of it: they are the translator's `decode` alone, which
    callers may change (--precision, --length-penalty, ...) after loading.
    """

    name: str
    arch: str  # rnn | transformer
    architecture: str  # one line, see describe_model
    src_lang: str
    tgt_lang: str
    lowercase: bool  # the model reads and writes lowercased text
    parameters: int
    max_source_len: int | None  # source tokens (with EOS) the model accepts; None = any
    valid_bleu: float | None = None  # the rest describe the checkpoint file, if any
    step: int | None = None
    checkpoint: str | None = None  # its path
    sha256: str | None = None  # an ensemble's: of its members' hashes, in order
    members: tuple[str, ...] = ()  # an ensemble's member checkpoints
    engine: str = "pytorch"  # pytorch | ctranslate2 (an exported model directory)
    quantization: str | None = None  # ctranslate2: the weights' compute type, e.g. int8

    @classmethod
    def of(
        cls, name: str, config: ModelConfig, model: nn.Module, tokenizer: Tokenizer
    ) -> ModelInfo:
        """The info of a model in memory (no checkpoint file: no BLEU, step or hash)."""
        return cls(
            name=name,
            arch=config.arch,
            architecture=describe_model(config),
            src_lang=tokenizer.src_lang,
            tgt_lang=tokenizer.tgt_lang,
            lowercase=tokenizer.config.lowercase,
            parameters=count_parameters(model),
            max_source_len=_max_source_len(model),
        )

    def to_dict(self, decode: DecodeConfig) -> dict[str, Any]:
        """The JSON form (the server's /info "model"), with the decoding settings in use."""
        data = dataclasses.asdict(self)
        data["checkpoint_sha256"] = data.pop("sha256")
        data["members"] = list(self.members)
        data["decode"] = dataclasses.asdict(decode)
        return data


@dataclass(frozen=True)
class TranslateOptions:
    """The per-call settings of `Translator.translate` (None: the decode config's).

    Frozen and hashable, so that requests with equal options can be decoded together.
    """

    beam_size: int | None = None
    n_best: int | None = None
    max_len: int | None = None
    with_alignment: bool = False
    truncate: bool = False


@dataclass
class _Request:
    """Resolved decoding settings of one translate() call."""

    beam_size: int
    n_best: int
    max_len_a: float
    max_len_b: int
    with_alignment: bool


class Translator:
    def __init__(
        self,
        model: Seq2Seq | Ensemble | CTranslate2Engine,
        tokenizer: Tokenizer,
        decode: DecodeConfig,
        device: str | torch.device = "cpu",
        *,
        info: ModelInfo,
    ) -> None:
        """Wrap a model that already lives on `device` (its train/eval mode is restored after use).

        `info` describes the model for reports and the server; `decode` is the one copy of the
        decoding settings (replace it to decode differently).
        """
        self.model = model
        self.tokenizer = tokenizer
        self.decode = decode
        self.device = torch.device(device)
        self.info = info
        self.reranker: Reranker | None = None

    def rerank_with(self, reranker: Reranker | None) -> None:
        """Rerank every search's hypotheses with reverse models (nmt.rerank); None: stop."""
        if reranker is not None:
            reranker.check(self.info)
        self.reranker = reranker

    @classmethod
    def load(cls, checkpoint_path: str | Path, device: str | torch.device = "cpu") -> Translator:
        """A translator from a checkpoint file alone, in eval mode on `device`; or from a
        directory written by `nmt export --format ctranslate2` (decoding with CTranslate2)."""
        path = Path(checkpoint_path)
        if path.is_dir():
            return cls._load_exported(path, device)
        checkpoint = load_checkpoint(path)
        config, vocab = checkpoint.config, checkpoint.vocab
        tokenizer = Tokenizer.from_state(checkpoint.tokenizer)
        model = build_model(config.model, vocab.src, vocab.tgt, joint_vocab=vocab.joint)
        model.load_state_dict(checkpoint.model)
        device = torch.device(device)
        prepare_device(device)
        model.to(device).eval()
        info = dataclasses.replace(
            ModelInfo.of(config.name, config.model, model, tokenizer),
            valid_bleu=checkpoint.metrics.get("valid_bleu"),
            step=checkpoint.step,
            checkpoint=str(path),
            sha256=file_sha256(path),
        )
        return cls(model, tokenizer, config.decode, device, info=info)

    @classmethod
    def _load_exported(cls, path: Path, device: str | torch.device) -> Translator:
        exported = open_exported(path, device)
        config, metadata = exported.config, exported.metadata
        info = ModelInfo(
            name=config.name,
            arch=config.model.arch,
            architecture=describe_model(config.model),
            src_lang=exported.tokenizer.src_lang,
            tgt_lang=exported.tokenizer.tgt_lang,
            lowercase=exported.tokenizer.config.lowercase,
            parameters=int(metadata["parameters"]),
            max_source_len=exported.engine.max_source_len,
            valid_bleu=metadata["metrics"].get("valid_bleu"),
            step=int(metadata["step"]),
            checkpoint=str(path),
            sha256=str(metadata["source_sha256"]),
            engine=CT2_ENGINE,
            quantization=exported.engine.compute_type,
        )
        return cls(exported.engine, exported.tokenizer, config.decode, device, info=info)

    @classmethod
    def load_ensemble(
        cls,
        checkpoint_paths: Sequence[str | Path],
        device: str | torch.device = "cpu",
        alignment_member: int | None = None,
    ) -> Translator:
        """An ensemble of checkpoints (one checkpoint: that model alone), decoding with the
        first one's settings. Members must share their SentencePiece models: the source is
        encoded once, and log-probabilities are averaged over one target vocabulary."""
        if len(checkpoint_paths) > 1 and any(Path(p).is_dir() for p in checkpoint_paths):
            raise EnsembleError(
                "exported (CTranslate2) model directories cannot be ensembled; give the "
                "members' checkpoint files (PyTorch engine)"
            )
        members = [cls.load(path, device) for path in checkpoint_paths]
        if len(members) == 1:
            return members[0]
        first = members[0]
        for path, member in zip(checkpoint_paths[1:], members[1:]):
            if member.tokenizer.to_state() != first.tokenizer.to_state():
                raise EnsembleError(
                    f"{path} has other SentencePiece models than {checkpoint_paths[0]}: "
                    "ensemble members must share their vocabularies"
                )
        model = Ensemble(
            [m.model for m in members if isinstance(m.model, Seq2Seq)], alignment_member
        )
        infos = [m.info for m in members]
        digest = hashlib.sha256("\n".join(str(i.sha256) for i in infos).encode()).hexdigest()
        info = ModelInfo(
            name="+".join(i.name for i in infos),
            arch="ensemble",
            architecture=f"ensemble of {len(infos)}: " + "; ".join(i.architecture for i in infos),
            src_lang=first.info.src_lang,
            tgt_lang=first.info.tgt_lang,
            lowercase=first.info.lowercase,
            parameters=sum(i.parameters for i in infos),
            max_source_len=model.max_source_len,
            sha256=digest,
            members=tuple(str(p) for p in checkpoint_paths),
        )
        return cls(model, first.tokenizer, first.decode, device, info=info)

    # ------------------------------------------------------------------ translate

    def translate(
        self,
        texts: Sequence[str],
        beam_size: int | None = None,
        max_len: int | None = None,
        n_best: int | None = None,
        with_alignment: bool = False,
        truncate: bool = False,
    ) -> list[Translation]:
        """Translate `texts` (any order, empty lines allowed) into one Translation each.

        beam_size / n_best default to the decode config; `max_len` caps every output at that
        many tokens (instead of decode.max_len_a * source length + decode.max_len_b). A source
        longer than the model accepts raises TranslationError, or is cut when `truncate`.
        """
        request = self._request(beam_size, max_len, n_best, with_alignment)
        search = request  # a reranker sees every hypothesis the beam finished
        if self.reranker is not None:
            search = dataclasses.replace(request, n_best=request.beam_size)
        texts = list(texts)
        results: list[Translation | None] = [None] * len(texts)
        encoded: dict[int, tuple[list[int], bool]] = {}
        for i, text in enumerate(texts):
            if not text.strip():
                results[i] = self._empty(text, request)
            else:
                encoded[i] = self._encode(text, i, truncate)
        ids = {i: seq for i, (seq, _) in encoded.items()}
        for chunk, hyps in self._search_chunks(ids, search):
            if self.reranker is not None:
                hyps = self._reranked([texts[i] for i in chunk], hyps, request.n_best)
            for i, sentence_hyps in zip(chunk, hyps):
                results[i] = self._translation(
                    texts[i], ids[i], encoded[i][1], sentence_hyps, request
                )
        return [r for r in results if r is not None]

    def hypotheses(
        self, texts: Sequence[str], beam_size: int | None = None
    ) -> list[list[tuple[Hypothesis, str]]]:
        """Every hypothesis beam search finished for each text, with its text, best first by
        search's score (no reranking): what a reranker chooses from, so that several rerank
        weights can be tried on one search (scripts/choose_decoding.py). An empty text has
        none; a text longer than the model accepts raises TranslationError."""
        request = self._request(beam_size, None, None, with_alignment=False)
        request = dataclasses.replace(request, n_best=request.beam_size)
        found: list[list[tuple[Hypothesis, str]]] = [[] for _ in texts]
        ids = {i: self._encode(t, i, truncate=False)[0] for i, t in enumerate(texts) if t.strip()}
        for chunk, hyps in self._search_chunks(ids, request):
            for i, sentence_hyps in zip(chunk, hyps):
                found[i] = list(zip(sentence_hyps, self._texts(sentence_hyps)))
        return found

    def _search_chunks(
        self, ids: dict[int, list[int]], request: _Request
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Each token-budget sub-batch of the encoded texts (by index) with its hypotheses."""
        with self._decoding() as logits_dtype:
            lengths = {i: len(seq) for i, seq in ids.items()}
            for chunk in _sub_batches(lengths, self.decode.batch_tokens):
                yield chunk, self._search([ids[i] for i in chunk], request, logits_dtype)

    @contextlib.contextmanager
    def _decoding(self) -> Iterator[torch.dtype | None]:
        """The logits dtype of one translate call, with a PyTorch model in eval mode under
        inference mode and the precision's autocast (its mode restored after). CTranslate2
        needs none of it."""
        if isinstance(self.model, CTranslate2Engine):
            yield None
            return
        was_training = self.model.training
        self.model.eval()
        autocast, logits_dtype = self._precision()
        try:
            with torch.inference_mode(), autocast:
                yield logits_dtype
        finally:
            self.model.train(was_training)

    def translate_with(self, texts: Sequence[str], options: TranslateOptions) -> list[Translation]:
        """`translate` with one call's settings as a TranslateOptions."""
        return self.translate(
            texts,
            beam_size=options.beam_size,
            max_len=options.max_len,
            n_best=options.n_best,
            with_alignment=options.with_alignment,
            truncate=options.truncate,
        )

    def align(self, sources: Sequence[str], targets: Sequence[str]) -> list[ForcedAlignment]:
        """Forced alignment: each source with its given target, no decoding (see
        nmt.forced_alignment). Empty texts and texts longer than the model accepts raise
        TranslationError naming the pair."""
        src_ids, tgt_ids, forced = self._teacher_forced(sources, targets, with_attention=True)
        return [self._forced(*pair) for pair in zip(sources, targets, src_ids, tgt_ids, forced)]

    def score(self, sources: Sequence[str], targets: Sequence[str]) -> list[float]:
        """log p(target | source) of each pair, EOS included: forced decoding as `align`
        does, without collecting attention (so models without it score too; nmt.rerank)."""
        return [f.log_prob for f in self._teacher_forced(sources, targets, False)[2]]

    def _teacher_forced(
        self, sources: Sequence[str], targets: Sequence[str], with_attention: bool
    ) -> tuple[list[list[int]], list[list[int]], list[Forced]]:
        """Each pair's source and target ids and its teacher-forced decoding, in token-budget
        sub-batches; TranslationError for a pair the model cannot take."""
        model = self.model
        if isinstance(model, CTranslate2Engine):
            raise TranslationError(
                "forced alignment needs the PyTorch engine: align with the checkpoint this "
                "model was exported from"
            )
        if len(sources) != len(targets):
            raise TranslationError(f"{len(sources)} sources but {len(targets)} targets")
        src_ids = [self._encode(text, i, truncate=False)[0] for i, text in enumerate(sources)]
        tgt_ids = self.tokenizer.encode_tgt(list(targets))
        limit = getattr(model, "max_target_len", None)
        for i, (source, target, ids) in enumerate(zip(sources, targets, tgt_ids)):
            if not source.strip() or not target.strip():
                side = "source" if not source.strip() else "target"
                raise TranslationError(f"pair {i + 1} has an empty {side}: nothing to align")
            if limit is not None and len(ids) + 1 > limit:
                raise TranslationError(
                    f"target {i + 1} has {len(ids) + 1} tokens (with EOS) but this model "
                    f"decodes at most {limit}"
                )
        results: list[Forced | None] = [None] * len(sources)
        lengths = {i: len(ids) + len(tgt_ids[i]) for i, ids in enumerate(src_ids)}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for chunk in _sub_batches(lengths, self.decode.batch_tokens):
                    forced = teacher_force(
                        model,
                        [src_ids[i] for i in chunk],
                        [tgt_ids[i] for i in chunk],
                        self.device,
                        self.decode.length_penalty,
                        with_attention,
                    )
                    for i, item in zip(chunk, forced):
                        results[i] = item
        except ValueError as e:  # a model without attention
            raise TranslationError(str(e)) from None
        finally:
            model.train(was_training)
        return src_ids, tgt_ids, [r for r in results if r is not None]

    def _forced(
        self, source: str, target: str, src_ids: list[int], tgt_ids: list[int], forced: Forced
    ) -> ForcedAlignment:
        assert forced.attention is not None  # forced with attention
        alignment = build_alignment(
            forced.attention,
            self.tokenizer.src_pieces(src_ids[:-1]),
            self.tokenizer.tgt_pieces(tgt_ids),
            self.tokenizer.src_spans(source),
            self.tokenizer.tgt_spans(target),
        )
        return ForcedAlignment(source, target, forced.score, forced.log_prob, alignment)

    def _precision(self) -> tuple[contextlib.AbstractContextManager, torch.dtype | None]:
        """(autocast context, logits dtype) of one translate call. bf16 decoding: autocast on
        accelerators; on CPU only the vocabulary projection, the one matmul of a decoding step
        large enough for bf16 to pay (see nmt/projection.py)."""
        if decoding_precision(self.decode.precision, device_caps(self.device)) != "bf16":
            return contextlib.nullcontext(), None
        if self.device.type != "cpu":
            return torch.autocast(self.device.type, dtype=torch.bfloat16), None
        return contextlib.nullcontext(), torch.bfloat16

    def _request(
        self,
        beam_size: int | None,
        max_len: int | None,
        n_best: int | None,
        with_alignment: bool,
    ) -> _Request:
        beam = self.decode.beam_size if beam_size is None else beam_size
        best = min(self.decode.n_best, beam) if n_best is None else n_best
        if beam < 1:
            raise TranslationError(f"beam size must be at least 1, got {beam}")
        if best < 1 or best > beam:
            raise TranslationError(f"n_best must be from 1 to the beam size ({beam}), got {best}")
        if max_len is not None and max_len < 1:
            raise TranslationError(f"max_len must be at least 1, got {max_len}")
        if max_len is not None:
            return _Request(beam, best, 0.0, max_len, with_alignment)
        return _Request(beam, best, self.decode.max_len_a, self.decode.max_len_b, with_alignment)

    def _encode(self, text: str, index: int, truncate: bool) -> tuple[list[int], bool]:
        ids = self.tokenizer.encode_src([text])[0]
        limit = _max_source_len(self.model)
        if limit is None or len(ids) <= limit:
            return ids, False
        if not truncate:
            raise TranslationError(
                f"input {index + 1} has {len(ids)} source tokens (with EOS) but this model accepts "
                f"at most {limit}; shorten it or allow truncation"
            )
        return ids[: limit - 1] + [EOS_ID], True

    def _search(
        self, batch_ids: list[list[int]], request: _Request, logits_dtype: torch.dtype | None
    ) -> list[list[Hypothesis]]:
        if isinstance(self.model, CTranslate2Engine):
            settings = SearchSettings(
                request.beam_size,
                request.n_best,
                request.max_len_a,
                request.max_len_b,
                self.decode.min_len,
                self.decode.length_penalty,
                request.with_alignment,
            )
            return self.model.search(batch_ids, settings)
        longest = max(len(ids) for ids in batch_ids)
        src = torch.full((len(batch_ids), longest), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            src[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        src = src.to(self.device)
        src_mask = src != PAD_ID
        if request.beam_size == 1:
            return greedy_search(
                self.model,
                src,
                src_mask,
                request.max_len_a,
                request.max_len_b,
                min_len=self.decode.min_len,
                with_attention=request.with_alignment,
                length_penalty=self.decode.length_penalty,
                logits_dtype=logits_dtype,
            )
        return beam_search(
            self.model,
            src,
            src_mask,
            request.beam_size,
            n_best=request.n_best,
            length_penalty=self.decode.length_penalty,
            max_len_a=request.max_len_a,
            max_len_b=request.max_len_b,
            min_len=self.decode.min_len,
            with_attention=request.with_alignment,
            logits_dtype=logits_dtype,
        )

    def _reranked(
        self, sources: list[str], hyps: list[list[Hypothesis]], n_best: int
    ) -> list[list[Hypothesis]]:
        assert self.reranker is not None
        texts = [self._texts(sentence) for sentence in hyps]
        ranked = self.reranker.rerank(sources, hyps, texts, self.decode.length_penalty)
        return [[hyp for hyp, _ in sentence[:n_best]] for sentence in ranked]

    def _texts(self, hyps: list[Hypothesis]) -> list[str]:
        # strip: consecutive word-start pieces can leave stray spaces at the ends
        return [text.strip() for text in self.tokenizer.decode_tgt([h.tokens for h in hyps])]

    def _translation(
        self,
        source: str,
        ids: list[int],
        truncated: bool,
        hyps: list[Hypothesis],
        request: _Request,
    ) -> Translation:
        if not hyps:  # only if the model gave every token -inf: nothing to return
            return self._empty(source, request)
        best = hyps[0]
        src_pieces = self.tokenizer.src_pieces(ids[:-1])
        tgt_pieces = self.tokenizer.tgt_pieces(best.tokens)
        texts = self._texts(hyps)
        alignment = None
        if request.with_alignment and best.attention is not None:
            alignment = build_alignment(
                best.attention,
                src_pieces,
                tgt_pieces,
                self.tokenizer.src_spans(source),
                self.tokenizer.output_spans(best.tokens, texts[0]),
            )
        return Translation(
            source=source,
            text=texts[0],
            score=best.score,
            tokens=tgt_pieces,
            src_tokens=src_pieces,
            alignment=alignment,
            n_best=[(t, h.score) for t, h in zip(texts, hyps)] if request.n_best > 1 else None,
            truncated=truncated,
        )

    def _empty(self, source: str, request: _Request) -> Translation:
        alignment = build_alignment(torch.zeros(0, 0), [], []) if request.with_alignment else None
        n_best = [("", 0.0)] if request.n_best > 1 else None
        return Translation(source, "", 0.0, [], [], alignment, n_best, False)


def describe_model(config: ModelConfig) -> str:
    """A one-line summary such as "transformer 3+3 layers, d=256, 4 heads" or
    "rnn lstm 2+2 layers, h=256, bidirectional, attention luong-general (local D=5)"."""
    layers = f"{config.encoder_layers}+{config.decoder_layers} layers"
    if config.arch == "transformer":
        parts = [f"transformer {layers}, d={config.embed_dim}, {config.heads} heads"]
        if config.self_attention_window:
            parts.append(f"self-attention window {config.self_attention_window}")
        if config.self_attention == "linear":
            parts.append("linear self-attention")
        if config.cross_attention == "linear":
            parts.append("linear cross-attention")
        return ", ".join(parts)
    parts = [f"rnn {config.cell} {layers}, h={config.hidden_size}"]
    if config.bidirectional:
        parts.append("bidirectional")
    if config.attention == "none":
        parts.append("no attention")
    elif config.attention == "bahdanau":
        parts.append("attention bahdanau")
    else:
        local = f" (local D={config.local_window})" if config.local_window else ""
        parts.append(f"attention luong-{config.luong_score}{local}")
    return ", ".join(parts)


def _max_source_len(model: object) -> int | None:
    limit = getattr(model, "max_source_len", None)
    return int(limit) if limit else None


def _sub_batches(lengths: dict[int, int], budget: int) -> list[list[int]]:
    """Indices grouped longest first so each group's padded size (rows x longest) fits `budget`.

    A single sentence longer than the budget forms its own group.
    """
    order = sorted(lengths, key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and longest * (len(current) + 1) > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def translate_chunks(
    translator: Translator,
    chunks: Iterable[Sequence[str]],
    options: TranslateOptions,
    total: int | None = None,
) -> Iterator[list[Translation]]:
    """The translations of each chunk of lines, as soon as it is done.

    With `total` (the number of lines to come) a progress bar on stderr follows the chunks.
    """
    from tqdm import tqdm

    with tqdm(total=total, unit="sent", desc="translating", disable=total is None) as bar:
        for chunk in chunks:
            yield translator.translate_with(chunk, options)
            bar.update(len(chunk))


def file_chunks(lines: Sequence[str], size: int = 1000) -> Iterator[list[str]]:
    """`lines` in chunks of `size`, so that a progress bar can follow a long file."""
    for start in range(0, len(lines), size):
        yield list(lines[start : start + size])


def read_chunks(stream: TextIO, max_lines: int = 32, wait: float = 0.02) -> Iterator[list[str]]:
    """Lines of `stream` (newline stripped) in chunks, without waiting for a full chunk.

    For pipes and terminals: a chunk is whatever arrived within `wait` seconds after its first
    line (at most `max_lines`), so a process that writes one line and waits for its
    translation gets it, while a fast producer still gets batched decoding. A reader thread
    does the blocking reads.
    """
    lines: queue.Queue[str | None] = queue.Queue(maxsize=4 * max_lines)

    def reader() -> None:
        try:
            for line in stream:
                lines.put(line.rstrip("\r\n"))
        finally:
            lines.put(None)

    threading.Thread(target=reader, name="nmt-stdin", daemon=True).start()
    ended = False
    while not ended:
        first = lines.get()
        if first is None:
            return
        chunk = [first]
        deadline = time.monotonic() + wait
        while len(chunk) < max_lines:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                ended = True
                break
            chunk.append(line)
        yield chunk

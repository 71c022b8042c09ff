"""The LitServe API: a thin layer that batches HTTP requests into Translator.translate calls.

Per worker process, `setup()` loads the Translator once. LitServe's dynamic batching hands
`predict()` every request that arrived within `batch_timeout` (at most `max_batch_size`;
under load the window grows to a fraction of the last batch's decoding time, `batch_wait`);
their sentences are decoded together with one `translate` call per group of identical
settings (beam, n-best, max length, alignment, truncation), and the Translator sub-batches
by token budget. Forced alignments (POST /align) travel the same queue and batches, grouped
apart, so they share the model's worker instead of loading it twice.

A request whose texts the Translator rejects gets its own 422 while its
neighbours still get their translations: the batch loop must never see an exception, so
every hook here returns a value (an error response for the failed request) instead of raising.

No `from __future__ import annotations` here: LitServe reads the annotations of
`decode_request` / `encode_response` at runtime to build the FastAPI route (request body
model, response model), so they must be real classes.
"""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import litserve as ls
from fastapi.responses import JSONResponse

from nmt.cpu import ThreadBudget
from serve.litserve_internals import report_worker_id, set_batch_timeout
from serve.metrics import ServerMetrics
from serve.schemas import (
    AlignmentOut,
    AlignResponse,
    AlignResult,
    BatchInfo,
    HypothesisOut,
    ModelRef,
    Timing,
    TranslateRequest,
    TranslateResponse,
    TranslationResult,
    WordAlignment,
)
from serve.shared import SharedJSON

if TYPE_CHECKING:  # torch stays out of the HTTP front end: workers import it in setup()
    from nmt.translator import TranslateOptions, Translator

log = logging.getLogger(__name__)

SOFT_DECIMALS = 4
WARM_UP_TEXT = "Hello."


@dataclass
class Job:
    """One request as a worker sees it."""

    texts: list[str]
    options: "TranslateOptions"  # requests with equal options decode together
    received_at: float
    targets: list[str] | None = None  # given translations: align them instead of translating
    taken_at: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """The result of one Job: translations, or an HTTP error for that request alone."""

    job: Job
    translations: list[Any] | None = None  # nmt.translator.Translation, or ForcedAlignment
    error: tuple[int, str] | None = None
    translate_ms: float = 0.0
    batch: tuple[int, int] = (1, 1)  # (requests, sentences) of the batch


def next_batch_timeout(base: float, wait: float, last_requests: int, last_seconds: float) -> float:
    """How long the worker collects the next batch: `base`, or under load `wait` x the last
    batch's decoding time if that is longer.

    Under load, the clients answered by the last batch send their next requests a round trip
    later, just after a short fixed timeout has closed the next batch: batches then fill to
    about half of max_batch_size. Waiting a small fraction of a batch's decoding time for them
    fills batches (and shortens queueing), while a lone request (last batch of one) only ever
    waits `base`, so latency at low load is unchanged.
    """
    if last_requests > 1 and wait > 0:
        return max(base, wait * last_seconds)
    return base


class TranslatorAPI(ls.LitAPI):
    """POST /translate on a checkpoint; see serve.schemas for the request and response."""

    def __init__(
        self,
        checkpoint: str,
        metrics: ServerMetrics,
        model_board: SharedJSON,
        max_batch_size: int = 32,
        batch_timeout: float = 0.01,
        batch_wait: float = 0.0,
        threads: int | None = None,
        precision: str | None = None,
        length_penalty: float | None = None,
        rerank_with: Sequence[str] = (),
        rerank_weight: float | None = None,
        api_path: str = "/translate",
        ensemble: Sequence[str] = (),
        alignment_from: int | None = None,
        model_id: str = "default",
        worker_offset: int = 0,
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path
        )
        self.base_batch_timeout = batch_timeout
        self.batch_wait = batch_wait  # fraction of the last batch's decoding time (see predict)
        self.checkpoint = checkpoint
        self.ensemble = tuple(ensemble)  # further members decoded with `checkpoint`
        self.alignment_from = alignment_from
        self.model_id = model_id
        self.worker_offset = worker_offset  # workers of the models before this one
        self.metrics = metrics
        self.model_board = model_board
        self.threads = threads
        self.adapt_threads = False  # follow the machine's load below `threads` (ThreadBudget)
        self.thread_budget: ThreadBudget | None = None
        self.precision = precision  # None = the checkpoint's decode.precision
        self.length_penalty = length_penalty  # None = the checkpoint's decode.length_penalty
        self.rerank_with = tuple(rerank_with)  # reverse models reranking the hypotheses
        self.rerank_weight = rerank_weight
        self.translator: Translator | None = None  # loaded by setup(), in the worker
        self.model_ref: ModelRef | None = None

    # ------------------------------------------------------------------ worker start

    def setup(self, device: str) -> None:
        import dataclasses

        import torch

        from nmt.allocator import keep_freed_memory
        from nmt.precision import decoding_precision, device_caps
        from nmt.translator import Translator

        report_worker_id(self.worker_offset)
        if not logging.getLogger().handlers:  # a spawned worker starts with no logging set up
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
        if self.threads:
            torch.set_num_threads(self.threads)
            if self.adapt_threads and torch.device(device).type == "cpu":
                self.thread_budget = ThreadBudget(self.threads)
        translator = Translator.load_ensemble(
            [self.checkpoint, *self.ensemble], device=device, alignment_member=self.alignment_from
        )
        keep_freed_memory(translator.device.type)
        if self.precision:
            precision = decoding_precision(self.precision, device_caps(translator.device))
            translator.decode = dataclasses.replace(translator.decode, precision=precision)
        if self.length_penalty is not None:
            translator.decode = dataclasses.replace(
                translator.decode, length_penalty=self.length_penalty
            )
        if self.rerank_with and self.rerank_weight is not None:
            from nmt.rerank import Reranker

            translator.rerank_with(
                Reranker.load(self.rerank_with, self.rerank_weight, device=translator.device)
            )
        # LitServe reports the worker ready when setup() returns: pay the one-time costs
        # (cuBLAS/cuDNN initialisation, first allocations) here, not in the first requests.
        translator.translate([WARM_UP_TEXT], max_len=4)
        self.translator = translator
        info = translator.info
        version = (info.sha256 or "")[:12]  # Translator.load always hashes the file
        self.model_ref = ModelRef(
            id=self.model_id,
            name=info.name,
            version=version,
            src_lang=info.src_lang,
            tgt_lang=info.tgt_lang,
        )
        self.model_board.publish(
            {
                "info": info.to_dict(translator.decode)
                | {"rerank": translator.reranker and translator.reranker.to_dict()},
                "version": version,
                "device": str(device),
                "worker_pid": os.getpid(),
            }
        )
        log.info("worker %d loaded %s on %s", os.getpid(), self.checkpoint, device)

    # ------------------------------------------------------------------ request path

    def decode_request(self, request: TranslateRequest) -> Job:
        from nmt.translator import TranslateOptions  # already imported by setup()

        options = TranslateOptions(
            beam_size=request.beam_size,
            n_best=request.n_best,
            max_len=request.max_len,
            with_alignment=request.alignment,
            truncate=request.truncate,
        )
        return Job(
            texts=request.all_texts,
            options=options,
            received_at=request.received_at,
            targets=request.forced_targets,
        )

    def batch(self, inputs: list[Job]) -> list[Job]:
        return inputs

    def predict(self, x: Job | list[Job]) -> Outcome | list[Outcome]:
        jobs = x if isinstance(x, list) else [x]  # max_batch_size=1 runs LitServe's unbatched loop
        if self.thread_budget is not None:
            self.thread_budget.apply()
        start = time.monotonic()
        groups: dict[tuple[TranslateOptions, bool], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.options, job.targets is not None), []).append(i)
        placed: dict[int, Outcome] = {}
        for indices in groups.values():
            for i, outcome in zip(indices, self._translate_group([jobs[i] for i in indices])):
                placed[i] = outcome
        outcomes = [placed[i] for i in range(len(jobs))]
        sentences = sum(len(job.texts) for job in jobs)
        seconds = time.monotonic() - start
        self.metrics.observe_batch(len(jobs), sentences, seconds)
        timeout = next_batch_timeout(self.base_batch_timeout, self.batch_wait, len(jobs), seconds)
        set_batch_timeout(self, timeout)  # adapted to the load, for the next batch
        for outcome in outcomes:
            outcome.batch = (len(jobs), sentences)
        return outcomes if isinstance(x, list) else outcomes[0]

    def _translate_group(self, jobs: list[Job]) -> list[Outcome]:
        """One translate call for jobs sharing options; on failure, retry each job alone.

        The retry isolates the request the Translator rejects, so only it gets the error.
        """
        options = jobs[0].options
        texts = [text for job in jobs for text in job.texts]
        start = time.monotonic()
        assert self.translator is not None, "setup() loads the translator"
        try:
            if jobs[0].targets is not None:
                targets = [target for job in jobs for target in job.targets or []]
                results: list[Any] = self.translator.align(texts, targets)
            else:
                results = self.translator.translate_with(texts, options)
        except Exception as e:  # noqa: BLE001 - every failure must become a response
            if len(jobs) > 1:
                return [outcome for job in jobs for outcome in self._translate_group([job])]
            return [self._failure(jobs[0], e)]
        elapsed_ms = 1000.0 * (time.monotonic() - start)
        outcomes, offset = [], 0
        for job in jobs:
            part = results[offset : offset + len(job.texts)]
            offset += len(job.texts)
            outcomes.append(Outcome(job=job, translations=part, translate_ms=elapsed_ms))
        return outcomes

    def _failure(self, job: Job, error: Exception) -> Outcome:
        if _is_input_error(error):
            self.metrics.observe_failure("invalid_input")
            return Outcome(job=job, error=(422, str(error)))
        log.exception("translation failed", exc_info=error)
        self.metrics.observe_failure("internal")
        return Outcome(
            job=job, error=(500, f"internal error while translating: {type(error).__name__}")
        )

    def unbatch(self, output: list[Outcome]) -> list[Outcome]:
        return output

    def encode_response(self, output: Outcome) -> TranslateResponse:
        # LitServe builds the OpenAPI response model from this annotation, so it names the
        # success type only; a failed request returns its own JSON error response.
        if output.error is not None:
            status, detail = output.error
            return JSONResponse({"detail": detail}, status_code=status)  # type: ignore[return-value]
        now = time.monotonic()
        job = output.job
        requests, sentences = output.batch
        assert output.translations is not None and self.model_ref is not None
        timing = Timing(
            queue_ms=round(1000.0 * (job.taken_at - job.received_at), 3),
            translate_ms=round(output.translate_ms, 3),
            total_ms=round(1000.0 * (now - job.received_at), 3),
        )
        batch = BatchInfo(requests=requests, sentences=sentences)
        if job.targets is not None:  # the response of POST /align (see serve.app)
            return AlignResponse(  # type: ignore[return-value]
                alignments=[to_align_result(a) for a in output.translations],
                model=self.model_ref,
                timing=timing,
                batch=batch,
            )
        return TranslateResponse(
            translations=[to_result(t) for t in output.translations],
            model=self.model_ref,
            timing=timing,
            batch=batch,
        )


def _is_input_error(error: Exception) -> bool:
    """Errors that describe the request (too long, bad settings), not the server."""
    from nmt.translator import TranslationError  # already imported by setup()

    return isinstance(error, TranslationError)


def to_result(translation: Any) -> TranslationResult:
    """nmt.translator.Translation -> the response's TranslationResult."""
    n_best = getattr(translation, "n_best", None)
    hypotheses = None
    if n_best is not None:
        hypotheses = [HypothesisOut(translation=text, score=float(score)) for text, score in n_best]
    return TranslationResult(
        source=translation.source,
        translation=translation.text,
        score=float(translation.score),
        truncated=bool(getattr(translation, "truncated", False)),
        n_best=hypotheses,
        alignment=to_alignment(translation.alignment)
        if translation.alignment is not None
        else None,
    )


def to_align_result(forced: Any) -> AlignResult:
    """nmt.forced_alignment.ForcedAlignment -> the /align response's AlignResult."""
    return AlignResult(
        source=forced.source,
        translation=forced.target,
        score=float(forced.score),
        log_prob=float(forced.log_prob),
        alignment=to_alignment(forced.alignment),
    )


def to_alignment(alignment: Any) -> AlignmentOut:
    """nmt.alignment.Alignment -> the response's AlignmentOut (soft matrix rounded)."""
    word_links = [tuple(link) for link in alignment.word_hard]
    return AlignmentOut(
        src_tokens=list(alignment.src_tokens),
        tgt_tokens=list(alignment.tgt_tokens),
        matrix=[[round(float(v), SOFT_DECIMALS) for v in row] for row in alignment.soft],
        hard=[tuple(link) for link in alignment.hard],
        pharaoh=alignment.pharaoh(words=False),
        src_offsets=[tuple(span) for span in alignment.src_offsets],
        tgt_offsets=[tuple(span) for span in alignment.tgt_offsets],
        words=WordAlignment(
            src_words=list(alignment.src_words),
            tgt_words=list(alignment.tgt_words),
            matrix=[[round(float(v), SOFT_DECIMALS) for v in row] for row in alignment.word_soft],
            links=word_links,
            pharaoh=alignment.pharaoh(words=True),
            src_offsets=[tuple(span) for span in alignment.src_word_offsets],
            tgt_offsets=[tuple(span) for span in alignment.tgt_word_offsets],
        ),
    )

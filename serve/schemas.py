"""The HTTP contract: request and response models (they make /docs and /openapi.json) and limits.

Validation is strict on purpose: unknown fields, wrong JSON types ("5" for an integer), empty
lists and unpaired surrogates are rejected with a message naming the field, before a request
can reach a worker's batch where it would share the fate of its neighbours. Empty strings are
valid texts (they translate to ""), as blank lines are in `nmt translate`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator


def _check_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text is not valid Unicode (unpaired surrogate at character {e.start})"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_check_text)]
MODEL_HELP = "Which model: its id (see /info, /languages); default: by source and target."
SOURCE_HELP = "Source language code; with `target`, picks the model (default: the first model)."
TARGET_HELP = "Target language code; with `source`, picks the model."
OFFSETS_HELP = (
    "[start, end) character offsets (Unicode code points) of the {} in the original source "
    "or target string (the translation, or the given target of /align)."
)


class TranslateRequest(BaseModel):
    """One text (`text`) or several (`texts`), plus optional decoding settings."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"text": "Ein Mann fährt Fahrrad."},
                {
                    "texts": ["Zwei Hunde spielen im Schnee.", "Ein Kind lacht."],
                    "beam_size": 5,
                    "alignment": True,
                },
            ]
        },
    )

    text: Text | None = Field(None, description="A single text to translate (or use `texts`).")
    texts: list[Text] | None = Field(
        None,
        min_length=1,
        description="Several texts, translated together (bounded by the server's max_texts).",
    )
    beam_size: int | None = Field(
        None,
        ge=1,
        description="Beam width (1 = greedy); default: the checkpoint's decode.beam_size.",
    )
    n_best: int | None = Field(
        None, ge=1, description="Hypotheses returned per text (at most beam_size)."
    )
    max_len: int | None = Field(
        None,
        ge=1,
        description="Maximum output length in subword tokens; default: a*source length+b.",
    )
    alignment: bool = Field(
        False, description="Return tokens, the soft attention matrix and hard/word links."
    )
    truncate: bool = Field(
        False, description="Cut sources longer than the model accepts instead of rejecting them."
    )
    model: str | None = Field(None, description=MODEL_HELP)
    source: str | None = Field(None, description=SOURCE_HELP)
    target: str | None = Field(None, description=TARGET_HELP)
    # Monotonic time at which the front end parsed the request; travels with it to the worker.
    _received_at: float = PrivateAttr(default_factory=time.monotonic)
    # Given translations: the worker aligns them (POST /align) instead of translating.
    _forced_targets: list[str] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_input(self) -> TranslateRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        if self.n_best is not None and self.beam_size is not None and self.n_best > self.beam_size:
            raise ValueError(f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})")
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    @property
    def received_at(self) -> float:
        return self._received_at

    @property
    def forced_targets(self) -> list[str] | None:
        return self._forced_targets

    @classmethod
    def forced(cls, request: AlignRequest) -> TranslateRequest:
        """The worker's form of an alignment request: its sources, carrying its targets."""
        worker_request = cls.model_validate({"texts": request.all_texts})
        worker_request._forced_targets = request.all_translations
        worker_request._received_at = request.received_at
        return worker_request


class AlignRequest(BaseModel):
    """Sources (`text` or `texts`) with their given translations (`translation` or
    `translations`, one per source) to align without decoding."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"text": "Ein Mann fährt Fahrrad.", "translation": "A man rides a bike."},
            ]
        },
    )

    text: Text | None = Field(None, description="A single source text (or use `texts`).")
    texts: list[Text] | None = Field(None, min_length=1, description="Several source texts.")
    translation: Text | None = Field(
        None, min_length=1, description="The translation of `text` to align."
    )
    translations: list[Annotated[Text, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="The translations of `texts`, in order."
    )
    model: str | None = Field(None, description=MODEL_HELP)
    source: str | None = Field(None, description=SOURCE_HELP)
    target: str | None = Field(None, description=TARGET_HELP)
    _received_at: float = PrivateAttr(default_factory=time.monotonic)

    @model_validator(mode="after")
    def _paired(self) -> AlignRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        if (self.text is None) != (self.translation is None) or (self.texts is None) != (
            self.translations is None
        ):
            raise ValueError("pair 'text' with 'translation', or 'texts' with 'translations'")
        if len(self.all_texts) != len(self.all_translations):
            raise ValueError(
                f"{len(self.all_texts)} texts but {len(self.all_translations)} translations"
            )
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    @property
    def all_translations(self) -> list[str]:
        if self.translation is not None:
            return [self.translation]
        return list(self.translations or [])

    @property
    def received_at(self) -> float:
        return self._received_at


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; enforced by the front end before queueing."""

    max_chars: int = 2000  # characters per text
    max_texts: int = 64  # texts per request
    max_beam: int = 10
    max_len: int = 512  # output tokens
    max_body_bytes: int = 0  # 0 = derived from the limits above

    @property
    def body_bytes(self) -> int:
        if self.max_body_bytes > 0:
            return self.max_body_bytes
        # Worst case: every character JSON-escaped as \uXXXX, plus room for the other fields.
        return self.max_texts * (6 * self.max_chars + 8) + 4096

    def to_dict(self) -> dict[str, int]:
        return dict(asdict(self), max_body_bytes=self.body_bytes)


def _text_violations(single: str | None, name: str, texts: list[str], limits: Limits) -> list[str]:
    """Texts over the limits; `single` is the text when the request gave one as `name`."""
    problems = []
    if len(texts) > limits.max_texts:
        problems.append(f"{name}s: {len(texts)} texts, at most {limits.max_texts} per request")
    for i, text in enumerate(texts):
        if len(text) > limits.max_chars:
            where = name if single is not None else f"{name}s.{i}"
            problems.append(f"{where}: {len(text)} characters, at most {limits.max_chars}")
    return problems


def align_limit_violations(request: AlignRequest, limits: Limits) -> list[str]:
    """As limit_violations, for both sides of an alignment request."""
    return _text_violations(request.text, "text", request.all_texts, limits) + _text_violations(
        request.translation, "translation", request.all_translations, limits
    )


def limit_violations(request: TranslateRequest, limits: Limits) -> list[str]:
    """Messages naming each field over the server's limits (empty when the request fits)."""
    problems = _text_violations(request.text, "text", request.all_texts, limits)
    if request.beam_size is not None and request.beam_size > limits.max_beam:
        problems.append(
            f"beam_size: {request.beam_size} exceeds the server's maximum {limits.max_beam}"
        )
    if request.n_best is not None and request.n_best > limits.max_beam:
        problems.append(
            f"n_best: {request.n_best} exceeds the server's maximum beam {limits.max_beam}"
        )
    if request.max_len is not None and request.max_len > limits.max_len:
        problems.append(f"max_len: {request.max_len} exceeds the server's maximum {limits.max_len}")
    return problems


# --------------------------------------------------------------------------- responses


class WordAlignment(BaseModel):
    src_words: list[str] = Field(
        description="Source words (subword pieces joined at ▁ boundaries)."
    )
    tgt_words: list[str] = Field(description="Target words.")
    matrix: list[list[float]] = Field(
        description="Word-level soft alignment [target words][source words]; rows sum to 1; "
        "4 decimals."
    )
    links: list[tuple[int, int]] = Field(description="(source word, target word) index pairs.")
    pharaoh: str = Field(
        description="The word links as 'i-j' pairs (source-target), space separated."
    )
    src_offsets: list[tuple[int, int]] = Field(description=OFFSETS_HELP.format("source words"))
    tgt_offsets: list[tuple[int, int]] = Field(description=OFFSETS_HELP.format("target words"))


# AlignmentOut and HypothesisOut: the response forms of nmt.alignment.Alignment and of the
# n-best entries (nmt.search.Hypothesis, decoded). No docstrings: they would show in /docs.
class AlignmentOut(BaseModel):
    src_tokens: list[str] = Field(description="Source subword pieces (▁ starts a word; no </s>).")
    tgt_tokens: list[str] = Field(description="Target subword pieces (no </s>).")
    matrix: list[list[float]] = Field(
        description="Soft alignment [target tokens][source tokens] from the decoder's attention, "
        "end-of-sentence row and column dropped, rows renormalised to sum to 1; 4 decimals."
    )
    hard: list[tuple[int, int]] = Field(description="(source token, target token) index pairs.")
    pharaoh: str = Field(
        description="The hard links (argmax per target token) as 'i-j' pairs (source-target), "
        "space separated."
    )
    words: WordAlignment | None = Field(None, description="Links between whole words.")
    src_offsets: list[tuple[int, int]] = Field(description=OFFSETS_HELP.format("source pieces"))
    tgt_offsets: list[tuple[int, int]] = Field(description=OFFSETS_HELP.format("target pieces"))


class HypothesisOut(BaseModel):
    translation: str
    score: float = Field(description="Length-normalised log-probability.")


class TranslationResult(BaseModel):
    source: str
    translation: str
    score: float = Field(description="Length-normalised log-probability of the best hypothesis.")
    truncated: bool = Field(False, description="The source was cut to the model's maximum length.")
    n_best: list[HypothesisOut] | None = Field(
        None, description="All hypotheses, best first (when n_best > 1 was asked for)."
    )
    alignment: AlignmentOut | None = None


class ModelRef(BaseModel):
    id: str = Field(description="The model's id on this server (the request's `model`).")
    name: str
    version: str = Field(
        description="Identifies the weights served: the first 12 hex digits of the "
        "checkpoint's SHA-256."
    )
    src_lang: str
    tgt_lang: str


class Timing(BaseModel):
    queue_ms: float = Field(
        description="From parsing the request to a worker taking it into a batch."
    )
    translate_ms: float = Field(
        description="Decoding time of the group of the batch this request was in."
    )
    total_ms: float = Field(description="From parsing the request to its response being encoded.")


class BatchInfo(BaseModel):
    requests: int = Field(description="Requests in the batch this request was decoded with.")
    sentences: int = Field(description="Texts in that batch.")


class TranslateResponse(BaseModel):
    translations: list[TranslationResult] = Field(
        description="One result per input text, in order."
    )
    model: ModelRef
    timing: Timing
    batch: BatchInfo


class AlignResult(BaseModel):
    source: str
    translation: str
    score: float = Field(description="Length-normalised log-probability of the translation.")
    log_prob: float = Field(description="Log-probability of the translation, EOS included.")
    alignment: AlignmentOut


class AlignResponse(BaseModel):
    alignments: list[AlignResult] = Field(description="One result per pair, in order.")
    model: ModelRef
    timing: Timing
    batch: BatchInfo


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong, naming the field.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Each validation problem, when several."
    )


class InfoResponse(BaseModel):
    model: dict[str, Any] | None = Field(
        description="The first model (the default): what the checkpoint says: name, "
        "architecture, languages, parameters, validation BLEU, decoding defaults."
    )
    models: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Every model served (as `model`, each with its `id` and the `worker_pid` "
        "of the worker that loaded it last), in the order given.",
    )
    serving: dict[str, Any] = Field(
        description="Batching, workers, devices, timeouts and request limits."
    )
    worker_pid: int | None = Field(
        None,
        description="Process id of the inference worker that loaded the model last (a new one "
        "when a dead worker has been replaced).",
    )

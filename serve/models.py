"""The models one server hosts, and which of them answers a request.

`nmt serve --checkpoint A.pt --checkpoint B1.pt B2.pt` hosts two models: A, and the
ensemble of B1 and B2. Each model is one LitAPI with its own queue, workers and dynamic
batching. A model's id is its language pair ("de-en"; "de-en-2" for a second de-en model).
Requests name a model by `model` (its id) or by `source` and `target` languages; a request
naming neither goes to the first model, so clients of a one-model server need not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.config import ConfigError


class RoutingError(ValueError):
    """A request for a model or language pair the server does not host; names those it does."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    checkpoints: tuple[str, ...]  # one checkpoint, or the members of an ensemble
    src_lang: str
    tgt_lang: str

    def describe(self) -> str:
        return f"{self.src_lang}->{self.tgt_lang} (model {self.id!r})"


def model_specs(groups: Sequence[Sequence[str]]) -> list[ModelSpec]:
    """Each group of checkpoints as a model, with the language pair its first checkpoint's
    tokenizer was trained for (read here, so routing needs no loaded worker)."""
    specs: list[ModelSpec] = []
    for group in groups:
        src_lang, tgt_lang = language_pair(group[0])
        pair = f"{src_lang}-{tgt_lang}"
        taken = sum(1 for spec in specs if f"{spec.src_lang}-{spec.tgt_lang}" == pair)
        specs.append(
            ModelSpec(
                id=pair if not taken else f"{pair}-{taken + 1}",
                checkpoints=tuple(str(path) for path in group),
                src_lang=src_lang,
                tgt_lang=tgt_lang,
            )
        )
    return specs


def reranked_models(reverse: Sequence[str], specs: Sequence[ModelSpec]) -> set[str]:
    """Ids of the served models that reverse (target->source) checkpoints rerank: every model
    translating the other way. ConfigError when the reverse models translate different ways
    or no served model translates the other way."""
    if not reverse:
        return set()
    pairs = {language_pair(path) for path in reverse}
    if len(pairs) > 1:
        found = ", ".join(sorted(f"{src}->{tgt}" for src, tgt in pairs))
        raise ConfigError(f"the --rerank-with models must all translate one way, got {found}")
    [(src, tgt)] = pairs
    ids = {spec.id for spec in specs if (spec.src_lang, spec.tgt_lang) == (tgt, src)}
    if not ids:
        raise ConfigError(
            f"the --rerank-with models translate {src}->{tgt}, so they rerank {tgt}->{src} "
            f"models, but no --checkpoint translates {tgt}->{src}"
        )
    return ids


def language_pair(path: str) -> tuple[str, str]:
    """(source, target) language of a checkpoint file or an exported model directory."""
    from nmt.checkpoint import load_checkpoint
    from nmt.ct2_export import read_metadata

    if Path(path).is_dir():
        data = read_metadata(Path(path))["config"]["data"]
        return data["src_lang"], data["tgt_lang"]
    tokenizer = load_checkpoint(path, mmap=True).tokenizer
    return tokenizer["src_lang"], tokenizer["tgt_lang"]


@dataclass(frozen=True)
class ModelCatalog:
    specs: tuple[ModelSpec, ...]

    def pick(self, model: str | None, source: str | None, target: str | None) -> ModelSpec:
        """The model with id `model`, else the first translating `source` into `target`
        (either may be None: any), else the first model. RoutingError when none fits."""
        if model is not None:
            spec = next((s for s in self.specs if s.id == model), None)
            if spec is None:
                ids = ", ".join(repr(s.id) for s in self.specs)
                raise RoutingError(f"model {model!r} is not served here; models: {ids}")
            if source not in (None, spec.src_lang) or target not in (None, spec.tgt_lang):
                raise RoutingError(
                    f"model {model!r} translates {spec.src_lang}->{spec.tgt_lang}, not "
                    f"{source or spec.src_lang}->{target or spec.tgt_lang}"
                )
            return spec
        for spec in self.specs:
            if source in (None, spec.src_lang) and target in (None, spec.tgt_lang):
                return spec
        raise RoutingError(
            f"no model translates {source or 'any language'} into {target or 'any language'}; "
            f"this server translates {self.available()}"
        )

    def available(self) -> str:
        return ", ".join(spec.describe() for spec in self.specs)

    def languages(self) -> list[tuple[str, list[str]]]:
        """Each source language with its target languages, in the order models were given."""
        targets: dict[str, list[str]] = {}
        for spec in self.specs:
            listed = targets.setdefault(spec.src_lang, [])
            if spec.tgt_lang not in listed:
                listed.append(spec.tgt_lang)
        return list(targets.items())

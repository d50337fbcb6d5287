"""A chat stage is data — template, parser, decoding, score reader — run by one function.

Difference captions, execution and consistency scores, checklists and instruction-following scores
are all the same shape: render a versioned template per sample, ask a model (cache misses only),
parse strictly then tolerantly, retry a bounded number of times with sampling, record failures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from firm_assets.curation.cache import (
    CachedResult,
    CacheItem,
    CallSpec,
    Outcome,
    StageStats,
    failed_outcome,
    run_cached,
)
from firm_assets.curation.expectation import SCORE_TOKENS, digit_mass, expected_digit
from firm_assets.curation.parsers import ParseError, Parser, prompt_text
from firm_assets.curation.prompts import PromptTemplate
from resources.chat import CallFailure, ChatBackend, ChatRequest, Decoding, ImagePart

RETRY_TEMPERATURE = 0.7


@dataclass(frozen=True)
class ChatStage:
    """What a stage is. `score_reader` is "text" (parsed answer) or "expectation" (the score as the
    expectation of the score digit under the model's next-token probabilities, after its reasoning)."""

    name: str
    template: PromptTemplate
    parser: Parser
    decoding: Decoding
    max_attempts: int = 3
    score_reader: str | None = None

    @property
    def code_version(self) -> str:
        """The stage's code version: template, parser and score reader refs together."""
        reader = f"+{self.score_reader}" if self.score_reader else ""
        return f"{self.template.ref}+{self.parser.ref}{reader}"


@dataclass(frozen=True)
class StageInput:
    """One sample for a chat stage: its id, the template's text variables and its named images."""

    sample_id: str
    variables: dict[str, str]
    images: dict[str, ImagePart]


def _call_inputs(request: ChatRequest) -> dict[str, Any]:
    """The content that identifies a call: rendered text and image content hashes, not paths."""
    return {
        "system": request.system,
        "user": [part.sha256 if isinstance(part, ImagePart) else part for part in request.user],
    }


def _answer(stage: ChatStage, backend: ChatBackend, requests: list[ChatRequest]) -> list[Outcome]:
    """Generate, parse, and re-ask only the answers that did not parse (sampling, new seed) up to
    max_attempts. A request the backend failed on its own (`generate_each`: a server's refusal or a
    timeout after its retries) is that item's recorded failure, never re-asked here."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    todo = list(range(len(requests)))
    for attempt in range(1, stage.max_attempts + 1):
        decoding = stage.decoding
        if attempt > 1:
            decoding = replace(decoding, temperature=RETRY_TEMPERATURE, seed=decoding.seed + attempt)
        started = time.perf_counter()
        answers = backend.generate_each([requests[i] for i in todo], decoding)
        share = (time.perf_counter() - started) / max(len(todo), 1)
        failed = []
        for index, text in zip(todo, answers, strict=True):
            seconds = share + (outcomes[index].model_seconds if outcomes[index] else 0.0)
            if isinstance(text, CallFailure):
                outcomes[index] = replace(failed_outcome(text), attempts=attempt, model_seconds=seconds)
                continue
            try:
                parsed = stage.parser.parse(text, prompt_text(requests[index]))
                outcomes[index] = Outcome(text, parsed, None, attempt, seconds)
            except ParseError as error:
                outcomes[index] = Outcome(text, None, f"parse: {error}", attempt, seconds)
                failed.append(index)
        todo = failed
        if not todo:
            break
    return [outcome for outcome in outcomes if outcome is not None]


def _expectation(
    parser: Parser, backend: ChatBackend, requests: list[ChatRequest], outcomes: list[Outcome]
) -> None:
    """Read the score as E[digit] after the model's own reasoning, in the parser's answer format;
    replaces text-parse failures (the text score is kept beside it)."""
    if parser.score_prefix is None:
        raise ValueError(f"parser {parser.ref} has no score prefix for expectation scoring")
    prefixes = []
    for outcome in outcomes:
        reasoning = (outcome.parsed or {}).get("reasoning", outcome.output_text or "")
        prefixes.append(parser.score_prefix(reasoning))
    started = time.perf_counter()
    probs = backend.next_token_probs(requests, prefixes, SCORE_TOKENS)
    share = (time.perf_counter() - started) / max(len(requests), 1)
    for outcome, prob in zip(outcomes, probs, strict=True):
        expected, mass = expected_digit(prob), digit_mass(prob)
        outcome.model_seconds += share
        if expected is None:
            outcome.failure = "expectation: no probability on score tokens"
            continue
        text_score = (outcome.parsed or {}).get("score")
        outcome.parsed = {
            **(outcome.parsed or {}),
            "reasoning": (outcome.parsed or {}).get("reasoning", outcome.output_text or ""),
            "score": round(expected, 4),
            "text_score": text_score,
            "digit_mass": round(mass, 6),
        }
        outcome.failure = None


def _text_failed(outcome: Outcome) -> bool:
    """Whether the answer text itself failed to parse (even if an expectation score was read)."""
    return outcome.parsed is None or outcome.parsed.get("text_score", 0) is None


def run_chat_stage(
    stage: ChatStage,
    backend: ChatBackend,
    inputs: Sequence[StageInput],
    warehouse,
    batch_size: int,
    run_id: str | None = None,
    identity: dict[str, str] | None = None,
) -> tuple[dict[str, CachedResult], StageStats]:
    """Render every sample, then answer the cache misses through `run_cached`, which narrows a batch
    that raises (a model error, an undecodable image) down to the items that failed. `identity` adds
    to what every key holds (stored with the decoding): the canary keys its answers by backend too."""
    started = time.perf_counter()
    items = []
    for sample in inputs:
        request = stage.template.render(sample.variables, sample.images)
        items.append(CacheItem(sample.sample_id, _call_inputs(request), request))

    def compute(requests: list[ChatRequest]) -> list[Outcome]:
        outcomes = _answer(stage, backend, requests)
        answered = [i for i, outcome in enumerate(outcomes) if outcome.output_text is not None]
        if stage.score_reader == "expectation" and answered:  # a failed request has no answer to read
            _expectation(
                stage.parser, backend, [requests[i] for i in answered], [outcomes[i] for i in answered]
            )
        return outcomes

    decoding = {**stage.decoding.as_dict(), "max_attempts": stage.max_attempts, "reader": stage.score_reader}
    if backend.chat_template_kwargs:  # they change the prompt; absent when unset, so old keys hold
        decoding["chat_template_kwargs"] = backend.chat_template_kwargs
    decoding.update(identity or {})
    spec = CallSpec(stage.name, backend.model, stage.template.ref, stage.parser.ref, decoding)
    # a backend whose calls may overlap gets the next batch while a batch's slowest request finishes
    lookahead = 2 if backend.concurrent_calls else 1
    in_before, out_before = backend.usage.snapshot()
    results, stats = run_cached(warehouse, spec, items, compute, batch_size, run_id, lookahead=lookahead)
    in_after, out_after = backend.usage.snapshot()
    stats.tokens_in, stats.tokens_out = in_after - in_before, out_after - out_before
    stats.on_gpu = backend.on_gpu
    stats.wall_seconds = time.perf_counter() - started  # rendering the templates included
    if stage.score_reader:
        stats.extra["text_parse_failures"] = sum(1 for r in results.values() if _text_failed(r.outcome))
    return results, stats

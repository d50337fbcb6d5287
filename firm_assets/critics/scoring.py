"""Critic inference fit for serving: in-memory images in, one score per dimension out.

Unlike bench inference (`critics/inference.py`), nothing here touches the DuckDB cache (rollout images
never repeat), the edit requirement is passed through, generation quality is scored (so QMA can be
computed), and the expectation score is read in the same generate call as the answer: the backend
records the probabilities of the digits "1".."5" wherever the answer writes one, and the score is the
expectation sum(d * p_d) / sum(p_d) at the position where the parsed score digit sits, clamped to 1..5
(`curation.expectation.expected_digit`: float rounding would otherwise give 5.000000000000001). Where those
probabilities cannot be read the parsed digit is used and the result says so (`fallback`).

Failures are per item: an image that cannot be decoded, a request the backend refuses, an answer
that does not parse each give that item DimensionScore(None, reason); the other items are scored.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from PIL import Image

from firm_assets.critics.inference import CRITIC_TASKS, NO_REQUIREMENT, CriticTask
from firm_assets.curation.expectation import SCORE_TOKENS, expected_digit
from firm_assets.curation.parsers import QUALITY_JSON, ParseError, prompt_text
from firm_assets.curation.prompts import load_template
from resources.chat import (
    ChatBackend,
    ChatRequest,
    Decoding,
    ImagePart,
    InputImageError,
    ProbedAnswer,
    classify_failure,
    load_rgb,
)
from resources.weights import weights_identity

ScoreMode = Literal["parsed", "expectation"]
SCORE_MODES = ("parsed", "expectation")
DEFAULT_MAX_NEW_TOKENS = 256
MODELS_URI = "models:/"

_DIGIT = r'"?([1-5])"?'
_JSON_SCORE = re.compile(r"""["']?score["']?\s*:\s*\[?\s*["']?([1-5])""", re.IGNORECASE)
_BOXED_SCORE = re.compile(r"\\boxed\{\s*([1-5])\s*\}")
_FRACTION_SCORE = re.compile(r"(?<![\w./])([1-5])\s*/\s*5")
_QUALITY_SCORES = re.compile(r'"score"\s*:\s*\[\s*' + r"\s*,\s*".join([_DIGIT] * 3) + r"\s*\]")


@dataclass(frozen=True)
class EditQuery:
    """One edit to score: the source, the edited result, the instruction and an optional requirement."""

    source: Image.Image
    edited: Image.Image
    instruction: str
    requirement: str | None = None


@dataclass(frozen=True)
class GenQuery:
    """One generated image to score against its prompt."""

    image: Image.Image
    prompt: str


@dataclass(frozen=True)
class DimensionScore:
    """One dimension's score on the critic's 1-5 scale, or None with the failure's reason. `fallback`
    says why an expectation score could not be read and the parsed digit stands in its place."""

    score: float | None
    failure: str | None
    fallback: str | None = None


@dataclass(frozen=True)
class EditScores:
    """A critic's two editing scores for one item."""

    execution: DimensionScore
    consistency: DimensionScore


@dataclass(frozen=True)
class GenScores:
    """A critic's two generation scores for one item."""

    instruction: DimensionScore
    quality: DimensionScore  # the minimum of the three quality sub-scores


@dataclass(frozen=True)
class Dimension:
    """A scored dimension: the critic task (prompt and answer format) and where its score digits sit
    in an answer (patterns whose groups are the digits, in the order the parser returns them)."""

    task: CriticTask
    digit_patterns: tuple[re.Pattern[str], ...]


def _task(side: str, dimension: str) -> CriticTask:
    return next(task for task in CRITIC_TASKS if (task.side, task.dimension) == (side, dimension))


_SCORE_JSON_DIGITS = (_JSON_SCORE, _BOXED_SCORE, _FRACTION_SCORE)  # the parser's strict and tolerant forms
EXECUTION = Dimension(_task("edit", "execution"), _SCORE_JSON_DIGITS)
CONSISTENCY = Dimension(_task("edit", "consistency"), _SCORE_JSON_DIGITS)
INSTRUCTION = Dimension(_task("gen", "instruction"), (_BOXED_SCORE,))
QUALITY = Dimension(CriticTask("gen", "quality", "critic_gen_quality", QUALITY_JSON), (_QUALITY_SCORES,))


def score_offsets(text: str, patterns: Sequence[re.Pattern[str]], scores: Sequence[int]) -> list[int] | None:
    """Where the parsed score digits are written in the answer: the last match of any pattern whose
    digits are exactly `scores`, as one character offset per digit; None when there is no such match."""
    best: re.Match[str] | None = None
    for pattern in patterns:
        for match in pattern.finditer(text):
            if [int(digit) for digit in match.groups()] == list(scores) and (
                best is None or match.end() > best.end()
            ):
                best = match
    return [best.start(group) for group in range(1, len(scores) + 1)] if best else None


def read_score(dimension: Dimension, answer: ProbedAnswer, prompt: str, mode: ScoreMode) -> DimensionScore:
    """One answer's score: the parsed digit (the minimum of the three for quality), or the expectation
    of each score digit at the position the answer wrote it (then the minimum). An answer that does not
    parse fails; missing digit probabilities fall back to the parsed score, saying so."""
    try:
        parsed = dimension.task.parser.parse(answer.text, prompt)
    except ParseError as error:
        return DimensionScore(None, f"parse: {error}")
    digits = [int(value) for value in parsed.get("scores", [parsed["score"]])]
    parsed_score = float(min(digits))
    if mode == "parsed":
        return DimensionScore(parsed_score, None)
    offsets = score_offsets(answer.text, dimension.digit_patterns, digits)
    if offsets is None:
        return DimensionScore(
            parsed_score, None, "expectation unavailable: score digit not located in the answer"
        )
    at_offset = {position.offset: position.probs for position in answer.positions}
    expectations = []
    for offset in offsets:
        probs = at_offset.get(offset)
        expected = expected_digit(probs) if probs else None
        if expected is None:
            reason = "expectation unavailable: no digit probabilities at the score position"
            return DimensionScore(parsed_score, None, reason)
        expectations.append(expected)
    return DimensionScore(min(expectations), None)


@dataclass(frozen=True)
class _Job:
    """One critic question: a dimension and its prompt, or the reason it could not be asked."""

    dimension: Dimension
    request: ChatRequest | None
    failure: str | None


def _job(dimension: Dimension, variables: dict[str, str], images: dict[str, Image.Image]) -> _Job:
    """The rendered prompt with in-memory images, or a failure for an image that cannot be decoded."""
    try:
        parts = {name: ImagePart.from_image(image) for name, image in images.items()}
        for part in parts.values():
            load_rgb(part)
    except InputImageError as error:
        return _Job(dimension, None, str(error))
    return _Job(dimension, load_template(dimension.task.template_id).render(variables, parts), None)


class Scorer(Protocol):
    """What a reward function needs from a critic: this module's `CriticScorer` in-process, or
    `firm_assets.serving.remote.RemoteScorer` in front of a `firm serve` endpoint."""

    critic_version: str

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = ...) -> list[EditScores]:
        """Execution and consistency scores, one per edit, in order."""

    def score_gen(self, queries: Sequence[GenQuery], mode: ScoreMode = ...) -> list[GenScores]:
        """Instruction-following and quality scores, one per generated image, in order."""


class CriticScorer:
    """A loaded critic that scores batches of edits or generations. Not thread-safe: call it from one
    thread (the reward server's single worker)."""

    def __init__(
        self,
        backend: ChatBackend,
        critic_version: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        guided: bool = True,
    ) -> None:
        """`guided` holds answers to the parsers' formats (as the tiny profile does for curation): a
        trained critic writes them anyway, an untrained one could not be scored at all without it."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.backend = backend
        self.critic_version = critic_version
        self.max_new_tokens = max_new_tokens
        self.guided = guided

    @classmethod
    def load(
        cls,
        source: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        guided: bool = True,
        batch_size: int = 32,
        tracking_uri: str | None = None,
    ) -> CriticScorer:
        """source: a local critic folder, or an MLflow registry URI models:/<name>/<version> (resolved
        to local files through the registry at `tracking_uri`, by default MLFLOW_TRACKING_URI or the
        project's store under FIRM_HOME)."""
        from resources.transformers_backend import TransformersBackend

        folder, version = resolve_critic(source, tracking_uri)
        backend = TransformersBackend(str(folder), device=device, dtype=dtype, batch_size=batch_size)
        return cls(backend, version, max_new_tokens, guided)

    def score_edit(self, queries: Sequence[EditQuery], mode: ScoreMode = "expectation") -> list[EditScores]:
        """Execution and consistency for every query, all asked in one backend batch."""
        jobs = []
        for query in queries:
            variables = {"instruction": query.instruction, "requirement": query.requirement or NO_REQUIREMENT}
            images = {"source": query.source, "edited": query.edited}
            jobs += [_job(EXECUTION, variables, images), _job(CONSISTENCY, variables, images)]
        scores = self._score(jobs, mode)
        return [EditScores(*scores[index : index + 2]) for index in range(0, len(scores), 2)]

    def score_gen(self, queries: Sequence[GenQuery], mode: ScoreMode = "expectation") -> list[GenScores]:
        """Instruction following and quality for every query (one backend batch per answer format)."""
        jobs = []
        for query in queries:
            images = {"image": query.image}
            jobs += [_job(INSTRUCTION, {"prompt": query.prompt}, images), _job(QUALITY, {}, images)]
        scores = self._score(jobs, mode)
        return [GenScores(*scores[index : index + 2]) for index in range(0, len(scores), 2)]

    def decoding(self, dimension: Dimension) -> Decoding:
        """How a dimension is asked: greedy, and held to its answer format when `guided`."""
        guide = dimension.task.parser.guide
        regex = guide(self.max_new_tokens) if self.guided and guide else None
        return Decoding(max_new_tokens=self.max_new_tokens, regex=regex)

    def _score(self, jobs: list[_Job], mode: ScoreMode) -> list[DimensionScore]:
        """Every job's score in order; jobs sharing a decoding (an answer format) go in one batch."""
        if mode not in SCORE_MODES:
            raise ValueError(f"score mode must be one of {SCORE_MODES}, not {mode!r}")
        results: list[DimensionScore | None] = [
            DimensionScore(None, job.failure) if job.request is None else None for job in jobs
        ]
        batches: dict[Decoding, list[tuple[int, Dimension, ChatRequest]]] = {}
        for index, job in enumerate(jobs):
            if job.request is not None:
                batches.setdefault(self.decoding(job.dimension), []).append(
                    (index, job.dimension, job.request)
                )
        for decoding, batch in batches.items():
            answers = self._answers([request for _, _, request in batch], decoding, mode)
            for (index, dimension, request), answer in zip(batch, answers, strict=True):
                results[index] = (
                    DimensionScore(None, answer)
                    if isinstance(answer, str)
                    else read_score(dimension, answer, prompt_text(request), mode)
                )
        return [result for result in results if result is not None]

    def _answers(
        self, requests: list[ChatRequest], decoding: Decoding, mode: ScoreMode
    ) -> list[ProbedAnswer | str]:
        """The backend's answers, or per request the reason it failed: when the whole batch fails, each
        request is asked alone, so one bad request (an image the processor refuses) fails only itself."""
        try:
            return list(self._ask(requests, decoding, mode))
        except Exception as error:
            if len(requests) == 1:
                return [classify_failure(error).reason]
        answers: list[ProbedAnswer | str] = []
        for request in requests:
            answers += self._answers([request], decoding, mode)
        return answers

    def _ask(self, requests: list[ChatRequest], decoding: Decoding, mode: ScoreMode) -> list[ProbedAnswer]:
        if mode == "parsed":
            return [ProbedAnswer(text, ()) for text in self.backend.generate(requests, decoding)]
        return self.backend.generate_probed(requests, decoding, SCORE_TOKENS)


def resolve_critic(source: str, tracking_uri: str | None = None) -> tuple[Path, str]:
    """A critic source as (local folder, version string): a registry URI models:/<name>/<version> is
    downloaded once under FIRM_HOME and keeps the URI as its version; a local folder is versioned by
    its path and weights hash."""
    if source.startswith(MODELS_URI):
        return _registered_critic(source, tracking_uri), source
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"critic source {source!r} is neither a model folder (no config.json) "
            f"nor a registry URI {MODELS_URI}<name>/<version>"
        )
    return folder, f"{folder.resolve()}@{weights_identity(str(folder))}"


def _registered_critic(uri: str, tracking_uri: str | None) -> Path:
    """The files of a registered `mlflow.transformers` critic as one folder the backend can load: the
    version's artifacts downloaded from the registry, and its model and processor saved there with
    `save_pretrained` on first use (reused after)."""
    import mlflow.artifacts
    import mlflow.transformers
    from mlflow import MlflowClient

    from resources.home import home_path
    from resources.tracking import default_tracking_uri

    name_version = uri.removeprefix(MODELS_URI).strip("/")
    if name_version.count("/") != 1 or not all(name_version.split("/")):
        raise ValueError(f"registry URI {uri!r} is not of the form {MODELS_URI}<name>/<version>")
    folder = home_path("critics", *name_version.split("/"), "model")
    if (folder / "config.json").is_file():
        return folder
    staging = folder.with_name("staging")
    shutil.rmtree(staging, ignore_errors=True)
    store = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    # the registry and tracking clients named explicitly: `models:/` URIs would resolve through
    # MLflow's process-wide settings, not this store
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    name, version = name_version.split("/")
    logged = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(name, version),
        dst_path=str(staging / "logged"),
        tracking_uri=store,
    )
    components = mlflow.transformers.load_model(logged, return_type="components")
    components["model"].save_pretrained(staging / "model")
    (components.get("processor") or components["tokenizer"]).save_pretrained(staging / "model")
    (staging / "model").rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder

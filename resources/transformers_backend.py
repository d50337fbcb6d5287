"""ChatBackend on plain transformers: the CPU/test path and the reference the other backends match.
Loads once; batches with left padding so every row's next token sits at the last position."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BatchEncoding,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    ProcessorMixin,
)

from resources.chat import ChatRequest, Decoding, ImagePart, ProbedAnswer, TokenProbs, load_rgb
from resources.guided import RegexLogitsProcessor, TokenTable
from resources.local_backend import LocalChatBackend
from resources.messages import Message, chat_messages

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TransformersBackend(LocalChatBackend):
    """Batched chat generation and next-token probabilities with a transformers model."""

    def __init__(
        self,
        model_path: str,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {dtype!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        super().__init__(model_path, revision, "transformers", chat_template_kwargs)
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.batch_size = batch_size
        self.processor = self._load_processor(model_path, self.revision)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        auto_model = AutoModelForImageTextToText if self.is_vision else AutoModelForCausalLM
        self.net: PreTrainedModel = auto_model.from_pretrained(
            model_path, revision=self.revision, dtype=torch_dtype
        )
        self.net.to(self.device).eval()
        self.net.generation_config = self._stopping_only(self.net.generation_config)
        self._token_table: TokenTable | None = None

    def close(self) -> None:
        """Drop the model and processor, so their memory (CUDA included) can be freed."""
        del self.net, self.processor, self.tokenizer
        self._token_table = None

    def _stopping_only(self, checkpoint: GenerationConfig) -> GenerationConfig:
        """Keep the checkpoint's stop and pad tokens but drop its sampling defaults (Qwen ships
        top_k=20, temperature=0.7): generate() fills every unset field from them, and Decoding must be
        the whole story, as it is in the cache key and for the other backends."""
        return GenerationConfig(
            bos_token_id=checkpoint.bos_token_id,
            eos_token_id=checkpoint.eos_token_id or self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def _load_processor(self, model_path: str, revision: str | None) -> Any:
        """A multimodal processor for VL models (refusing the silent tokenizer-only fallback that
        AutoProcessor makes when torchvision is missing), else the tokenizer."""
        if not self.is_vision:
            return AutoTokenizer.from_pretrained(model_path, revision=revision)
        processor = AutoProcessor.from_pretrained(model_path, revision=revision)
        if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
            raise RuntimeError(
                f"{model_path}: AutoProcessor returned {type(processor).__name__} without an image processor "
                "(is torchvision installed?)"
            )
        return processor

    def _messages(self, request: ChatRequest, assistant_prefix: str | None) -> list[Message]:
        """The same messages the vLLM and OpenAI-compatible backends send, with bare image parts:
        the processor inserts the pixels, in prompt order."""
        if request.images and not self.is_vision:
            raise ValueError(f"{self.model.model_id} is a text-only model and cannot take image parts")
        return chat_messages(request, assistant_prefix, lambda _part: {"type": "image"})

    def _render(self, request: ChatRequest, assistant_prefix: str | None = None) -> str:
        """The prompt text, ending where the assistant's next token goes. An empty prefix is a plain
        generation prompt (continuing an empty message would keep its end-of-turn in some versions),
        and trailing spaces that templates strip are put back."""
        if not assistant_prefix:
            return self.processor.apply_chat_template(
                self._messages(request, None),
                tokenize=False,
                add_generation_prompt=True,
                **self.chat_template_kwargs,
            )
        text = self.processor.apply_chat_template(
            self._messages(request, assistant_prefix),
            tokenize=False,
            continue_final_message=True,
            **self.chat_template_kwargs,
        )
        stripped = assistant_prefix.rstrip()
        if not text.endswith(assistant_prefix) and text.endswith(stripped):
            text += assistant_prefix[len(stripped) :]
        return text

    def _encode(self, requests: Sequence[ChatRequest], texts: list[str]) -> BatchEncoding:
        """Tokenise a batch (left padded) with its images in prompt order, on the model's device."""
        if not self.is_vision:
            return self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(
                self.device
            )
        images = [_load_image(part) for request in requests for part in request.images]
        return self.processor(
            text=texts, images=images or None, padding=True, add_special_tokens=False, return_tensors="pt"
        ).to(self.device)

    @staticmethod
    def _generation_config(decoding: Decoding) -> GenerationConfig:
        """Exactly the given decoding; top_k=0 turns off generate()'s built-in top_k=50."""
        if decoding.temperature <= 0:
            return GenerationConfig(max_new_tokens=decoding.max_new_tokens, do_sample=False)
        return GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=True,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            top_k=0,
        )

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer for each request: new tokens only, special tokens dropped, stripped.
        Each chunk is seeded from decoding.seed, so sampling repeats for the same inputs. With
        decoding.regex the answer is constrained to match it in full and is not stripped (the match is
        the answer, whitespace included); it can fall short only if max_new_tokens runs out first."""
        answers: list[str] = []
        for chunk in _chunks(requests, self.batch_size):
            new_tokens = self._generate_chunk(chunk, decoding, None)
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            answers += texts if decoding.regex else [text.strip() for text in texts]
        return answers

    def generate_probed(
        self, requests: Sequence[ChatRequest], decoding: Decoding, tokens: Sequence[str]
    ) -> list[ProbedAnswer]:
        """`generate`'s answers, unstripped, with the probabilities of `tokens` recorded during the same
        generate() call (a logits processor placed before the regex constraint sees the raw logits and
        keeps only these few columns, instead of the whole vocabulary per step as `output_logits` would)
        at every position where one of them was generated."""
        token_ids = [self._single_token_id(token) for token in tokens]
        answers: list[ProbedAnswer] = []
        for chunk in _chunks(requests, self.batch_size):
            recorder = _ProbRecorder(token_ids)
            new_tokens = self._generate_chunk(chunk, decoding, recorder)
            for row, ids in enumerate(new_tokens.tolist()):
                positions = tuple(
                    TokenProbs(
                        offset=len(self.tokenizer.decode(ids[:step], skip_special_tokens=True)),
                        probs=dict(zip(tokens, recorder.steps[step][row].tolist(), strict=True)),
                    )
                    for step, token_id in enumerate(ids)
                    if token_id in token_ids
                )
                answers.append(ProbedAnswer(self.tokenizer.decode(ids, skip_special_tokens=True), positions))
        return answers

    def _generate_chunk(
        self, chunk: Sequence[ChatRequest], decoding: Decoding, recorder: LogitsProcessor | None
    ) -> torch.Tensor:
        """One seeded generate() call over a chunk: the new token ids, padded after each row's end."""
        config = self._generation_config(decoding)
        inputs = self._encode(chunk, [self._render(request) for request in chunk])
        prompt_length = inputs["input_ids"].shape[1]
        processors = LogitsProcessorList([recorder] if recorder is not None else [])
        processors += self._regex_processors(decoding, prompt_length) or []
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(decoding.seed)
            output = self.net.generate(
                **inputs, generation_config=config, logits_processor=processors or None
            )
        new_tokens = output[:, prompt_length:]
        self.usage.add(
            int(inputs["attention_mask"].sum()), sum(answer_lengths(new_tokens, self._eos_token_ids()))
        )
        return new_tokens

    def _regex_processors(self, decoding: Decoding, prompt_length: int) -> LogitsProcessorList | None:
        """The regex constraint for one generate() call, if asked for; the token table behind it is
        built on first use and kept, as it depends on the tokenizer only."""
        if decoding.regex is None:
            return None
        if self._token_table is None:
            self._token_table = TokenTable(self.tokenizer, self._eos_token_ids())
        processor = RegexLogitsProcessor(
            decoding.regex, self._token_table, prompt_length, sample=decoding.temperature > 0
        )
        return LogitsProcessorList([processor])

    def _eos_token_ids(self) -> list[int]:
        """The ids that end generation (generate() stops a row on any of them)."""
        eos = self.net.generation_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """Softmax over the whole vocabulary after each prefix, read at the given tokens (each must be a
        single token id); not renormalised over `tokens`."""
        if len(requests) != len(assistant_prefixes):
            raise ValueError("one assistant prefix is needed per request")
        token_ids = [self._single_token_id(token) for token in tokens]
        pairs = list(zip(requests, assistant_prefixes, strict=True))
        results: list[dict[str, float]] = []
        for chunk in _chunks(pairs, self.batch_size):
            texts = [self._render(request, prefix) for request, prefix in chunk]
            inputs = self._encode([request for request, _ in chunk], texts)
            with torch.inference_mode():
                logits = self.net(**inputs, logits_to_keep=1).logits[:, -1, :]
            self.usage.add(int(inputs["attention_mask"].sum()), 0)  # one forward pass, nothing generated
            probs = torch.softmax(logits.float(), dim=-1)[:, token_ids].cpu().tolist()
            results += [dict(zip(tokens, row, strict=True)) for row in probs]
        return results

    def _single_token_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{token!r} encodes to {len(ids)} tokens, not exactly one: {ids}")
        return ids[0]

    def _rng_devices(self) -> list[int]:
        """CUDA devices whose RNG state `fork_rng` must save and restore (none on the CPU)."""
        return [self.device.index or 0] if self.device.type == "cuda" else []


def answer_lengths(new_tokens: torch.Tensor, eos_ids: Sequence[int]) -> list[int]:
    """Tokens each row generated: up to and including its first end-of-sequence token (what follows is
    padding to the batch's longest answer), or the whole row when it ran to max_new_tokens."""
    lengths = []
    for row in new_tokens.tolist():
        ends = [step for step, token in enumerate(row) if token in eos_ids]
        lengths.append(ends[0] + 1 if ends else len(row))
    return lengths


def _load_image(part: ImagePart) -> Image.Image:
    return load_rgb(part)


class _ProbRecorder(LogitsProcessor):
    """Keeps, for each generation step, the softmax over the whole vocabulary read at a few token ids
    (rows = batch rows); changes nothing."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(torch.softmax(scores.float(), dim=-1)[:, self.token_ids].cpu())
        return scores

"""ChatBackend on vLLM's offline engine: the GPU path for large batches. vLLM is the optional `gpu`
extra, so it is imported only when a backend is built; importing this module never needs it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from resources.chat import ChatRequest, Decoding, ImagePart, ProbedAnswer, TokenProbs, load_rgb
from resources.local_backend import LocalChatBackend
from resources.messages import Message, chat_messages

MAX_IMAGES_PER_PROMPT = 4
TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def _pil_content(part: ImagePart) -> dict[str, Any]:
    """The image decoded here as RGB (like the transformers backend), so vLLM reads no files itself
    and needs no `allowed_local_media_path`."""
    return {"type": "image_pil", "image_pil": load_rgb(part)}


class VllmBackend(LocalChatBackend):
    """Batched chat generation and next-token probabilities with a vLLM `LLM` (the offline engine
    schedules a whole batch itself, one call at a time)."""

    def __init__(
        self,
        model_path: str,
        revision: str | None = None,
        dtype: str = "bfloat16",
        tensor_parallel_size: int = 1,
        max_model_len: int = 8192,
        gpu_memory_utilization: float = 0.85,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as error:
            raise ImportError(
                "VllmBackend needs vLLM, which is not installed: install the `gpu` extra "
                "(pip install 'firm[gpu]'), or use the transformers or openai backend"
            ) from error
        super().__init__(model_path, revision, "vllm", chat_template_kwargs)
        self._sampling_params = SamplingParams
        self._structured_outputs = StructuredOutputsParams
        # Text-only models reject a multimodal limit, so it is set for vision-language models only.
        multimodal = {"limit_mm_per_prompt": {"image": MAX_IMAGES_PER_PROMPT}} if self.is_vision else {}
        self.llm = LLM(
            model=model_path,
            revision=self.revision,
            tokenizer_revision=self.revision,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            max_logprobs=TOP_LOGPROBS,
            **multimodal,
        )

    on_gpu = True  # the offline engine runs on this machine's GPUs

    def _count(self, outputs: Sequence[Any]) -> None:
        """Add a chat call's prompt and answer token counts (vLLM's own token ids) to the usage."""
        self.usage.add(
            sum(len(output.prompt_token_ids or []) for output in outputs),
            sum(len(output.outputs[0].token_ids) for output in outputs),
        )

    def generate(self, requests: Sequence[ChatRequest], decoding: Decoding) -> list[str]:
        """The assistant's answer for each request, stripped; seeded per request so sampling repeats.
        With decoding.regex the engine's structured outputs constrain the answer
        (`SamplingParams(structured_outputs=StructuredOutputsParams(regex=...))`, current vLLM; the older
        `guided_decoding=GuidedDecodingParams(...)` was removed in v0.12), and it is returned unstripped."""
        conversations = [chat_messages(request, None, _pil_content) for request in requests]
        outputs = self.llm.chat(
            conversations,
            sampling_params=self._params(decoding),
            use_tqdm=False,
            chat_template_kwargs=self.chat_template_kwargs,
        )
        self._count(outputs)
        texts = [output.outputs[0].text for output in outputs]
        return texts if decoding.regex is not None else [text.strip() for text in texts]

    def generate_probed(
        self, requests: Sequence[ChatRequest], decoding: Decoding, tokens: Sequence[str]
    ) -> list[ProbedAnswer]:
        """`generate`'s answers, unstripped, with the probabilities of `tokens` from the same call:
        `SamplingParams(logprob_token_ids=[...])` makes the engine return the log-probabilities of
        exactly these ids (from the raw logits) at every generated position, so no digit is lost
        outside a top-k list."""
        token_ids = [self._single_token_id(token) for token in tokens]
        params = self._params(decoding, logprob_token_ids=token_ids)
        conversations = [chat_messages(request, None, _pil_content) for request in requests]
        outputs = self.llm.chat(
            conversations,
            sampling_params=params,
            use_tqdm=False,
            chat_template_kwargs=self.chat_template_kwargs,
        )
        self._count(outputs)
        tokenizer = self.llm.get_tokenizer()
        answers = []
        for output in outputs:
            completion = output.outputs[0]
            ids, steps = list(completion.token_ids), completion.logprobs or []
            positions = tuple(
                TokenProbs(
                    offset=len(tokenizer.decode(ids[:step], skip_special_tokens=True)),
                    probs={
                        token: math.exp(steps[step][wanted].logprob) if wanted in steps[step] else 0.0
                        for token, wanted in zip(tokens, token_ids, strict=True)
                    },
                )
                for step, token_id in enumerate(ids)
                if token_id in token_ids and step < len(steps)
            )
            answers.append(ProbedAnswer(completion.text, positions))
        return answers

    def _params(self, decoding: Decoding, **extra: Any) -> Any:
        """SamplingParams for a decoding, with its regex as structured outputs when set."""
        guided = (
            {"structured_outputs": self._structured_outputs(regex=decoding.regex)}
            if decoding.regex is not None
            else {}
        )
        return self._sampling_params(
            max_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            seed=decoding.seed,
            **guided,
            **extra,
        )

    def next_token_probs(
        self, requests: Sequence[ChatRequest], assistant_prefixes: Sequence[str], tokens: Sequence[str]
    ) -> list[dict[str, float]]:
        """exp(logprob) of each token (a single token id) if among the top 20 after the prefix, else 0.0.
        vLLM's logprobs are taken from the raw logits, i.e. a softmax over the whole vocabulary. Unlike
        the transformers backend, a prefix's trailing whitespace is lost if the chat template strips it."""
        if len(requests) != len(assistant_prefixes):
            raise ValueError("one assistant prefix is needed per request")
        token_ids = [self._single_token_id(token) for token in tokens]
        params = self._sampling_params(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
        conversations = [
            chat_messages(request, prefix, _pil_content)
            for request, prefix in zip(requests, assistant_prefixes, strict=True)
        ]
        # An empty prefix is a plain generation prompt (as in the transformers backend); the rest continue
        # their assistant message. `chat` takes these flags per call, so the two groups go separately.
        continued = [index for index, prefix in enumerate(assistant_prefixes) if prefix]
        fresh = [index for index, prefix in enumerate(assistant_prefixes) if not prefix]
        results: list[dict[str, float]] = [{} for _ in requests]
        for indices, continue_final in ((continued, True), (fresh, False)):
            if not indices:
                continue
            outputs = self._chat([conversations[index] for index in indices], params, continue_final)
            for index, output in zip(indices, outputs, strict=True):
                top = output.outputs[0].logprobs[0]
                results[index] = {
                    token: math.exp(top[token_id].logprob) if token_id in top else 0.0
                    for token, token_id in zip(tokens, token_ids, strict=True)
                }
        return results

    def _chat(self, conversations: list[list[Message]], params: Any, continue_final: bool) -> list[Any]:
        outputs = self.llm.chat(
            conversations,
            sampling_params=params,
            use_tqdm=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
            chat_template_kwargs=self.chat_template_kwargs,
        )
        self._count(outputs)
        return outputs

    def close(self) -> None:
        """Shut the engine down and drop it, so its weights and KV cache leave the GPU. vLLM 0.33's
        `LLM` has no shutdown of its own: its engine-core client's `shutdown()` stops the engine
        process (or the in-process core) now, instead of whenever the garbage collector gets to it."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm

    def _single_token_id(self, token: str) -> int:
        ids = self.llm.get_tokenizer().encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{token!r} encodes to {len(ids)} tokens, not exactly one: {ids}")
        return ids[0]

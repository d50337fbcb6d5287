"""P5: what the product's VllmBackend costs over calling vLLM directly, on one GPU.

The same image+text chat requests are answered twice, greedily and with the same engine settings:
once through `resources.vllm_backend.VllmBackend.generate` (message building, image decoding, the
sampling parameters the stages use) and once through a bare `vllm.LLM.chat` on hand-built
messages. Each side gets a warm-up call first; the engines run one after the other, the first shut
down before the second starts. Last line:

    P5 throughput_ratio=<product requests/s / standalone requests/s> product_rps=<> vllm_rps=<>

Without a CUDA GPU or without vLLM it says so and exits 2 at once.

    python bench/vllm_backend.py --model Qwen/Qwen3-VL-2B-Instruct --requests 256
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from PIL import Image, ImageDraw

DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
COLORS = ("red", "green", "blue", "orange", "purple", "yellow", "black", "white")
SHAPES = ("circle", "square")


def prerequisites() -> str | None:
    """Why this bench cannot run here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is false)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (pip install -e '.[gpu]')"
    return None


def picture(index: int) -> Image.Image:
    """A small drawn picture that differs per request, so no two prompts share an image."""
    image = Image.new("RGB", (256, 256), COLORS[index % len(COLORS)])
    draw = ImageDraw.Draw(image)
    box = (40 + index % 50, 40, 200, 200 - index % 40)
    shape = SHAPES[index % 2]
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[(index + 3) % len(COLORS)])
    else:
        draw.rectangle(box, fill=COLORS[(index + 3) % len(COLORS)])
    return image


def question(index: int) -> str:
    return f"Request {index}: describe the shape and both colours in this picture in one sentence."


def product_rps(model: str, count: int, max_new_tokens: int, memory: float) -> float:
    """Requests/s of the product's backend (engine start and warm-up not counted)."""
    from resources.chat import ChatRequest, Decoding, ImagePart
    from resources.vllm_backend import VllmBackend

    backend = VllmBackend(model, gpu_memory_utilization=memory)
    requests = [ChatRequest(user=(ImagePart.from_image(picture(i)), question(i))) for i in range(count)]
    decoding = Decoding(max_new_tokens=max_new_tokens)
    backend.generate(requests[:8], decoding)
    start = time.perf_counter()
    backend.generate(requests, decoding)
    elapsed = time.perf_counter() - start
    backend.close()
    return count / elapsed


def standalone_rps(model: str, count: int, max_new_tokens: int, memory: float) -> float:
    """Requests/s of a bare vLLM `LLM.chat` with the engine settings the backend uses."""
    from vllm import LLM, SamplingParams

    from resources.vllm_backend import MAX_IMAGES_PER_PROMPT, TOP_LOGPROBS

    llm = LLM(
        model=model,
        dtype="bfloat16",
        max_model_len=8192,
        gpu_memory_utilization=memory,
        max_logprobs=TOP_LOGPROBS,
        limit_mm_per_prompt={"image": MAX_IMAGES_PER_PROMPT},
    )
    conversations = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_pil", "image_pil": picture(i)},
                    {"type": "text", "text": question(i)},
                ],
            }
        ]
        for i in range(count)
    ]
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    llm.chat(conversations[:8], sampling_params=params, use_tqdm=False)
    start = time.perf_counter()
    llm.chat(conversations, sampling_params=params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("FIRM_GPU_VL_MODEL", DEFAULT_MODEL))
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    args = parser.parse_args(argv)
    missing = prerequisites()
    if missing:
        print(f"bench/vllm_backend.py: cannot run: {missing}", file=sys.stderr)
        return 2
    import torch

    ours = product_rps(args.model, args.requests, args.max_new_tokens, args.gpu_memory_utilization)
    gc.collect()
    torch.cuda.empty_cache()
    bare = standalone_rps(args.model, args.requests, args.max_new_tokens, args.gpu_memory_utilization)
    print(f"model={args.model} requests={args.requests} max_new_tokens={args.max_new_tokens}")
    print(f"P5 throughput_ratio={ours / bare:.3f} product_rps={ours:.2f} vllm_rps={bare:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

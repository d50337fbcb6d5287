"""P2: the cached stage's throughput against a bare loop calling the same backend, same batches.

Both sides caption the same N (source, edited) pairs with the tiny Qwen3-VL on a cold cache, one
attempt each; the stage adds rendering, hashing, parsing, cache lookups and commits to DuckDB.
Prints `P2 throughput_ratio=<pipeline / bare>`.
"""

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="firm-bench-p2-"))
    os.environ["FIRM_HOME"] = str(home)

    from firm_assets.curation.images import save_generated
    from firm_assets.curation.parsers import CAPTION_TEXT
    from firm_assets.curation.roles import chat_stage
    from firm_assets.curation.stage import StageInput, _call_inputs, run_chat_stage
    from resources.chat import ImagePart
    from resources.models import ModelsResource, ensure_tiny_models
    from warehouse.connection import Warehouse

    ensure_tiny_models()
    models = ModelsResource()
    profile = models.settings()
    backend = models.chat("captioner")
    stage = chat_stage(profile, "bench_captions", "difference_caption", CAPTION_TEXT, "caption", scored=False)
    # one attempt: re-asking unparseable answers is extra model work the bare loop would not do
    stage = dataclasses.replace(stage, max_attempts=1)
    store = home / "images"
    inputs = []
    for i in range(args.n):
        source = save_generated(Image.new("RGB", (64, 64), (i % 256, 40, 90)), store)
        edited = save_generated(Image.new("RGB", (64, 64), (90, i % 256, 40 + i // 256)), store)
        inputs.append(
            StageInput(
                f"s{i}",
                {},
                {
                    "source": ImagePart(source.path, source.sha256),
                    "edited": ImagePart(edited.path, edited.sha256),
                },
            )
        )
    requests = [stage.template.render(s.variables, s.images) for s in inputs]
    backend.generate(requests[: args.batch_size], stage.decoding)  # warm-up, both sides share it

    started = time.perf_counter()
    for start in range(0, len(requests), args.batch_size):
        batch = requests[start : start + args.batch_size]
        _ = [_call_inputs(r) for r in batch]  # the bare loop still needs its inputs identified
        backend.generate(batch, stage.decoding)
    bare_s = time.perf_counter() - started

    warehouse = Warehouse(home / "warehouse.duckdb")
    warehouse.rows("SELECT 1")  # migrations outside the timed region
    started = time.perf_counter()
    _, stats = run_chat_stage(stage, backend, inputs, warehouse, args.batch_size)
    pipeline_s = time.perf_counter() - started
    assert stats.model_calls == args.n, stats

    print(f"n={args.n} batch_size={args.batch_size} bare_s={bare_s:.2f} pipeline_s={pipeline_s:.2f}")
    print(f"P2 throughput_ratio={bare_s / pipeline_s:.3f}")


if __name__ == "__main__":
    main()

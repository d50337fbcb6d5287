"""P1: re-curation cost. Build N samples through a chain, change 1% of them, rebuild; then rebuild
again with no change.

calls_ratio = model calls in the rebuild / (stage, sample) pairs whose inputs changed (counted from
the data, independently of the cache); wall_ratio = rebuild wall / full wall.
Prints each stage's cost in the full run (from its asset metadata: wall seconds, model seconds,
model calls, calls per second) and then
`P1 chain=... calls_ratio=... wall_ratio=... full_s=... rebuild_s=... nochange_calls=...`.

  python bench/recuration.py --chain edit --n 1000
  python bench/recuration.py --chain gen --n 200
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

SUFFIX = " Keep the edges crisp."
OBJECTS = ("apple", "cup", "kite", "dog", "bench", "umbrella", "book", "car", "bicycle", "clock")
COLOURS = ("red", "blue", "green", "yellow", "white", "black")


def synthetic_prompts(n: int) -> list[str]:
    """N distinct GenEval-like prompts (counts, colours, pairs), deterministic."""
    prompts = []
    for i in range(n):
        a, b = OBJECTS[i % len(OBJECTS)], OBJECTS[(i // len(OBJECTS) + 1) % len(OBJECTS)]
        colour = COLOURS[(i // 7) % len(COLOURS)]
        prompts.append(f"a photo of {i % 5 + 1} {colour} {a}s next to a {b}, variant {i}")
    return prompts


def edit_setup(home: Path, n: int, changed: int):
    from graph_runs import edit_config, write_requests

    from firm_assets.edit.demo import write_demo_edit_dataset

    requests = write_demo_edit_dataset(home / "data", n=n)
    rows = [json.loads(line) for line in requests.read_text().splitlines()]

    def change() -> None:
        for row in rows[:: max(1, len(rows) // changed)][:changed]:
            row["prompt"] += SUFFIX
        write_requests(requests, rows)

    return edit_config(requests), change


def edit_expected(wh) -> dict[str, int]:
    import polars as pl

    ids = wh.query(f"SELECT request_id FROM assets.edit_requests WHERE instruction LIKE '%{SUFFIX.strip()}'")
    ids = ids["request_id"].implode()
    candidates = wh.query("SELECT * FROM assets.edit_candidates").filter(pl.col("request_id").is_in(ids))
    generated = candidates.filter(pl.col("editor") != "imported").height
    captions = wh.query("SELECT * FROM assets.difference_captions").filter(pl.col("request_id").is_in(ids))
    scored = captions.filter(pl.col("caption").is_not_null()).height
    return {
        "edit_candidates": generated,
        "difference_captions": generated,
        "execution": scored,
        "consistency": scored,
    }


def gen_setup(home: Path, n: int, changed: int):
    from graph_runs import gen_config

    path = home / "prompts.txt"
    prompts = synthetic_prompts(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(prompts) + "\n")

    def change() -> None:
        for i in range(0, n, max(1, n // changed))[:changed]:
            prompts[i] += SUFFIX
        path.write_text("\n".join(prompts) + "\n")

    return gen_config(path), change


def gen_expected(wh) -> dict[str, int]:
    import polars as pl

    ids = wh.query(f"SELECT prompt_id FROM assets.gen_prompts WHERE prompt LIKE '%{SUFFIX.strip()}'")
    ids = ids["prompt_id"].implode()
    images = wh.query("SELECT * FROM assets.generated_images").filter(pl.col("prompt_id").is_in(ids)).height
    checklists = wh.query("SELECT * FROM assets.gen_checklists").filter(pl.col("prompt_id").is_in(ids))
    planned = checklists.filter(pl.col("items").is_not_null())["prompt_id"].implode()
    scored = (
        wh.query("SELECT * FROM assets.generated_images").filter(pl.col("prompt_id").is_in(planned)).height
    )
    return {"gen_checklists": checklists.height, "generated_images": images, "if": scored, "quality": scored}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chain", choices=("edit", "gen"), default="edit")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--changed-fraction", type=float, default=0.01)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix=f"firm-bench-p1-{args.chain}-"))
    os.environ["FIRM_HOME"] = str(home)

    from graph_runs import materialize_group, model_calls, stage_figures

    from resources.models import ensure_tiny_models
    from warehouse.connection import Warehouse

    ensure_tiny_models()
    changed = max(1, round(args.n * args.changed_fraction))
    setup, expected_calls = (edit_setup, edit_expected) if args.chain == "edit" else (gen_setup, gen_expected)
    run_config, change = setup(home, args.n, changed)

    started = time.perf_counter()
    full = materialize_group(args.chain, run_config)
    full_s = time.perf_counter() - started
    assert full.success
    change()
    started = time.perf_counter()
    rebuild = materialize_group(args.chain, run_config)
    rebuild_s = time.perf_counter() - started
    assert rebuild.success
    calls = model_calls(rebuild)
    expected = expected_calls(Warehouse(home / "warehouse.duckdb"))
    nochange_calls = sum(model_calls(materialize_group(args.chain, run_config)).values())

    print(f"chain={args.chain} n={args.n} changed={changed} full_calls={sum(model_calls(full).values())}")
    figures = {
        f: stage_figures(full, f) for f in ("wall_seconds", "model_seconds", "model_calls", "calls_per_s")
    }
    for stage, made in figures["model_calls"].items():
        print(
            f"  stage {stage}: wall_s={figures['wall_seconds'].get(stage, 0):.1f}"
            f" model_s={figures['model_seconds'].get(stage, 0):.1f} calls={made}"
            f" calls_per_s={figures['calls_per_s'].get(stage, 0):.2f}"
        )
    print(f"rebuild calls per stage={calls} expected={expected}")
    print(
        f"P1 chain={args.chain} calls_ratio={sum(calls.values()) / sum(expected.values()):.2f}"
        f" wall_ratio={rebuild_s / full_s:.3f} full_s={full_s:.1f} rebuild_s={rebuild_s:.1f}"
        f" nochange_calls={nochange_calls}"
    )


if __name__ == "__main__":
    main()

"""P1: re-curation cost. Build N demo requests through the edit chain, change 1% of the requests,
rebuild; then rebuild again with no change.

calls_ratio = model calls in the rebuild / (stage, sample) pairs whose inputs changed (counted from
the data, independently of the cache); wall_ratio = rebuild wall / full wall.
Prints `P1 calls_ratio=... wall_ratio=... full_s=... rebuild_s=... nochange_calls=...`.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--changed-fraction", type=float, default=0.01)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="firm-bench-p1-"))
    os.environ["FIRM_HOME"] = str(home)

    import polars as pl
    from graph_runs import edit_config, materialize_group, model_calls, write_requests

    from firm_assets.edit.demo import write_demo_edit_dataset
    from resources.models import ensure_tiny_models
    from warehouse.connection import Warehouse

    ensure_tiny_models()
    requests = write_demo_edit_dataset(home / "data", n=args.n)
    rows = [json.loads(line) for line in requests.read_text().splitlines()]

    started = time.perf_counter()
    full = materialize_group("edit", edit_config(requests))
    full_s = time.perf_counter() - started
    assert full.success
    full_calls = sum(model_calls(full).values())

    changed = max(1, round(args.n * args.changed_fraction))
    for row in rows[:: max(1, len(rows) // changed)][:changed]:
        row["prompt"] += " Keep the edges crisp."
    write_requests(requests, rows)
    started = time.perf_counter()
    rebuild = materialize_group("edit", edit_config(requests))
    rebuild_s = time.perf_counter() - started
    assert rebuild.success

    wh = Warehouse(home / "warehouse.duckdb")
    new_ids = wh.query("SELECT request_id FROM assets.edit_requests WHERE instruction LIKE '%crisp.'")
    ids = new_ids["request_id"].implode()
    candidates = wh.query("SELECT * FROM assets.edit_candidates").filter(pl.col("request_id").is_in(ids))
    generated = candidates.filter(pl.col("editor") != "imported").height
    captions = wh.query("SELECT * FROM assets.difference_captions").filter(pl.col("request_id").is_in(ids))
    scored = captions.filter(pl.col("caption").is_not_null()).height
    expected = {
        "edit_candidates": generated,
        "difference_captions": generated,
        "execution": scored,
        "consistency": scored,
    }
    calls = model_calls(rebuild)

    nochange = materialize_group("edit", edit_config(requests))
    nochange_calls = sum(model_calls(nochange).values())

    print(f"n={args.n} changed_requests={new_ids.height} full_calls={full_calls}")
    print(f"rebuild calls per stage={calls} expected={expected}")
    calls_ratio = sum(calls.values()) / sum(expected.values())
    print(
        f"P1 calls_ratio={calls_ratio:.2f} wall_ratio={rebuild_s / full_s:.3f} full_s={full_s:.1f}"
        f" rebuild_s={rebuild_s:.1f} nochange_calls={nochange_calls}"
    )


if __name__ == "__main__":
    main()

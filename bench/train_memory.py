"""P6: the critic trainer's memory does not grow with the dataset, and its loop keeps up with a bare one.

Builds a one-task ShareGPT export of N distinct image records (the 1x set) and one with every
record copied FACTOR times (the 10x set), then runs, each in a fresh process (OMP_NUM_THREADS=1) so
peak RSS is clean:
- the product's training process (`firm_assets.critics.train.train`, cpu-tiny recipe: batch 4, one
  epoch, no validation split or checkpoints, and cpu-tiny's DataLoader workers unless --workers
  says otherwise) on 1x and on 10x: peak RSS of the process (the largest of it and its workers).
  Its timed loop (`train_seconds`) reads and encodes each batch (`encode_batch`, in the workers,
  or in line with 0 workers), runs forward and backward through accelerate, clips the gradient
  norm, steps AdamW and the cosine schedule and records the loss;
- a bare loop on the 10x set: the same base model, the same examples in the same order (the
  trainer's sampler), the same batches made by the same `encode_batch`, all encoded before the
  clock starts; timed: forward, backward and the same AdamW step, nothing else (no clipping, no
  schedule, no accelerate, no DataLoader).
Prints `P6 rss_ratio=<peak RSS 10x / 1x> throughput_ratio=<training examples/s / bare examples/s>`.
The tiny processor caps an image at a few dozen patches (about 100 KiB of pixel values per example),
so the ratio alone barely tells streaming from encoding everything up front at this scale; the
detail line's rss_growth_mib (10x minus 1x) is the sharper figure.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

CHILD_ENV = {"OMP_NUM_THREADS": "1"}  # the tiny model gains nothing from more threads on 2 cores


def peak_rss_mib() -> float:
    """Peak resident memory of this process or the largest of its finished children (workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def build_export(root: Path, records: int, copies: int, size: int) -> Path:
    """A published-layout export of `records` distinct image records, each written `copies` times."""
    from firm_assets.curation.sharegpt import index_exports, sharegpt_record, write_tasks

    folder = root / "bench" / f"x{copies}"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(records):
        Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(
            folder / "images" / f"{i}.png"
        )
        answer = json.dumps({"reasoning": f"colour number {i}", "score": 1 + i % 5})
        rows.append(
            sharegpt_record(
                "You grade images.", "Grade this image.", [f"bench/x{copies}/images/{i}.png"], answer
            )
        )
    write_tasks(folder, "bench", f"x{copies}", {"task": rows * copies})
    index_exports(root)
    return folder


def child_train(params: dict) -> dict:
    from firm_assets.critics.train import train

    summary = train(params, lambda _line: None, lambda _summary: None)
    examples = summary["train_examples"] * params["recipe"]["epochs"]
    return {"peak_rss_mib": peak_rss_mib(), "examples_per_s": examples / summary["train_seconds"]}


def child_bare(params: dict) -> dict:
    """The same model, optimizer and batches (same order), encoded before the clock starts."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from firm_assets.critics.data import EpochSampler, SftDataset, encode_batch, index_tasks, split_validation

    recipe = params["recipe"]
    torch.manual_seed(recipe["seed"])
    processor = AutoProcessor.from_pretrained(params["base_model"])
    index = index_tasks(Path(params["dataset_folder"]), params["tasks"])
    train_positions, _ = split_validation(index.keys, recipe["val_fraction"])
    dataset = SftDataset(index, train_positions)
    order = list(EpochSampler(len(dataset), recipe["seed"]))
    size = recipe["per_device_batch_size"]
    batches = [
        encode_batch(processor, [dataset[i] for i in order[start : start + size]])
        for start in range(0, len(order), size)
    ]
    model = AutoModelForImageTextToText.from_pretrained(params["base_model"], dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=0.0)
    started = time.perf_counter()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {"peak_rss_mib": peak_rss_mib(), "examples_per_s": len(order) / (time.perf_counter() - started)}


def run_child(kind: str, params: dict, folder: Path) -> dict:
    path = folder / f"{kind}-{Path(params['dataset_folder']).name}.json"
    path.write_text(json.dumps(params))
    run = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--params", str(path)],
        env={**os.environ, **CHILD_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"{kind} on {path.name} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=48, help="distinct records in the 1x set")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cpu-tiny's)")
    parser.add_argument("--child", choices=["train", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        params = json.loads(Path(args.params).read_text())
        print(json.dumps((child_train if args.child == "train" else child_bare)(params)))
        return

    home = Path(tempfile.mkdtemp(prefix="firm-bench-p6-"))
    os.environ["FIRM_HOME"] = str(home)
    from firm_assets.critics.recipe import CriticTrainingConfig, effective_recipe
    from resources.models import tiny_models_dir
    from resources.profiles import get_profile
    from resources.tiny_models import VL_NAME, build_tiny_models

    build_tiny_models(tiny_models_dir())
    recipe = effective_recipe(
        get_profile("cpu-tiny").critic.recipe,
        CriticTrainingConfig(epochs=1, val_fraction=0.0, checkpoint_every=0, dataloader_workers=args.workers),
    )
    exports = home / "datasets"
    results = {}
    for copies in (1, args.factor):
        params = {
            "base_model": str(tiny_models_dir() / VL_NAME),
            "dataset_folder": str(build_export(exports, args.records, copies, args.image_size)),
            "tasks": ["task"],
            "output_dir": str(home / f"critic-x{copies}"),
            "recipe": recipe,
        }
        results[copies] = run_child("train", params, home)
    bare = run_child("bare", params, home)
    small, large = results[1], results[args.factor]
    print(
        f"records={args.records} factor={args.factor} workers={recipe['dataloader_workers']}"
        f" rss_1x_mib={small['peak_rss_mib']:.0f} rss_{args.factor}x_mib={large['peak_rss_mib']:.0f}"
        f" rss_growth_mib={large['peak_rss_mib'] - small['peak_rss_mib']:.1f}"
        f" train_ex_s={large['examples_per_s']:.2f} bare_ex_s={bare['examples_per_s']:.2f}"
    )
    print(
        f"P6 rss_ratio={large['peak_rss_mib'] / small['peak_rss_mib']:.3f}"
        f" throughput_ratio={large['examples_per_s'] / bare['examples_per_s']:.3f}"
    )


if __name__ == "__main__":
    main()

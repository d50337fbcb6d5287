"""P8: importing released SFT data at FIRM's scale — `firm import-dataset firm_edit` on ShareGPT files
of FIRM-Edit-370K's size, run as a user runs it (a child process). No model calls.

Setup (not timed), under a temporary FIRM_HOME:
- `--images` distinct real 64x64 PNG files (default 1,000) in a media folder; every record points at
  two of them (source, edited), so the importer's image ingest meets the same files again and again,
  as it does in real data where a source image serves several edits (each source four records).
  With `--images 370000` the 370K records point at 210,358 distinct files (the version's image links
  are printed);
- `--n` records (default 370,000) split over the two edit tasks as FIRM's Hub datasets are: 190,000
  in FIRM-Edit-Instruction (the viewer's row count) and the rest in FIRM-Edit-Consistency, scaled to
  `--n`. `edit_execution` is one JSON Lines file in the `messages` tags, `edit_consistency` one
  Parquet file in the `conversations` tags with a `system` column (row groups of 10,000), so both
  readers run. The user turn is the critic's own prompt (`critic_edit_execution` /
  `critic_edit_consistency`, their real length) after two `<image>` placeholders, with an instruction
  and, for a third of the records, a requirement; the answer a reasoning + score JSON.

Timed as `import_s`: the real command `python -m firm_assets.cli import-dataset firm_edit --task
edit_execution FILE --task edit_consistency FILE --media-dir DIR`, from process start to exit
(Python start-up and imports included): hashing the files, reading and checking every record,
ingesting its images (read, validated, hashed, stored by content), writing the two task files, the
version's `data.parquet`, the quarantine rows, the image links and the registration. The child's peak
resident set is `ru_maxrss` of RUSAGE_CHILDREN (the only child this process waits for), its CPU
seconds the children's user + system time. The result is checked: the command's printed record counts,
`data.parquet`'s rows, one line per record in each task file, nothing quarantined.

Prints `P8 import records=<n> import_s=<s> peak_rss_gib=<GiB>` last.

  python bench/import_scale.py                  # n = 370,000 records, 1,000 image files
  python bench/import_scale.py --n 2000
  python bench/import_scale.py --images 370000  # 210K distinct image files
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from firm_assets.curation.prompts import load_template

DATASET = "firm_edit"
# FIRM-Edit-370K as released on the Hub: FIRM-Edit-Instruction (190k rows in the dataset viewer)
# and FIRM-Edit-Consistency (the rest)
FIRM_RECORDS, FIRM_EXECUTION = 370_000, 190_000
PARQUET_ROWS = 10_000  # rows per Parquet row group and per generation chunk
OBJECTS = ("cup", "kite", "dog", "bench", "umbrella", "book", "car", "clock")
COLOURS = ("red", "blue", "green", "white", "black", "yellow")


def make_images(folder: Path, count: int) -> list[str]:
    """`count` distinct real PNG files in `folder`: their paths relative to its parent."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        name = f"{k:07d}.png"
        Image.new("RGB", (64, 64), (k % 256, k // 256 % 256, 40 + k // 65536 % 200)).save(folder / name)
        names.append(f"{folder.name}/{name}")
    return names


def record_parts(task: str, i: int, images: list[str]) -> tuple[str, str, str, list[str]]:
    """(system, user, answer, image paths) of record `i` of `task`."""
    template = load_template(f"critic_{task}")
    thing, colour = OBJECTS[i % len(OBJECTS)], COLOURS[i // len(OBJECTS) % len(COLOURS)]
    requirement = f"Keep the {thing}'s shape and the background." if i % 3 == 0 else None
    variables = {
        "instruction": f"Move the {thing} to the left and make it {colour} (request {i}).",
        "requirement": requirement,
    }
    user = "<image><image>" + template.user_text(variables)
    score = 1 + i * 7 % 5
    answer = json.dumps(
        {
            "reasoning": f"The {thing} is moved to the left and is now {colour}; the background and"
            f" lighting are unchanged and the {thing} keeps its shape, with minor artefacts at its edges.",
            "score": score,
        }
    )
    # a source image serves four edits, as in the curated data; edits cycle through the files
    pair = [images[i // 4 % len(images)], images[(i * 7 + 1) % len(images)]]
    return template.system_text or "", user, answer, pair


def write_execution(path: Path, count: int, images: list[str]) -> None:
    """JSON Lines in the `messages` (OpenAI) tags, the system turn first."""
    with path.open("w") as handle:
        for i in range(count):
            system, user, answer, pair = record_parts("edit_execution", i, images)
            turns = [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ]
            handle.write(json.dumps({"messages": turns, "images": pair}) + "\n")


def write_consistency(path: Path, count: int, images: list[str]) -> None:
    """Parquet in the `conversations` (default) tags with a `system` column, PARQUET_ROWS a group."""
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    schema = pa.schema(
        [("conversations", pa.list_(turn)), ("system", pa.string()), ("images", pa.list_(pa.string()))]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, PARQUET_ROWS):
            columns: dict[str, list] = {"conversations": [], "system": [], "images": []}
            for i in range(start, min(count, start + PARQUET_ROWS)):
                system, user, answer, pair = record_parts("edit_consistency", i, images)
                columns["conversations"].append(
                    [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
                )
                columns["system"].append(system)
                columns["images"].append(pair)
            writer.write_table(pa.table(columns, schema=schema))


def folder_mib(folder: Path) -> dict[str, float]:
    """MiB of the version folder's files, its image links apart (each counted once)."""
    sizes = {path.name: path.stat().st_size / 2**20 for path in folder.iterdir() if path.is_file()}
    images = list((folder / "images").iterdir())
    sizes[f"images ({len(images)} links)"] = sum(path.stat().st_size for path in images) / 2**20
    return {name: round(size, 1) for name, size in sizes.items()}


def run(home: Path, n: int, n_images: int) -> str:
    """Write the files, run the import in a child, check what it wrote; returns the P8 line."""
    n_execution = round(n * FIRM_EXECUTION / FIRM_RECORDS)
    counts = {"edit_execution": n_execution, "edit_consistency": n - n_execution}
    media = home / "released"
    started = time.perf_counter()
    images = make_images(media / "images", n_images)
    files = {"edit_execution": media / "execution.jsonl", "edit_consistency": media / "consistency.parquet"}
    write_execution(files["edit_execution"], counts["edit_execution"], images)
    write_consistency(files["edit_consistency"], counts["edit_consistency"], images)
    file_mib = {path.name: round(path.stat().st_size / 2**20, 1) for path in files.values()}
    print(
        f"setup records={counts} images={n_images} files_mib={file_mib}"
        f" setup_s={time.perf_counter() - started:.1f}",
        flush=True,
    )

    env = {**os.environ, "FIRM_HOME": str(home / "firm"), "DAGSTER_HOME": str(home / "firm" / "dagster")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "firm_assets.cli", "import-dataset", DATASET]
    for task, path in files.items():
        command += ["--task", task, str(path)]
    command += ["--media-dir", str(media)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    import_s = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"import failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    first = done.stdout.splitlines()[0]
    version, folder = re.search(r"version (\w+) imported: .*; (\S+)$", first).groups()
    kept = dict((task, int(count)) for task, count in re.findall(r"(edit_\w+) (\d+)", first))
    assert kept == counts, (kept, counts)
    assert "quarantined" not in done.stdout, done.stdout
    folder = Path(folder)
    assert pq.ParquetFile(folder / "data.parquet").metadata.num_rows == n
    for task, count in counts.items():
        with (folder / f"{task}.json").open() as lines:
            assert sum(1 for _ in lines) == count + 2  # "[", one line per record, "]"

    peak_rss_gib = usage.ru_maxrss / 2**20  # KiB on Linux
    cpu_s = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    print(
        f"import version={version} cpu_s={cpu_s:.1f} (the child, user + system)"
        f" records_per_s={n / import_s:.0f} folder_mib={folder_mib(folder)}",
        flush=True,
    )
    return f"P8 import records={n} import_s={import_s:.1f} peak_rss_gib={peak_rss_gib:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=FIRM_RECORDS, help="records in all, split over the two tasks"
    )
    parser.add_argument("--images", type=int, default=1_000, help="distinct image files the records point at")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="firm-bench-p8-"))
    try:
        line = run(home, args.n, args.images)
    finally:
        if args.keep:
            print(f"kept {home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(line)


if __name__ == "__main__":
    main()

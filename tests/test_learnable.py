"""Proof that training trains. On cpu-tiny the curation judge is random, so the demo's labels carry
no information and a trained critic can only learn the answer format and the label distribution.
Here the labels do carry information: the edited image's dominant colour decides its execution
score. The tiny critic is exported, trained and read back through the project's own code (the
ShareGPT export the dataset asset writes, the training process the critic asset launches, the
critic inference FIRM-Bench uses), and on held-out images it must beat the constant predictor that
answers the median training label."""

import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest
from critic_runs import run_summary, train_critic
from PIL import Image

from firm_assets.critics.inference import CRITIC_TASKS, score_with_critic
from firm_assets.critics.recipe import CriticTrainingConfig, effective_recipe
from firm_assets.curation.dataset import publish_dataset
from firm_assets.curation.versioning import frame_version
from firm_assets.edit.dataset import TASKS as EDIT_TASKS
from resources.profiles import get_profile
from resources.transformers_backend import TransformersBackend
from warehouse.connection import Warehouse

# the execution score of an edited image is 1 + the index of the colour that covers most of it
COLOURS = {
    "red": (210, 40, 40),
    "yellow": (225, 210, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "white": (235, 235, 235),
}
INSTRUCTIONS = ("Repaint the picture.", "Change the colours of the scene.", "Make the image brighter.")
SIZE = 32  # the smallest image the tiny processor takes unscaled: 4 image tokens
# Sized to stay well under 200 s on the busy 2-core development machine (it took 551 s there with 60
# training and 10 held-out images per score and a longer prompt): the loss is below 0.1 after about
# 100 updates, and 48 images per score give 300 updates over EPOCHS.
TRAIN_PER_SCORE = 48
HELD_OUT_PER_SCORE = 6
# At 3 epochs the tiny critic was on the edge of learning the task: it learns red, yellow and white
# first and separates green and blue from red late, so the held-out text MAE depended on the training
# seed (0.96, 0.00, 0.44, 0.08 for the default seed and seeds 1-3). At 5 epochs the default seed and
# seeds 2-4 all gave 0.00 (measured 2026-11-29 on this code).
EPOCHS = 5
WORST_ERROR = 4.0
MARGIN = 0.7  # the critic's held-out MAE must be at most 70% of the constant predictor's


def dominant_colour_image(path: Path, score: int, rng: random.Random) -> None:
    """A SIZE x SIZE image mostly in the score's colour, with a block of another colour (under a
    fifth of the area) and per-pixel noise, so the score follows from what dominates, not from one
    exact pixel value."""
    names = list(COLOURS)
    main = names[score - 1]
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[main])
    width, height = rng.randint(6, 14), rng.randint(6, 14)
    left, top = rng.randint(0, SIZE - width), rng.randint(0, SIZE - height)
    image.paste(COLOURS[rng.choice([n for n in names if n != main])], (left, top, left + width, top + height))
    pixels = image.load()
    for x in range(SIZE):
        for y in range(SIZE):
            pixels[x, y] = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in pixels[x, y])
    image.save(path)


def synthetic_items(folder: Path, per_score: int, seed: int, source: Path) -> pl.DataFrame:
    """Edit rows balanced over scores 1-5: one grey source image, an instruction unrelated to the
    score, a dominant-colour edited image, its score and a reasoning that names the colour."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    rows = []
    for score in range(1, 6):
        for index in range(per_score):
            path = folder / f"{score}-{index}.png"
            dominant_colour_image(path, score, rng)
            rows.append(
                {
                    "sample_id": f"{seed}-{score}-{index}",
                    "instruction": rng.choice(INSTRUCTIONS),
                    "source_path": str(source),
                    "edited_path": str(path),
                    "edited_sha": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "execution_score": float(score),
                    "execution_reasoning": f"The edited image is mostly {list(COLOURS)[score - 1]}.",
                }
            )
    return pl.DataFrame(rows)


def mae(predictions: list[float | None], labels: list[float]) -> float:
    """Mean absolute error; a missing prediction (a failed answer) counts as the worst error."""
    errors = [WORST_ERROR if p is None else abs(p - y) for p, y in zip(predictions, labels, strict=True)]
    return sum(errors) / len(errors)


def test_mae_counts_a_missing_prediction_as_the_worst_error() -> None:
    assert mae([1.0, 5.0, None], [2.0, 4.0, 1.0]) == pytest.approx((1 + 1 + 4) / 3)
    assert mae([3.0, 3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(1.2)


@pytest.mark.parametrize("score", [1, 3, 5])
def test_the_score_colour_covers_most_of_the_image(score: int, tmp_path: Path) -> None:
    dominant_colour_image(tmp_path / "image.png", score, random.Random(score))
    with Image.open(tmp_path / "image.png") as image:
        pixels = list(image.getdata())

    def nearest(pixel: tuple[int, int, int]) -> str:
        return min(
            COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(pixel, COLOURS[name], strict=True))
        )

    share = sum(nearest(p) == list(COLOURS)[score - 1] for p in pixels) / len(pixels)
    assert share >= 1 - 14 * 14 / SIZE**2


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FIRM_HOME with the shipped templates (no tiny diffusion models needed)."""
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "firm-home"))
    monkeypatch.delenv("FIRM_TEMPLATE_DIR", raising=False)
    return tmp_path / "firm-home"


def _train(base_model: Path, dataset_folder: Path, task: str, output: Path) -> dict:
    """Run the training process the critic asset launches, with the cpu-tiny recipe for EPOCHS
    epochs; its last stdout line is the summary."""
    recipe = effective_recipe(get_profile("cpu-tiny").critic.recipe, CriticTrainingConfig(epochs=EPOCHS))
    params = {
        "base_model": str(base_model),
        "dataset_folder": str(dataset_folder),
        "tasks": [task],
        "output_dir": str(output),
        "recipe": recipe,
    }
    params_file = output.with_name("params.json")
    params_file.write_text(json.dumps(params))
    return run_summary(train_critic(params_file, timeout=600))


def test_trained_critic_beats_the_constant_predictor_on_held_out_items(
    home: Path, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (SIZE, SIZE), (128, 128, 128)).save(source)
    train = synthetic_items(tmp_path / "train", TRAIN_PER_SCORE, 1, source)
    held_out = synthetic_items(tmp_path / "held-out", HELD_OUT_PER_SCORE, 2, source)

    # the dataset asset's export: LLaMA-Factory ShareGPT of the execution critic prompt, with images
    task = next(task for task in EDIT_TASKS if task.name == "edit_execution")
    warehouse = Warehouse(home / "warehouse.duckdb")
    published = publish_dataset(
        "learnable",
        train.with_columns(
            pl.lit(None, pl.String).alias("requirement"),
            pl.lit("synthetic").alias("source"),
            pl.lit([], pl.List(pl.String)).alias("cache_keys"),
        ),
        [task],
        {},
        [("synthetic_items", frame_version(train, "sample_id"))],
        warehouse,
        None,
        lambda _version, _folder: None,  # MLflow logging is not under test here: no run is logged
    )
    summary = _train(tiny_models["tiny-qwen3-vl"], published.folder, task.name, tmp_path / "critic")
    assert summary["examples"] == 5 * TRAIN_PER_SCORE

    # the critic read back as FIRM-Bench reads it: text score and next-token expectation
    source_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    items = held_out.select(
        pl.col("sample_id").alias("item_id"),
        pl.col("instruction").alias("text"),
        pl.concat_list("source_path", "edited_path").alias("images"),
        pl.concat_list(pl.lit(source_sha), "edited_sha").alias("image_shas"),
    )
    critic_task = next(t for t in CRITIC_TASKS if (t.side, t.dimension) == ("edit", "execution"))
    held_out_items = 5 * HELD_OUT_PER_SCORE  # one batch
    backend = TransformersBackend(str(tmp_path / "critic"), batch_size=held_out_items)
    predictions, _ = score_with_critic(
        backend, critic_task, items, warehouse, 64, held_out_items, None, expectation=True
    )
    scored = held_out.join(predictions, left_on="sample_id", right_on="item_id")
    assert scored.height == held_out.height

    labels = scored["execution_score"].to_list()
    constant_mae = mae([train["execution_score"].mean()] * len(labels), labels)
    figures = {
        "constant": constant_mae,
        "text": mae(scored["text_score"].to_list(), labels),
        "expectation": mae(scored["expectation_score"].to_list(), labels),
        "loss": (summary["first_loss"], summary["final_loss"]),
        "val_loss": summary["final_val_loss"],
    }
    print(f"LEARNABLE {figures}")  # quoted in firm_assets/critics/README.md
    assert constant_mae == pytest.approx(1.2)  # balanced labels: the median label 3 is off by 1.2 on average
    assert figures["text"] <= MARGIN * constant_mae, figures
    assert figures["expectation"] <= MARGIN * constant_mae, figures

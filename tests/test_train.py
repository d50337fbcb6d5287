"""The SFT script on its own (no Dagster): full fine-tune and LoRA both learn and save weights that
load with from_pretrained like the base."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText

from firm_assets.curation.sharegpt import index_exports, sharegpt_record, write_tasks

REPO = Path(__file__).resolve().parent.parent


def _dataset(root: Path) -> Path:
    """A one-task export in the publisher's layout, written with its ShareGPT writer and index."""
    folder = root / "data" / "v1"
    (folder / "images").mkdir(parents=True)
    records = []
    for i, colour in enumerate(("red", "blue", "green", "white")):
        Image.new("RGB", (64, 64), colour).save(folder / "images" / f"{i}.png")
        answer = json.dumps({"reasoning": f"it is {colour}", "score": 5})
        records.append(
            sharegpt_record(
                "You grade images.", f"Is the image {colour}?", [f"data/v1/images/{i}.png"], answer
            )
        )
    write_tasks(folder, "data", "v1", {"task": records})
    index_exports(root)
    return folder


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_lowers_the_loss_and_saves_loadable_weights(
    method: str, tmp_path: Path, tiny_models
) -> None:
    output = tmp_path / "critic"
    params = {
        "base_model": str(tiny_models["tiny-qwen3-vl"]),
        "dataset_folder": str(_dataset(tmp_path / "exports")),
        "tasks": ["task"],
        "output_dir": str(output),
        "recipe": {
            "learning_rate": 0.01,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.0,
            "epochs": 6,
            "seed": 42,
            "method": method,
            "lora_rank": 8,
            "max_grad_norm": 1.0,
            "log_every": 100,
            "bf16": False,
        },
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    run = subprocess.run(
        [sys.executable, "-m", "firm_assets.critics.train", "--params", str(tmp_path / "params.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["updates"] == 12 and summary["examples"] == 4
    assert summary["final_loss"] < summary["first_loss"]
    assert not (output / "adapter_config.json").exists()  # LoRA is merged: the folder loads like the base
    model = AutoModelForImageTextToText.from_pretrained(output)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"

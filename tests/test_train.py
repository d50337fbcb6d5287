"""The SFT process on its own (no Dagster): full fine-tune and LoRA both learn and save weights that
load with from_pretrained like the base; validation loss is reported; gradient checkpointing changes
no number; a run killed with SIGKILL resumes from its newest checkpoint to exactly the losses of an
uninterrupted run."""

import json
from pathlib import Path

import pytest
from critic_runs import run_summary, train_critic
from PIL import Image
from transformers import AutoModelForImageTextToText

from firm_assets.critics.data import SftDataset, encode_batch, index_tasks, split_validation
from firm_assets.critics.recipe import PAPER_RECIPE
from firm_assets.critics.train import KILL_AFTER_UPDATE, SUMMARY_FILE, train
from firm_assets.curation.sharegpt import index_exports, sharegpt_record, write_tasks

# what a relaunch after training finished reports as its cost: nothing spent now
NO_COST = {"model_seconds": 0.0, "gpu_seconds": 0.0, "model_calls": 0, "tokens_in": 0}
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "orange", "purple")


def _dataset(root: Path, colours: tuple[str, ...] = COLOURS[:4]) -> Path:
    """A one-task export in the publisher's layout, written with its ShareGPT writer and index."""
    folder = root / "data" / "v1"
    (folder / "images").mkdir(parents=True)
    records = []
    for i, colour in enumerate(colours):
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


def _params(tmp_path: Path, base: Path, dataset: Path, **recipe) -> Path:
    params = {
        "base_model": str(base),
        "dataset_folder": str(dataset),
        "tasks": ["task"],
        "output_dir": str(tmp_path / "critic"),
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "recipe": {
            **PAPER_RECIPE,
            "learning_rate": 0.01,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.0,
            "epochs": 6,
            "lora_rank": 8,
            "log_every": 100,
            "gradient_checkpointing": False,
            "dataloader_workers": 0,
            **recipe,
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.json").write_text(json.dumps(params))
    return tmp_path / "params.json"


def _example_tokens(base: Path, dataset: Path, val_fraction: float) -> int:
    """Tokens (padding excluded) of one pass over the training split, encoded as the trainer does."""
    from transformers import AutoProcessor

    index = index_tasks(dataset, ["task"])
    train_positions, _ = split_validation(index.keys, val_fraction)
    examples = SftDataset(index, train_positions)
    processor = AutoProcessor.from_pretrained(base)
    return sum(
        int(encode_batch(processor, [examples[i]])["attention_mask"].sum()) for i in range(len(examples))
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_lowers_the_loss_and_saves_loadable_weights(
    method: str, tmp_path: Path, tiny_models
) -> None:
    dataset = _dataset(tmp_path / "exports")
    params = _params(tmp_path, tiny_models["tiny-qwen3-vl"], dataset, method=method)
    summary = run_summary(train_critic(params))
    # 4 records: 1 held out for validation, 3 trained on in 2 batches per epoch for 6 epochs
    assert (summary["examples"], summary["train_examples"], summary["val_examples"]) == (4, 3, 1)
    assert summary["updates"] == 12 and len(summary["losses"]) == 12
    # the cost: 12 updates, every training token of 6 epochs (padding not counted), no GPU
    val_fraction = json.loads(params.read_text())["recipe"]["val_fraction"]
    cost = summary["cost"]
    assert cost["model_calls"] == 12 and cost["gpu_seconds"] == 0.0 and cost["model_seconds"] > 0
    assert cost["tokens_in"] == 6 * _example_tokens(tiny_models["tiny-qwen3-vl"], dataset, val_fraction)
    assert summary["final_loss"] < summary["first_loss"]
    # no eval_every inside 12 updates (the default is 200): one validation loss, at the end
    assert [step for step, _ in summary["val_losses"]] == [12] and summary["final_val_loss"] > 0
    assert summary["ran"] == {
        "mixed_precision": "no",  # no CUDA here: the recipe's bf16 is not honoured, and that is recorded
        "weights_dtype": "float32",
        "gradient_checkpointing": "off",
        "distributed_type": "NO",
        "num_processes": 1,
        "dataloader_workers": 0,
    }
    output = tmp_path / "critic"
    assert not (output / "adapter_config.json").exists()  # LoRA is merged: the folder loads like the base
    assert not (tmp_path / "checkpoints").exists()  # no checkpoint is left once the weights are saved
    model = AutoModelForImageTextToText.from_pretrained(output)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"

    # a relaunch of the same version (its parent died after training, e.g. at registration) reports
    # the saved summary and leaves the saved weights alone instead of training again
    saved = {path.name: path.stat().st_mtime_ns for path in output.iterdir()}
    again = train_critic(params)
    assert "already holds this version's trained weights" in again.stdout
    reported = run_summary(again)
    assert {**reported, "cost": None} == {**summary, "cost": None}
    assert reported["cost"] == NO_COST
    assert {path.name: path.stat().st_mtime_ns for path in output.iterdir()} == saved


@pytest.mark.parametrize(("rank", "reports"), [("0", 1), ("1", 0)])
def test_every_rank_of_a_relaunch_after_training_finished_stops(
    rank: str, reports: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun a rank that trained on while rank 0 reported the saved summary would wait for
    rank 0 at its first collective forever: every rank returns, only rank 0 logs and reports. The
    parameters name no recipe and no existing model, so a rank that tried to train would fail."""
    output = tmp_path / "critic"
    output.mkdir()
    (output / SUMMARY_FILE).write_text(json.dumps({"updates": 12, "final_loss": 0.5}))
    monkeypatch.setenv("RANK", rank)
    logged, reported = [], []
    params = {"output_dir": str(output), "base_model": str(tmp_path / "no-such-model")}
    done = train(params, logged.append, reported.append)
    assert done == {"updates": 12, "final_loss": 0.5, "cost": NO_COST}
    assert reported == [done] * reports and len(logged) == reports


def test_gradient_checkpointing_and_workers_change_no_loss(tmp_path: Path, tiny_models) -> None:
    dataset = _dataset(tmp_path / "exports")
    plain = run_summary(
        train_critic(_params(tmp_path / "plain", tiny_models["tiny-qwen3-vl"], dataset, epochs=2))
    )
    changed = run_summary(
        train_critic(
            _params(
                tmp_path / "changed",
                tiny_models["tiny-qwen3-vl"],
                dataset,
                epochs=2,
                gradient_checkpointing=True,
                dataloader_workers=2,
            )
        )
    )
    assert changed["ran"]["gradient_checkpointing"] == "on" and changed["ran"]["dataloader_workers"] == 2
    assert changed["losses"] == pytest.approx(plain["losses"], abs=1e-5)
    assert changed["final_val_loss"] == pytest.approx(plain["final_val_loss"], abs=1e-5)


def test_a_run_killed_with_sigkill_resumes_to_the_same_losses(tmp_path: Path, tiny_models) -> None:
    """8 records: 1 held out, 7 trained on one at a time with 2 micro-batches per update, so an
    epoch is 4 updates, the last of a single micro-batch; 3 epochs = 12 updates, a checkpoint every
    3 and a validation loss every 2. The killed run dies after update 7; its newest checkpoint is
    update 6, in the middle of epoch 1, so the resumed run must skip 4 batches of epoch 1's order."""
    dataset = _dataset(tmp_path / "exports", COLOURS)
    recipe = {
        "per_device_batch_size": 1,
        "gradient_accumulation_steps": 2,
        "epochs": 3,
        "checkpoint_every": 3,
        "eval_every": 2,
        "warmup_ratio": 0.2,
        "learning_rate": 0.003,
    }
    straight = run_summary(
        train_critic(_params(tmp_path / "straight", tiny_models["tiny-qwen3-vl"], dataset, **recipe))
    )
    assert straight["updates"] == 12 and [s for s, _ in straight["val_losses"]] == [2, 4, 6, 8, 10, 12]

    params = _params(tmp_path / "killed", tiny_models["tiny-qwen3-vl"], dataset, **recipe)
    killed = train_critic(params, **{KILL_AFTER_UPDATE: "7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003", "step-00000006"]
    assert not (tmp_path / "killed" / "critic").exists()

    resumed = train_critic(params)
    summary = run_summary(resumed)
    assert "resuming from step-00000006: epoch 1, update 6" in resumed.stdout
    # its progress counts the 6 updates it makes (the rate `firm run`'s ETA needs), each one reported
    progress = [line for line in resumed.stdout.splitlines() if line.startswith("progress ")]
    assert progress == [f"progress {n}/6 updates" for n in range(1, 7)]
    # the resumed process's cost is its own: the 6 updates after the checkpoint and fewer tokens
    assert (straight["cost"]["model_calls"], summary["cost"]["model_calls"]) == (12, 6)
    assert 0 < summary["cost"]["tokens_in"] < straight["cost"]["tokens_in"]
    assert summary["losses"] == pytest.approx(straight["losses"], abs=1e-6, rel=0)
    assert [s for s, _ in summary["val_losses"]] == [s for s, _ in straight["val_losses"]]
    assert [v for _, v in summary["val_losses"]] == pytest.approx(
        [v for _, v in straight["val_losses"]], abs=1e-6, rel=0
    )
    assert not checkpoints.exists()

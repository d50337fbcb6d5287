"""The critic recipe as FIRM trained it with LLaMA-Factory: its defaults, the frozen vision tower and
projector, the pixel budget saved with the critic (so serving and bench see images at the trained
size), the loss normalised over the accumulated batch's target tokens, no KV cache in training, and
a version that only settings changing the weights move."""

import json
import math
from pathlib import Path

import pytest
import torch
from critic_runs import run_summary, train_critic
from PIL import Image

from firm_assets.critics.data import IGNORE, encode_batch, set_pixel_budget
from firm_assets.critics.recipe import (
    NOT_IN_VERSION,
    PAPER_RECIPE,
    CriticTrainingConfig,
    effective_recipe,
    launch_identity,
    version_recipe,
)
from firm_assets.critics.scoring import CriticScorer, GenQuery
from firm_assets.critics.train import accumulation_windows, training_model, window_loss
from resources.chat import ChatRequest, Decoding, ImagePart
from resources.profiles import get_profile
from resources.tiny_models import VL_NAME
from resources.transformers_backend import TransformersBackend


def test_the_defaults_are_llama_factorys() -> None:
    """LLaMA-Factory's finetuning_args.py / model_args.py defaults (FIRM-Reward ships no SFT config)."""
    assert PAPER_RECIPE["freeze_vision_tower"] is True
    assert PAPER_RECIPE["freeze_multi_modal_projector"] is True
    assert (PAPER_RECIPE["image_max_pixels"], PAPER_RECIPE["image_min_pixels"]) == (589_824, 1_024)


def test_a_bad_pixel_budget_or_a_lora_that_would_train_the_tower_is_refused() -> None:
    with pytest.raises(ValueError, match="image_min_pixels <= image_max_pixels"):
        effective_recipe({}, CriticTrainingConfig(image_min_pixels=4096, image_max_pixels=1024))
    with pytest.raises(ValueError, match="language model only"):
        effective_recipe({}, CriticTrainingConfig(method="lora", freeze_vision_tower=False))


def test_only_settings_that_change_the_weights_enter_the_version() -> None:
    base = version_recipe(effective_recipe({}, CriticTrainingConfig()))
    assert not set(NOT_IN_VERSION) & set(base)
    for key, value in {
        "checkpoint_every": 7,
        "eval_every": 3,
        "dataloader_workers": 0,
        "gradient_checkpointing": False,
    }.items():
        assert version_recipe(effective_recipe({}, CriticTrainingConfig(**{key: value}))) == base, key
    for key, value in {
        "learning_rate": 2e-5,
        "image_max_pixels": 512 * 512,
        "freeze_vision_tower": False,
        "seed": 1,
    }.items():
        assert version_recipe(effective_recipe({}, CriticTrainingConfig(**{key: value}))) != base, key


def test_the_launch_enters_the_version_and_other_settings_do_not_move_it() -> None:
    """Two processes double the global batch: the launch is part of what a critic version hashes."""
    single = launch_identity(CriticTrainingConfig())
    assert single == launch_identity(CriticTrainingConfig(checkpoint_every=7, learning_rate=2e-5))
    ddp = launch_identity(CriticTrainingConfig(accelerate_config="ddp_cpu_2proc"))
    fsdp2 = launch_identity(CriticTrainingConfig(accelerate_config="fsdp2_cpu_2proc"))
    torchrun = launch_identity(CriticTrainingConfig(launcher=["torchrun", "--nproc-per-node", "2", "-m"]))
    assert len({json.dumps(i, sort_keys=True) for i in (single, ddp, fsdp2, torchrun)}) == 4


def _logits(rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_the_loss_is_the_mean_over_the_accumulated_batchs_target_tokens() -> None:
    """Two micro-batches of one update over a 4-token vocabulary. A: one target token under uniform
    logits, cross-entropy ln 4 = 2 ln 2. B: three target tokens whose logit ln 3 against three zeros
    gives p = 3 / 6, cross-entropy ln 2 each. Over the 4 target tokens: (2 + 3) ln 2 / 4 = 1.25 ln 2;
    averaging per micro-batch would give (2 ln 2 + ln 2) / 2 = 1.5 ln 2."""
    ln3 = math.log(3)
    a_logits = _logits([[[0, 0, 0, 0], [0, 0, 0, 0]]])  # position 0 predicts position 1
    a_labels = torch.tensor([[IGNORE, 2]])
    b_logits = _logits([[[ln3, 0, 0, 0]] * 4])
    b_labels = torch.tensor([[IGNORE, 0, 0, 0]])
    window = [{"labels": a_labels}, {"labels": b_labels}]
    targets = torch.tensor(4)
    assert sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in window) == 4
    total = window_loss(a_logits, a_labels, targets) + window_loss(b_logits, b_labels, targets)
    assert total.item() == pytest.approx(1.25 * math.log(2), rel=1e-6)
    assert total.item() != pytest.approx(1.5 * math.log(2), rel=1e-3)


def test_accumulation_windows_keep_the_last_short_one() -> None:
    assert [len(w) for w in accumulation_windows(iter(range(7)), 3)] == [3, 3, 1]


def test_a_training_forward_keeps_no_cache_and_trains_no_vision(tiny_models) -> None:
    base = str(tiny_models[VL_NAME])
    recipe = {**PAPER_RECIPE, "method": "full"}
    model = training_model(base, recipe, torch.float32)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).past_key_values is None
    # the control: the model as it loads builds a cache in the same forward
    plain = type(model).from_pretrained(base)
    assert plain(input_ids=ids, attention_mask=torch.ones_like(ids)).past_key_values is not None

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".visual." not in name for name in trainable)
    assert (
        any(name.startswith("model.language_model.") for name in trainable) and "lm_head.weight" in trainable
    )
    tower_only = training_model(base, {**recipe, "freeze_multi_modal_projector": False}, torch.float32)
    opened = {name for name, p in tower_only.named_parameters() if p.requires_grad} - trainable
    assert opened and all(name.startswith("model.visual.merger.") for name in opened)


def test_a_critic_sees_images_at_the_size_it_was_trained_on(tmp_path: Path, tiny_models) -> None:
    """A critic trained under a 2048-pixel budget (below the processor's own 4096) is served and
    benched with the same image grid its training batches had; the untrained base, whose processor
    knows no such budget, sees a larger grid (the control)."""
    from test_train import _dataset, _params

    base = tiny_models[VL_NAME]
    dataset = _dataset(tmp_path / "exports")
    params = _params(tmp_path, base, dataset, epochs=1, image_max_pixels=2048)
    run_summary(train_critic(params))
    critic = tmp_path / "critic"
    image = Image.new("RGB", (96, 64), "red")
    image_path = tmp_path / "wide.png"
    image.save(image_path)

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(base)
    set_pixel_budget(processor, 2048, PAPER_RECIPE["image_min_pixels"])
    item = {
        "request": ChatRequest(user=(ImagePart(image_path, ""), "Score it.")),
        "target": "5",
        "images": [image_path],
    }
    trained_grid = encode_batch(processor, [item])["image_grid_thw"].tolist()

    def seen_grids(backend: TransformersBackend) -> list:
        grids = []
        backend.net.model.visual.register_forward_pre_hook(
            lambda _m, args, kwargs: grids.append(
                kwargs.get("grid_thw", args[1] if len(args) > 1 else None).tolist()
            ),
            with_kwargs=True,
        )
        return grids

    served = CriticScorer.load(str(critic), max_new_tokens=4)
    grids = seen_grids(served.backend)
    served.score_gen([GenQuery(image, "a red image")], mode="parsed")
    assert grids and all(grid == trained_grid for grid in grids)

    benched = TransformersBackend(str(critic))
    grids = seen_grids(benched)
    benched.generate([item["request"]], Decoding(max_new_tokens=2))
    assert grids == [trained_grid]

    untrained = TransformersBackend(str(base))
    grids = seen_grids(untrained)
    untrained.generate([item["request"]], Decoding(max_new_tokens=2))
    assert grids and grids[0] != trained_grid


def test_the_demo_critics_checkpoint_often_enough_that_a_kill_resumes() -> None:
    """A demo critic makes 40-72 updates (4 epochs of its tiny dataset); the default of 200 would
    never checkpoint one."""
    recipe = effective_recipe(get_profile("cpu-tiny").critic.recipe, CriticTrainingConfig())
    assert recipe["checkpoint_every"] == 10 and PAPER_RECIPE["checkpoint_every"] == 200

"""The schedules and the sampler of DiffusionNFT against the references (NVlabs/DiffusionNFT
`scripts/train_nft_sd3.py` `return_decay`, `flow_grpo/ema.py`, `flow_grpo/diffusers_patch/solver.py`):
hand-computed values and parity on a fixed toy velocity field."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from peft import LoraConfig, get_peft_model

from firm_assets.rl.nft.adapters import adapter_params, blend_adapter, ema_of, update_ema
from firm_assets.rl.nft.config import NFTConfig, rollout_decay
from firm_assets.rl.nft.sampling import solve


def nft_config(**changes: object) -> NFTConfig:
    values: dict = {
        "task": "gen",
        "pipeline_path": "unused",
        "steps": 1,
        "prompts_per_step": 1,
        "group_size": 2,
        "sampling_steps": 2,
        "size": 32,
        "learning_rate": 1e-3,
    }
    return NFTConfig(**(values | changes))


def test_the_defaults_are_the_references() -> None:
    config = nft_config()
    assert (config.old_decay_rate, config.old_decay_max, config.old_decay_flat) == (0.001, 0.5, 0)
    assert (config.ema_decay, config.nft_beta, config.base_penalty) == (0.9, 1.0, 1e-4)
    assert (config.lora_rank, config.lora_alpha, config.grad_clip, config.advantage_clip) == (
        32,
        64,
        1.0,
        5.0,
    )
    assert config.solver == "dpm_solver_2"


def test_rollout_decay_is_on_policy_at_the_start_and_capped() -> None:
    config = nft_config()  # decay_type 1: min(0.001 * s, 0.5)
    assert [rollout_decay(config, s) for s in (0, 1, 250, 500, 1000)] == pytest.approx(
        [0.0, 0.001, 0.25, 0.5, 0.5]
    )
    slow = nft_config(old_decay_rate=0.0075, old_decay_max=0.999, old_decay_flat=75)  # decay_type 2
    assert [rollout_decay(slow, s) for s in (10, 75, 100, 300)] == pytest.approx([0.0, 0.0, 0.1875, 0.999])


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(1, 1, bias=False)


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _Block()


def _toy_adapters():
    lora = LoraConfig(r=1, lora_alpha=1, target_modules=["to_q"])
    model = get_peft_model(_Toy(), lora, adapter_name="default")
    model.add_adapter("ema", lora)
    blend_adapter(model, target="ema", source="default", decay=0.0)
    return model


def _b(model, adapter: str) -> torch.nn.Parameter:
    (param,) = [p for name, p in adapter_params(model, adapter).items() if "lora_B" in name]
    return param


def test_ema_warms_up_as_the_reference_and_resumes_mid_way() -> None:
    config = nft_config()
    model = _toy_adapters()
    ema = ema_of(model, config, updates_done=0)
    # min((1 + s) / (10 + s), 0.9) at update s: 2/11, 3/12, then 0.5 at s = 8 and the cap from s = 81
    assert [ema.get_decay(s) for s in (1, 2, 8, 80, 81, 500)] == pytest.approx(
        [2 / 11, 3 / 12, 0.5, 81 / 90, 0.9, 0.9]
    )
    expected = 0.0
    for s, trained in enumerate((1.0, 2.0, 2.0), start=1):
        with torch.no_grad():
            _b(model, "default").fill_(trained)
        update_ema(ema, model)
        decay = min((1 + s) / (10 + s), 0.9)
        expected = decay * expected + (1 - decay) * trained
        assert float(_b(model, "ema")) == pytest.approx(expected)
    # a resumed run picks the warm-up up where it stopped: update 4 blends with decay 5/14
    resumed = ema_of(model, config, updates_done=3)
    with torch.no_grad():
        _b(model, "default").fill_(4.0)
    update_ema(resumed, model)
    assert float(_b(model, "ema")) == pytest.approx(5 / 14 * expected + 9 / 14 * 4.0)


# --- the sampler on a fixed toy velocity field ---------------------------------------------------

SIGMAS = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
START = torch.tensor([[0.8, -1.2, 0.3]])


def toy_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A fixed field that is not a straight flow, so first and second order differ."""
    return 0.7 * x + 1.3 * float(sigma) ** 2 - 0.4


def reference_dpm2(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DiffusionNFT's deterministic `dpm_step` with order 2, written out: first order (DDIM) at the
    first and the last step, the multistep second-order update in between."""
    x = x.double()
    previous = None
    n = len(sigmas) - 1
    for i in range(n):
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        x0 = x - s * toy_velocity(x, sigmas[i]).double()
        if i == 0 or i == n - 1:
            x = (1 - t) * x0 + t * (x - (1 - s) * x0) / s
        else:
            s1 = float(sigmas[i - 1])

            def lam(sig: float) -> float:
                return math.log(1 - sig) - math.log(sig) if sig < 1 else -math.inf

            h, h0 = lam(t) - lam(s), lam(s) - lam(s1)
            d1 = (h / h0) * (x0 - previous)
            x = (t / s) * x - (1 - t) * (math.exp(-h) - 1) * x0 - 0.5 * (1 - t) * (math.exp(-h) - 1) * d1
        previous = x0
    return x


def test_dpm_solver_matches_the_reference_update() -> None:
    ours = solve(toy_velocity, START, SIGMAS, "dpm_solver_2")
    torch.testing.assert_close(ours.double(), reference_dpm2(START, SIGMAS), rtol=1e-5, atol=1e-6)
    euler = solve(toy_velocity, START, SIGMAS, "euler")
    assert (ours - euler).abs().max() > 1e-3  # the orders differ on this field


def test_dpm_solver_matches_diffusers_stock_flow_schedule() -> None:
    stock = DPMSolverMultistepScheduler(
        solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    stock.set_timesteps(6)
    x = START.clone()
    for i, timestep in enumerate(stock.timesteps):
        x = stock.step(toy_velocity(x, stock.sigmas[i]), timestep, x, return_dict=False)[0]
    torch.testing.assert_close(solve(toy_velocity, START, stock.sigmas, "dpm_solver_2"), x)


def test_euler_by_hand_and_both_solvers_exact_on_a_single_point() -> None:
    halves = torch.tensor([1.0, 0.5, 0.0])
    # v = x: x <- x - 0.5 x twice
    torch.testing.assert_close(solve(lambda x, s: x, START, halves, "euler"), 0.25 * START)
    target = torch.tensor([[0.25, -0.5, 1.0]])
    # the flow to one point: x0 prediction x - sigma v is the point itself at every step
    to_point = lambda x, s: (x - (1 - float(s)) * target) / float(s) - target  # noqa: E731
    for solver in ("euler", "dpm_solver_2"):
        torch.testing.assert_close(solve(to_point, START, SIGMAS, solver), target)

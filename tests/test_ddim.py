import math

import pytest
import torch

from lib_smooth.backend import cond_cat
from lib_smooth.ddim import ddim_step, ddim_timesteps, guided_eps, invert, level, model_output_to_eps, sample

from helpers import CountingBackend

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0).float()


def test_timesteps_are_the_leading_sd_grid():
    assert ddim_timesteps(50)[:3] == [981, 961, 941]
    assert ddim_timesteps(50)[-1] == 1
    assert ddim_timesteps(10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert ddim_timesteps(1) == [1]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(0)


def test_sd_schedule_values():
    # Stable Diffusion's scaled-linear schedule: ᾱ_0 = 1 − 0.00085, ᾱ_999 ≈ 0.00466.
    assert level(ALPHAS, None) == pytest.approx(0.99915, abs=1e-6)
    assert level(ALPHAS, 999) == pytest.approx(0.0046635, rel=1e-3)


def test_ddim_step_is_its_own_inverse_for_fixed_eps():
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    up = ddim_step(x, eps, 0.9, 0.2)
    assert torch.allclose(ddim_step(up, eps, 0.2, 0.9), x, atol=1e-5)
    # by hand: x0 = (x − √0.1 ε)/√0.9, then √0.2·x0 + √0.8·ε
    x0 = (x - math.sqrt(0.1) * eps) / math.sqrt(0.9)
    assert torch.allclose(up, math.sqrt(0.2) * x0 + math.sqrt(0.8) * eps, atol=1e-6)


def test_v_prediction_converts_to_eps():
    x0, eps, alpha = torch.randn(3, 4), torch.randn(3, 4), 0.37
    x_t = alpha**0.5 * x0 + (1 - alpha) ** 0.5 * eps
    v = alpha**0.5 * eps - (1 - alpha) ** 0.5 * x0
    assert torch.allclose(model_output_to_eps(v, x_t, alpha, "v"), eps, atol=1e-6)
    assert model_output_to_eps(eps, x_t, alpha, "eps") is eps
    with pytest.raises(ValueError):
        model_output_to_eps(v, x_t, alpha, "x0")


def oracle_for_point(x0_star):
    """The exact ε of a data distribution concentrated on one point: the DDIM path is then exact."""

    def eps_fn(x, t, index):
        a = float(ALPHAS[t])
        return (x - a**0.5 * x0_star) / (1 - a) ** 0.5

    return eps_fn


def test_sampling_and_inversion_are_exact_for_a_point_distribution():
    x0_star, x_T = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    steps = 20
    a_T, a_0 = level(ALPHAS, ddim_timesteps(steps)[0]), level(ALPHAS, None)
    eps = (x_T - a_T**0.5 * x0_star) / (1 - a_T) ** 0.5  # stays constant along the path
    out = sample(oracle_for_point(x0_star), x_T, ALPHAS, steps)
    assert torch.allclose(out, a_0**0.5 * x0_star + (1 - a_0) ** 0.5 * eps, atol=1e-4)


def test_inversion_retraces_sampling_when_eps_does_not_depend_on_x():
    # Inversion assumes ε(x_{t−1}, t) = ε(x_t, t); with an ε that ignores x the assumption holds and
    # inversion must undo sampling to rounding error.
    fixed = torch.randn(1, 4, 8, 8)
    steps, x_T = 20, torch.randn(1, 4, 8, 8)
    eps_fn = lambda x, t, index: fixed  # noqa: E731
    x_0 = sample(eps_fn, x_T, ALPHAS, steps)
    back, trajectory = invert(eps_fn, x_0, ALPHAS, steps, return_trajectory=True)
    assert torch.allclose(back, x_T, atol=1e-4)
    assert len(trajectory) == steps + 1 and torch.equal(trajectory[0], x_0.float()) and torch.equal(trajectory[-1], back)


class Affine:
    """A stand-in backend whose UNet output is known: 0.5·x + the conditioning's first value."""

    parameterization = "eps"
    alphas_cumprod = ALPHAS

    def __init__(self):
        self.batches = []

    def unet(self, x, t, cond):
        self.batches.append(x.shape[0])
        return 0.5 * x + cond[:, :1, :1].reshape(-1, 1, 1, 1)


def test_classifier_free_guidance_formula_and_single_call():
    backend, x = Affine(), torch.randn(2, 4, 8, 8)
    cond, uncond = torch.full((1, 3, 5), 2.0), torch.full((1, 3, 5), -1.0)
    eps = guided_eps(backend, cond, uncond, guidance=3.0)(x, 501, 0)
    # ε_u + 3(ε_c − ε_u) = 0.5x − 1 + 3·(2 − (−1))
    assert torch.allclose(eps, 0.5 * x - 1 + 9)
    assert backend.batches == [4]  # both branches in one call
    eps1 = guided_eps(backend, cond, uncond, guidance=1.0)(x, 501, 0)
    assert torch.allclose(eps1, 0.5 * x + 2) and backend.batches[-1] == 2  # w = 1: conditional only


def test_per_step_conditionings_follow_the_step_index():
    backend, x = Affine(), torch.zeros(1, 4, 2, 2)
    conds = [torch.full((1, 1, 1), float(i)) for i in range(3)]
    fn = guided_eps(backend, conds, None, 1.0)
    assert [float(fn(x, 1, i).mean()) for i in range(3)] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_inversion_then_sampling_reconstructs_and_improves_with_steps(tiny_models, arch):
    backend = tiny_models(arch)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = backend.encode_prompts(["a red circle"], 64, 64)
    errors = []
    for steps in (10, 50):
        fn = guided_eps(backend, cond, None, 1.0)
        rec = sample(fn, invert(fn, x0, backend.alphas_cumprod, steps), backend.alphas_cumprod, steps)
        errors.append(float((rec - x0).norm() / x0.norm()))
    assert errors[1] < 0.05, errors
    assert errors[1] < 0.6 * errors[0], errors


def test_batched_sampling_equals_one_by_one(sd1):
    backend = CountingBackend(sd1)
    x_T = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = cond_cat([sd1.encode_prompts([p], 64, 64) for p in ("a cat", "a dog", "a car")])
    uncond = sd1.encode_prompts([""], 64, 64)
    together = sample(guided_eps(backend, cond, uncond, 7.5), x_T, sd1.alphas_cumprod, 5)
    assert backend.calls == 5 and backend.samples == 5 * 6
    alone = torch.cat([sample(guided_eps(sd1, cond[i : i + 1], uncond, 7.5), x_T[i : i + 1], sd1.alphas_cumprod, 5) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-4)

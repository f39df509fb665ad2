import math
import warnings

import pytest
import torch

from lib_smooth.regularizer import (
    StepwiseVariationRegularizer,
    UnsupportedTrainingSetting,
    check_options,
    check_training_settings,
    default_direction,
    double_backward_attention,
    predict_x0,
    variation_norm,
    variation_norm_fd,
)

SHAPE = (2, 3, 2)  # C, H, W of the toy latents
D = 12


class ToyUNet(torch.nn.Module):
    """A small non-linear per-sample map standing in for the UNet: out = tanh(W·x + b)·2 + t/1000."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(D, D, generator=g, dtype=torch.float64) / D**0.5)
        self.bias = torch.nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, x, t):
        flat = x.flatten(1)
        return (2 * torch.tanh(flat @ self.weight.T + self.bias) + t[:, None] / 1000).view_as(x)


def brute_force_r(model, x_t, t, alphas, parameterization, y):
    """(1 − ᾱ)·‖Jᵀy‖ with J from torch.autograd.functional.jacobian, one sample at a time."""
    values = []
    for i in range(x_t.shape[0]):
        a = alphas[i : i + 1]
        f = lambda x: predict_x0(model(x, t[i : i + 1]), x, a, parameterization).flatten()  # noqa: E731
        jacobian = torch.autograd.functional.jacobian(f, x_t[i : i + 1]).reshape(D, D)
        values.append((1 - a[0]) * (jacobian.T @ y[i].flatten()).norm())
    return torch.stack(values)


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_variation_norm_matches_a_brute_force_jacobian(parameterization):
    model = ToyUNet()
    t = torch.tensor([10, 400, 990])
    alphas = torch.tensor([0.98, 0.45, 0.006], dtype=torch.float64)
    x_t = torch.randn(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    y = default_direction(x_t.detach(), torch.Generator().manual_seed(1))
    x0 = predict_x0(model(x_t, t), x_t, alphas, parameterization)
    r = variation_norm(x0, x_t, alphas, y)
    assert torch.allclose(r, brute_force_r(model, x_t.detach(), t, alphas, parameterization, y), rtol=1e-10)


def test_variation_norm_equals_the_official_gradient_wrt_noise():
    # official: r = ‖∇_ε (x̂₀ · √(1−ᾱ)·y)‖ with x_t built from a leaf ε
    model = ToyUNet(seed=2)
    alphas, t = torch.tensor([0.7, 0.1], dtype=torch.float64), torch.tensor([300, 800])
    x0_clean = torch.randn(2, *SHAPE, dtype=torch.float64)
    eps = torch.randn(2, *SHAPE, dtype=torch.float64, requires_grad=True)
    a = alphas.view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0_clean + (1 - a).sqrt() * eps
    y = default_direction(x0_clean, torch.Generator().manual_seed(3))
    x0 = predict_x0(model(x_t, t), x_t, alphas, "eps")
    (grad_eps,) = torch.autograd.grad((x0 * (1 - a).sqrt() * y).sum(), eps, retain_graph=True)
    ours = variation_norm(x0, x_t, alphas, y)
    assert torch.allclose(ours, grad_eps.flatten(1).norm(dim=1), rtol=1e-10)


def test_default_direction_has_norm_near_one():
    y = default_direction(torch.zeros(64, 4, 64, 64))
    assert y.flatten(1).norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.01)


def run(reg, model, x_t, t, alphas, y, **kwargs):
    x_t = x_t.clone().requires_grad_(True)
    x0 = predict_x0(model(x_t, t), x_t, alphas, "eps")
    return reg(x0, x_t, alphas, y, **kwargs)


def test_moving_target_and_penalty_by_hand():
    model, reg = ToyUNet(), StepwiseVariationRegularizer(weight=2.0, ema_decay=0.5)
    t, alphas = torch.tensor([100, 600]), torch.tensor([0.9, 0.3], dtype=torch.float64)
    a = 0.0
    for step in range(3):
        x_t = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        y = default_direction(x_t, torch.Generator().manual_seed(10 + step))
        r = brute_force_r(model, x_t, t, alphas, "eps", y)
        a = a + 0.5 * (r.mean().item() - a)
        penalty, stats = run(reg, model, x_t, t, alphas, y)
        assert stats["target_a"] == pytest.approx(a, rel=1e-10)
        assert stats["variation_mean"] == pytest.approx(r.mean().item(), rel=1e-10)
        assert penalty.item() == pytest.approx(2.0 * ((r - a) ** 2).mean().item(), rel=1e-10)
    assert reg.updates == 3


def test_target_update_stays_in_the_graph():
    """The penalty's gradient includes the path through a = a_prev + decay·(mean r − a_prev), as the
    official code's; a detached target gives a measurably different gradient, which this would catch."""
    model, t = ToyUNet(seed=1), torch.tensor([100, 500, 900])
    alphas = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    x_t = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    y = default_direction(x_t.detach(), torch.Generator().manual_seed(3))
    reg = StepwiseVariationRegularizer(ema_decay=0.5)
    reg.target_a = 0.05
    penalty, _ = reg(predict_x0(model(x_t, t), x_t, alphas, "eps"), x_t, alphas, direction=y)
    (by_regularizer,) = torch.autograd.grad(penalty, model.weight)

    def by_hand(detached: bool) -> torch.Tensor:
        r = variation_norm(predict_x0(model(x_t, t), x_t, alphas, "eps"), x_t, alphas, y)
        a = 0.05 + 0.5 * (r.mean() - 0.05)
        return torch.autograd.grad(((r - (a.detach() if detached else a)) ** 2).mean(), model.weight)[0]

    assert torch.allclose(by_regularizer, by_hand(detached=False), rtol=1e-9)
    assert not torch.allclose(by_regularizer, by_hand(detached=True), rtol=1e-2)


def test_lazy_interval_runs_every_kth_call_with_k_times_the_weight():
    model, reg = ToyUNet(), StepwiseVariationRegularizer(weight=1.0, interval=3, ema_decay=0.01)
    t, alphas = torch.tensor([100, 600]), torch.tensor([0.9, 0.3], dtype=torch.float64)
    x_t = torch.randn(2, *SHAPE, dtype=torch.float64)
    y = default_direction(x_t, torch.Generator().manual_seed(0))
    r = brute_force_r(model, x_t, t, alphas, "eps", y)
    dues = []
    for call in range(7):
        dues.append(reg.due)
        if not reg.due:
            # no graph needed: a skipped call must not differentiate anything
            penalty, stats = reg(torch.zeros(2, *SHAPE), torch.zeros(2, *SHAPE), alphas)
            assert penalty.item() == 0.0 and stats["penalty"] == 0.0
            continue
        a_before = reg.target_a
        penalty, stats = run(reg, model, x_t, t, alphas, y)
        a = a_before + (1 - 0.99**3) * (r.mean().item() - a_before)  # the per-step decay over the 3 steps
        assert penalty.item() == pytest.approx(3 * ((r - a) ** 2).mean().item(), rel=1e-10)
    assert dues == [True, False, False, True, False, False, True]
    assert reg.state_dict() == {"target_a": reg.target_a, "calls": 7, "updates": 3}


def test_a_lazy_runs_target_follows_r_as_many_steps_behind_as_an_every_step_runs():
    model = ToyUNet()
    t, alphas = torch.tensor([100, 600]), torch.tensor([0.9, 0.3], dtype=torch.float64)
    x_t = torch.randn(2, *SHAPE, dtype=torch.float64)
    y = default_direction(x_t, torch.Generator().manual_seed(0))
    mean_r = brute_force_r(model, x_t, t, alphas, "eps", y).mean().item()
    every, lazy = StepwiseVariationRegularizer(ema_decay=0.1), StepwiseVariationRegularizer(ema_decay=0.1, interval=4)
    for _ in range(12):  # the same batch each step: a constant r
        for reg in (every, lazy):
            if reg.due:
                run(reg, model, x_t, t, alphas, y)
            else:
                reg(torch.zeros(2, *SHAPE), torch.zeros(2, *SHAPE), alphas)
    # from a = 0, twelve steps of decay 0.1 leave (1 − 0.9¹²) of the way to r: 72 %, for both runs
    assert every.target_a == pytest.approx((1 - 0.9**12) * mean_r, rel=1e-9)
    assert lazy.target_a == pytest.approx(every.target_a, rel=1e-9) and lazy.state_dict()["updates"] == 3


def test_batch_shrink_uses_the_first_samples_through_an_extra_forward():
    model = ToyUNet()
    t, alphas = torch.tensor([100, 600, 900, 50]), torch.tensor([0.9, 0.3, 0.02, 0.95], dtype=torch.float64)
    x_t = torch.randn(4, *SHAPE, dtype=torch.float64)
    y = default_direction(x_t, torch.Generator().manual_seed(5))
    seen = []

    def x0_fn(latents, indices):
        seen.append(indices.tolist())
        return predict_x0(model(latents, t[indices]), latents, alphas[indices], "eps")

    reg = StepwiseVariationRegularizer(batch_shrink=3, ema_decay=1.0)
    penalty, stats = run(reg, model, x_t, t, alphas, y, x0_fn=x0_fn)
    r = brute_force_r(model, x_t, t, alphas, "eps", y)[:2]  # ⌈4/3⌉ = 2 samples
    assert seen == [[0, 1]]
    assert stats["variation_mean"] == pytest.approx(r.mean().item(), rel=1e-10)
    with pytest.raises(ValueError, match="needs x0_fn"):
        run(StepwiseVariationRegularizer(batch_shrink=2), model, x_t, t, alphas, y)


def test_state_round_trip():
    reg = StepwiseVariationRegularizer(interval=2)
    reg.target_a, reg.calls, reg.updates = 0.123, 9, 5
    other = StepwiseVariationRegularizer(interval=2)
    other.load_state_dict(reg.state_dict())
    assert other.state_dict() == {"target_a": 0.123, "calls": 9, "updates": 5} and other.due is False


def test_finite_difference_jvp_is_exact_for_a_linear_model():
    weight = torch.randn(D, D, dtype=torch.float64)
    x0_of = lambda x: (x.flatten(1) @ weight.T).view_as(x)  # noqa: E731
    x_t = torch.randn(2, *SHAPE, dtype=torch.float64)
    u = default_direction(x_t, torch.Generator().manual_seed(7))
    alphas = torch.tensor([0.8, 0.2], dtype=torch.float64)
    r = variation_norm_fd(lambda x, idx: x0_of(x), x0_of(x_t), x_t, alphas, torch.arange(2), u, step=1e-3)
    expected = (1 - alphas) * (u.flatten(1) @ weight.T).norm(dim=1)
    assert torch.allclose(r, expected, rtol=1e-8)


def test_vjp_and_jvp_statistics_agree_in_expectation():
    """E‖Jᵀy‖² = E‖Ju‖² = ‖J‖²_F / n for directions drawn as default_direction draws them: the two
    methods of the regularizer estimate the same quantity (a linear x̂₀ = J·x makes the difference exact)."""
    g = torch.Generator().manual_seed(0)
    jacobian = torch.randn(D, D, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, D, dtype=torch.float64)
    samples, alphas = 20000, torch.full((20000,), 0.5, dtype=torch.float64)
    x_t = torch.randn(samples, *SHAPE, generator=g, dtype=torch.float64, requires_grad=True)
    x0_fn = lambda latents, idx: (latents.flatten(1) @ jacobian.T).view_as(latents)  # noqa: E731
    x0 = x0_fn(x_t, None)
    vjp = variation_norm(x0, x_t, alphas, default_direction(x0.detach(), torch.Generator().manual_seed(1)), create_graph=False)
    jvp = variation_norm_fd(x0_fn, x0.detach(), x_t.detach(), alphas, None, default_direction(x0.detach(), torch.Generator().manual_seed(2)))
    target = 0.25 * jacobian.pow(2).sum() / D  # (1 − ᾱ)² · ‖J‖²_F / n
    assert vjp.pow(2).mean().item() == pytest.approx(target.item(), rel=0.03)
    assert jvp.pow(2).mean().item() == pytest.approx(target.item(), rel=0.03)


def test_jvp_fd_method_trains_without_double_backward():
    model = ToyUNet()
    t, alphas = torch.tensor([100, 600]), torch.tensor([0.9, 0.3], dtype=torch.float64)
    x_t = torch.randn(2, *SHAPE, dtype=torch.float64)
    x0_fn = lambda latents, idx: predict_x0(model(latents, t[idx]), latents, alphas[idx], "eps")  # noqa: E731
    reg = StepwiseVariationRegularizer(method="jvp_fd", ema_decay=1.0)
    x0 = x0_fn(x_t, torch.arange(2))  # no requires_grad on x_t: no double backward possible
    penalty, stats = reg(x0, x_t, alphas, x0_fn=x0_fn)
    penalty.backward()
    assert model.weight.grad.abs().sum() > 0 and math.isfinite(stats["variation_mean"])


@pytest.mark.parametrize(
    "options, message",
    [
        ((-1.0, 0.01, 1, 1, "vjp"), "smooth_lambda"),
        ((1.0, 0.0, 1, 1, "vjp"), "smooth_ema_decay"),
        ((1.0, 0.01, 0, 1, "vjp"), "smooth_interval"),
        ((1.0, 0.01, 1, 1.5, "vjp"), "smooth_batch_shrink"),
        ((1.0, 0.01, 1, 1, "hvp"), "smooth_method"),
    ],
)
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        check_options(*options)


def test_settings_that_break_double_backward_are_refused():
    for flag in ("xformers", "mem_eff_attn", "torch_compile", "reentrant_checkpointing"):
        with pytest.raises(UnsupportedTrainingSetting, match="double backward"):
            check_training_settings(**{flag: True})
        check_training_settings(method="jvp_fd", **{flag: True})  # no double backward needed
    with pytest.warns(UserWarning, match="bf16"):
        check_training_settings(mixed_precision="fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_settings(mixed_precision="bf16")


def test_math_attention_supports_double_backward():
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    with double_backward_attention():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        (grad,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
        (second,) = torch.autograd.grad(grad.pow(2).sum(), q)
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def _distributed_worker(rank: int, rendezvous: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        # x̂₀ = s·x_t with s = rank + 1: r = (1 − ᾱ)·s·‖y‖, so each process sees a different batch mean
        x_t = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)
        y = torch.full((2, 4), 0.5, dtype=torch.float64)  # ‖y‖ = 1
        alphas = torch.tensor([0.5, 0.5], dtype=torch.float64)
        reg = StepwiseVariationRegularizer(ema_decay=1.0)
        _, stats = reg((rank + 1.0) * x_t, x_t, alphas, y)
        results[rank] = stats["target_a"]
    finally:
        dist.destroy_process_group()


def test_moving_target_uses_the_mean_over_processes(tmp_path):
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(str(tmp_path / "rendezvous"), results), nprocs=2, join=True)
    # local means 0.5 and 1.0: both processes must move a to their average, 0.75
    assert results[0] == pytest.approx(0.75) and results[1] == pytest.approx(0.75)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_jvp_fd_under_autocast_measures_the_model_not_rounding(dtype):
    """Under CPU autocast the shifted forward runs in `dtype`; the finite difference must still give
    (1 − ᾱ)·‖J u‖ of the exact Jacobian, within 3 %. With the fixed step 1e-2 each of the latents' elements
    moved by less than the dtype's spacing near 1 and the difference was rounding noise."""
    big = 4096  # elements per sample, as a 32 × 32 latent of 4 channels: per-element shift 1e-2/64
    weight = torch.randn(big, big, generator=torch.Generator().manual_seed(4)) / big**0.5
    t, alphas = torch.tensor([200, 700]), torch.tensor([0.8, 0.2])
    x_t = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    u = default_direction(x_t, torch.Generator().manual_seed(6))

    def x0_fn(latents, idx):
        flat = latents.flatten(1)
        out = (2 * torch.tanh(flat @ weight.T) + t[idx, None] / 1000).view_as(latents)
        return predict_x0(out.float(), latents, alphas[idx], "eps")

    _, exact = torch.func.jvp(lambda x: x0_fn(x, torch.arange(2)), (x_t,), (u,))
    expected = (1 - alphas) * exact.flatten(1).norm(dim=1)
    with torch.autocast("cpu", dtype=dtype):
        x0 = x0_fn(x_t, torch.arange(2))
        r = variation_norm_fd(x0_fn, x0, x_t, alphas, torch.arange(2), u)
    assert torch.allclose(r, expected, rtol=0.03), (r, expected)


def test_fd_step_grows_only_where_the_precision_needs_it():
    from lib_smooth.regularizer import fd_step_for

    latents = torch.ones(1, 4, 64, 64)  # RMS 1, n = 16,384: √n = 128
    assert fd_step_for(latents, torch.float32, 1e-2) == 1e-2
    assert fd_step_for(latents, torch.bfloat16, 1e-2) == pytest.approx(4 * 2**-7 * 128)
    assert fd_step_for(latents, torch.float16, 1e-2) == pytest.approx(4 * 2**-10 * 128)


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(method="jvp_fd", dropout=True), "network dropout"),
        (dict(zero_terminal_snr_eps=True), "zero_terminal_snr with an ε-prediction model"),
        (dict(sdpa_with_checkpointing=True), "sdpa together with gradient checkpointing"),
    ],
)
def test_settings_that_break_the_regularizer_are_refused(setting, message):
    with pytest.raises(UnsupportedTrainingSetting, match=message):
        check_training_settings(**setting)
    check_training_settings(method="vjp", dropout=True)  # one backward through one mask: fine


def test_warm_start_takes_the_first_batchs_mean_variation_as_the_target():
    model, t = ToyUNet(seed=4), torch.tensor([100, 600])
    alphas = torch.tensor([0.9, 0.3], dtype=torch.float64)
    x_t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64, requires_grad=True)
    y = default_direction(x_t.detach(), torch.Generator().manual_seed(8))
    r = brute_force_r(model, x_t.detach(), t, alphas, "eps", y)
    x0 = lambda: predict_x0(model(x_t, t), x_t, alphas, "eps")  # noqa: E731
    cold, warm = StepwiseVariationRegularizer(ema_decay=0.01), StepwiseVariationRegularizer(ema_decay=0.01, warm_start=True)
    cold_penalty, cold_stats = cold(x0(), x_t, alphas, direction=y)
    warm_penalty, warm_stats = warm(x0(), x_t, alphas, direction=y)
    assert cold_stats["target_a"] == pytest.approx(0.01 * float(r.mean()))  # official: a ← 0 + 0.01·(mean r − 0)
    assert warm_stats["target_a"] == pytest.approx(float(r.mean()))  # warm: a starts at mean r and stays there
    assert float(warm_penalty) == pytest.approx(float(((r - r.mean()) ** 2).mean()))  # the spread of r alone
    assert float(cold_penalty) > float(warm_penalty)
    # later steps are the ordinary EMA from there
    _, second = warm(x0(), x_t, alphas, direction=y)
    assert second["target_a"] == pytest.approx(float(r.mean()))
    assert warm.settings()["warm_start"] == "True" and cold.settings()["warm_start"] == "False"

"""Smooth Diffusion's step-wise variation regularizer (paper Sec. 3.2–3.3, Eq. 9–10), trainer-agnostic.

For a training sample at timestep t with noisy latent x_t = √ᾱ·x₀ + √(1−ᾱ)·ε, the one-step prediction
x̂₀(x_t) has Jacobian J = ∂x̂₀/∂x_t. With a random output direction y (standard normal / √(C·H·W)),

    r = (1 − ᾱ) · ‖Jᵀ y‖₂

is the official code's statistic ‖∇_ε(x̂₀ · √(1−ᾱ)·y)‖₂, because ∂x_t/∂ε = √(1−ᾱ). The regularizer
keeps a moving target a (one scalar for all timesteps, starting at 0) and penalises (r − a)²:

    a ← a + decay·(mean r − a)          (kept in the graph, as the official code does)
    penalty = weight · mean((r − a)²)

The decay is per training step: a lazy run that regularizes every k-th step updates a by
1 − (1 − decay)^k each time, so its target follows r as many steps behind as an every-step run's.

This pushes the Jacobian towards a scaled orthogonal map: equal input steps give equal output steps.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from .errors import SmoothDiffusionError

METHODS = ("vjp", "jvp_fd")
X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (noisy latents of a subset, their indices) → x̂₀


class UnsupportedTrainingSetting(SmoothDiffusionError):
    """A training option that breaks or silently corrupts the regularizer's second-order gradients."""


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def predict_x0(model_output: torch.Tensor, noisy_latents: torch.Tensor, alphas_cumprod_t: torch.Tensor, parameterization: str) -> torch.Tensor:
    """One-step x̂₀ from the UNet output: eps: (x_t − √(1−ᾱ)·ε̂)/√ᾱ; v: √ᾱ·x_t − √(1−ᾱ)·v̂."""
    a = _per_sample(alphas_cumprod_t, noisy_latents)
    if parameterization == "eps":
        return (noisy_latents - (1 - a).sqrt() * model_output) / a.sqrt()
    if parameterization == "v":
        return a.sqrt() * noisy_latents - (1 - a).sqrt() * model_output
    raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")


def default_direction(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """y ~ N(0, I) / √(C·H·W) per sample: norm ≈ 1, as in the official code."""
    noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return noise / like[0].numel() ** 0.5


def variation_norm(
    x0_pred: torch.Tensor,
    noisy_latents: torch.Tensor,
    alphas_cumprod_t: torch.Tensor,
    direction: Optional[torch.Tensor] = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """r_i = (1 − ᾱ_i)·‖J_iᵀ y_i‖₂ per sample, by one vector-Jacobian product (double backward when trained).

    Samples must be independent in the model (true for UNets: GroupNorm is per sample), so the gradient
    of Σ_i x̂₀_i·y_i splits into the per-sample products.
    """
    y = default_direction(x0_pred) if direction is None else direction
    (grad,) = torch.autograd.grad((x0_pred * y).sum(), noisy_latents, create_graph=create_graph)
    return (1 - alphas_cumprod_t.to(grad)) * grad.flatten(1).norm(dim=1)


def variation_norm_fd(
    x0_fn: X0Fn,
    x0_pred: torch.Tensor,
    noisy_latents: torch.Tensor,
    alphas_cumprod_t: torch.Tensor,
    indices: torch.Tensor,
    direction: Optional[torch.Tensor] = None,
    step: float = 1e-2,
) -> torch.Tensor:
    """Finite-difference estimate of (1 − ᾱ)·‖J u‖₂ along an input direction u (drawn like y).

    J u ≈ (x̂₀(x_t + h·u) − x̂₀(x_t)) / h costs one extra forward and is trained by ordinary backprop (no
    double backward). It measures J along an input direction u instead of Jᵀ along an output direction
    y; for y, u drawn the same way, E‖Jᵀy‖² = E‖Ju‖² = ‖J‖²_F/(C·H·W), so both estimate the RMS singular
    value and push towards the same orthogonality, but per sample they differ and the difference
    quotient adds an O(h) error: an approximation of the VJP statistic, not the same number. In bf16 /
    fp16 the step is widened to what the precision resolves (:func:`fd_step_for`).
    """
    u = default_direction(x0_pred) if direction is None else direction
    step = fd_step_for(noisy_latents, compute_dtype(x0_pred), step)
    shifted = x0_fn(noisy_latents + step * u, indices)
    jvp = (shifted - x0_pred) / step
    return (1 - alphas_cumprod_t.to(jvp)) * jvp.flatten(1).norm(dim=1)


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    """The precision the model's forward runs in: autocast's dtype when autocast is on, else the tensor's."""
    device = like.device.type
    try:
        enabled = torch.is_autocast_enabled(device)  # torch ≥ 2.4
    except TypeError:
        enabled = torch.is_autocast_enabled() if device == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return like.dtype
    try:
        return torch.get_autocast_dtype(device)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if device == "cuda" else torch.get_autocast_cpu_dtype()


FD_SPACINGS = 4  # the input shift per element, in units of the compute dtype's spacing near the latents' RMS


def fd_step_for(noisy_latents: torch.Tensor, dtype: torch.dtype, step: float) -> float:
    """A difference step that survives the cast of the shifted latents to `dtype`.

    u has unit norm, so each of the n = C·H·W elements moves by about h/√n: at 512 px (n = 16,384) a step
    of 1e-2 moves it by 8e-5, below bf16's spacing near 1 (7.8e-3) and fp16's (9.8e-4), and the
    difference would be rounding noise. The step grows to FD_SPACINGS spacings per element (bf16 at 512
    px: h ≈ 4, 3 % of the latent's norm; fp32 keeps 1e-2).
    """
    spacing = torch.finfo(dtype).eps * float(noisy_latents.detach().float().pow(2).mean().sqrt())
    return max(step, FD_SPACINGS * spacing * noisy_latents[0].numel() ** 0.5)


def _global_mean(local_mean: torch.Tensor) -> torch.Tensor:
    """The mean over all processes when torch.distributed runs, with the gradient of the local mean."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local_mean
    total = local_mean.detach().clone()
    torch.distributed.all_reduce(total)
    return local_mean + (total / torch.distributed.get_world_size() - local_mean.detach())


class StepwiseVariationRegularizer:
    """Stateful regularizer: the moving target a, lazy intervals and batch shrinking.

    Call it once per training micro-step with the step's x̂₀ (computed from `noisy_latents` that
    require grad) and the per-sample ᾱ_t. With `interval=k` only every k-th call regularizes, with
    weight·k so the average strength is unchanged (StyleGAN2's lazy regularization), and moves the target
    by the decay compounded over the k steps (StyleGAN2 keeps the decay per update, so its target lags k
    times as many steps: in a short run it never settles); check `due`
    before the UNet call to skip preparing for it. `batch_shrink=s` regularizes the first ⌈B/s⌉
    samples, through `x0_fn` (an extra forward on that subset) so the saving is real.
    """

    def __init__(
        self,
        weight: float = 1.0,
        ema_decay: float = 0.01,
        interval: int = 1,
        batch_shrink: int = 1,
        method: str = "vjp",
        fd_step: float = 1e-2,
        warm_start: bool = False,
    ):
        check_options(weight, ema_decay, interval, batch_shrink, method)
        self.weight, self.ema_decay, self.interval, self.batch_shrink, self.method, self.fd_step = (
            weight,
            ema_decay,
            interval,
            batch_shrink,
            method,
            fd_step,
        )
        # The official code starts a at 0, and a needs ≈ 1/decay updates to reach the mean r: until then
        # a < mean r and the penalty shrinks every step instead of evening the steps out. A warm start
        # takes the first regularized batch's mean r as a's starting value, so the run is settled from the
        # first step (an option; the default is the official cold start).
        self.warm_start = warm_start
        self.target_a = 0.0
        self.calls = 0
        self.updates = 0

    @property
    def due(self) -> bool:
        """Whether the next call regularizes (lazy regularization skips the others)."""
        return self.weight > 0 and self.calls % self.interval == 0

    @property
    def update_rate(self) -> float:
        """How far one update moves a towards the mean r: the per-step decay compounded over the interval."""
        return 1 - (1 - self.ema_decay) ** self.interval

    @property
    def needs_x0_fn(self) -> bool:
        return self.method == "jvp_fd" or self.batch_shrink > 1

    def __call__(
        self,
        x0_pred: torch.Tensor,
        noisy_latents: torch.Tensor,
        alphas_cumprod_t: torch.Tensor,
        direction: Optional[torch.Tensor] = None,
        x0_fn: Optional[X0Fn] = None,
    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        if not self.due:
            return x0_pred.new_zeros(()), self.skip_step()
        self.calls += 1
        if self.needs_x0_fn and x0_fn is None:
            raise ValueError(f"method={self.method!r} with batch_shrink={self.batch_shrink} needs x0_fn (an extra forward on a subset)")
        r = self.variation(x0_pred, noisy_latents, alphas_cumprod_t, direction, x0_fn)
        mean_r = _global_mean(r.mean())
        if self.warm_start and self.updates == 0:
            self.target_a = float(mean_r.detach())
        a = self.target_a + self.update_rate * (mean_r - self.target_a)
        penalty = self.weight * self.interval * ((r - a) ** 2).mean()
        self.target_a = float(a.detach())
        self.updates += 1
        return penalty, {"variation_mean": float(mean_r.detach()), "target_a": self.target_a, "penalty": float(penalty.detach())}

    def skip_step(self) -> Dict[str, float]:
        """Count a micro-step that does not regularize (lazy interval) without touching any graph."""
        self.calls += 1
        return {"variation_mean": float("nan"), "target_a": self.target_a, "penalty": 0.0}

    def variation(
        self,
        x0_pred: torch.Tensor,
        noisy_latents: torch.Tensor,
        alphas_cumprod_t: torch.Tensor,
        direction: Optional[torch.Tensor],
        x0_fn: Optional[X0Fn],
    ) -> torch.Tensor:
        """r for the first ⌈B/s⌉ samples by the configured method."""
        count = -(-x0_pred.shape[0] // self.batch_shrink)
        indices = torch.arange(count, device=x0_pred.device)
        a_t = alphas_cumprod_t[:count]
        y = None if direction is None else direction[:count]
        if self.method == "jvp_fd":
            return variation_norm_fd(x0_fn, x0_pred[:count], noisy_latents[:count].detach(), a_t, indices, y, self.fd_step)
        if self.batch_shrink == 1:
            return variation_norm(x0_pred, noisy_latents, a_t, y)
        subset = noisy_latents[:count].detach().requires_grad_(True)
        return variation_norm(x0_fn(subset, indices), subset, a_t, y)

    def state_dict(self) -> Dict[str, float]:
        return {"target_a": self.target_a, "calls": self.calls, "updates": self.updates}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.target_a, self.calls, self.updates = float(state["target_a"]), int(state["calls"]), int(state["updates"])

    def settings(self) -> Dict[str, str]:
        """The settings as strings, e.g. for LoRA metadata."""
        return {
            "lambda": str(self.weight),
            "ema_decay": str(self.ema_decay),
            "interval": str(self.interval),
            "batch_shrink": str(self.batch_shrink),
            "method": self.method,
            "warm_start": str(self.warm_start),
        }


def check_options(weight: float, ema_decay: float, interval: int, batch_shrink: int, method: str) -> None:
    """Refuse invalid regularizer options with a message naming the option and the allowed values."""
    problems = []
    if not weight >= 0:
        problems.append(f"smooth_lambda must be ≥ 0 (got {weight})")
    if not 0 < ema_decay <= 1:
        problems.append(f"smooth_ema_decay must be in (0, 1] (got {ema_decay})")
    if int(interval) != interval or interval < 1:
        problems.append(f"smooth_interval must be an integer ≥ 1 (got {interval})")
    if int(batch_shrink) != batch_shrink or batch_shrink < 1:
        problems.append(f"smooth_batch_shrink must be an integer ≥ 1 (got {batch_shrink})")
    if method not in METHODS:
        problems.append(f"smooth_method must be one of {', '.join(METHODS)} (got {method!r})")
    if problems:
        raise ValueError("; ".join(problems))


def check_training_settings(
    method: str = "vjp",
    xformers: bool = False,
    mem_eff_attn: bool = False,
    torch_compile: bool = False,
    reentrant_checkpointing: bool = False,
    mixed_precision: str = "no",
    sdpa_with_checkpointing: bool = False,
    dropout: bool = False,
    zero_terminal_snr_eps: bool = False,
) -> None:
    """Refuse settings that break double backward (needed by method "vjp") or the regularizer itself; warn about fp16."""
    if zero_terminal_snr_eps:
        # x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ with ᾱ_999 ≈ 0 (zero terminal SNR): x̂₀ and r are scaled by ≈ 4.5e3 near t = 999
        raise UnsupportedTrainingSetting(
            "zero_terminal_snr with an ε-prediction model: x̂₀ divides by √ᾱ, which is ≈ 0 at the last "
            "timestep, and the penalty explodes; use a v-prediction model (--v_parameterization) or drop zero_terminal_snr"
        )
    if method == "jvp_fd" and dropout:
        raise UnsupportedTrainingSetting(
            "network dropout (network_dropout, rank_dropout, module_dropout) draws new masks for the second "
            "forward of method jvp_fd, so the difference measures the masks, not the model; drop it or use method vjp"
        )
    if method == "vjp":
        refused = {
            # the regularized forward runs under the math attention kernel, but a checkpoint's recompute in
            # backward runs outside that context with SDPA's fused kernel: torch raises CheckpointError
            "sdpa together with gradient checkpointing": (
                sdpa_with_checkpointing,
                "the checkpoint's recompute runs another attention kernel "
                "than the regularized forward (CheckpointError); keep gradient checkpointing and drop sdpa",
            ),
            "xformers": (xformers, "xformers attention has no double backward"),
            "mem_eff_attn": (mem_eff_attn, "memory-efficient attention gives silently wrong second-order gradients"),
            "torch_compile": (torch_compile, "torch.compile does not support double backward"),
            "gradient checkpointing (reentrant)": (
                reentrant_checkpointing,
                "reentrant checkpointing drops the second-order graph; use non-reentrant checkpointing",
            ),
        }
        bad = [f"{name}: {why}" for name, (on, why) in refused.items() if on]
        if bad:
            raise UnsupportedTrainingSetting(
                "the Smooth Diffusion regularizer (method vjp) needs double backward; turn off "
                + "; ".join(bad)
                + " (or use --smooth_method jvp_fd, which needs no double backward)"
            )
    if mixed_precision == "fp16":
        warnings.warn("fp16 mixed precision can overflow in the regularizer's second-order gradients; bf16 is recommended", stacklevel=2)


@contextlib.contextmanager
def double_backward_attention() -> Iterator[None]:
    """Force PyTorch's math scaled-dot-product attention, the backend with a double backward.

    torch ≥ 2.3 has torch.nn.attention.sdpa_kernel; torch 2.1/2.2 only torch.backends.cuda.sdp_kernel
    (CUDA kernels; on CPU those versions use the math path anyway).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False):
            yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield

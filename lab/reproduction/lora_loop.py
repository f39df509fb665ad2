"""A minimal LoRA fine-tuning loop with the Smooth Diffusion regularizer, for models sd-scripts cannot load.

sd-scripts only builds the published full-size architectures, so the reproduction on the embedded
shapes model trains here. The regularizer is the real trainer's, piece for piece: the same
:class:`StepwiseVariationRegularizer` (moving target a, penalty, options check), the same
:func:`predict_x0` and the same forced math attention; only the LoRA layers and the loop are local.
LoRA placement and initialisation follow the official code (notes/paper.md §2): to_q, to_k, to_v and
to_out.0 of every UNet attention layer, down ~ N(0, 1/rank²) (std 1/rank), up = 0, scale 1.
The result is a kohya LoRA file, so it is evaluated exactly as a user would load it.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from torch import nn

from lib_smooth.lora_apply import unet_layout
from lib_smooth.lora_formats import LoraLayer, LoraNetwork, UnetLayout, kohya_name
from lib_smooth.regularizer import StepwiseVariationRegularizer, check_training_settings, double_backward_attention, predict_x0, variation_norm

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class LoraRun:
    weight: float  # λ; 0 is a plain LoRA
    rank: int = 8
    seed: int = 0
    steps: int = 400
    batch: int = 16
    learning_rate: float = 1e-3
    ema_decay: float = 0.01
    warm_start: bool = False  # start the target a at the first batch's mean r (the official code: at 0)
    interval: int = 1  # regularize every k-th step only, at k× the weight (the trainers' cheap setting)
    method: str = "vjp"  # or "jvp_fd": the finite-difference JVP, one extra forward instead of a double backward
    lr_schedule: str = "constant"  # or "cosine": kohya's lr_scheduler of that name, no warm-up: from the rate to ≈ 0 at the last step

    @property
    def name(self) -> str:
        cheap = (f"_{self.method}" if self.method != "vjp" else "") + (f"_interval{self.interval}" if self.interval != 1 else "")
        schedule = f"_{self.lr_schedule}" if self.lr_schedule != "constant" else ""
        return f"lambda{self.weight:g}_rank{self.rank}_seed{self.seed}" + ("_warm" if self.warm_start else "") + cheap + schedule

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based) under the run's schedule."""
        if self.lr_schedule == "constant":
            return self.learning_rate
        if self.lr_schedule == "cosine":
            return self.learning_rate * (1 + math.cos(math.pi * step / self.steps)) / 2
        raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}: use 'constant' or 'cosine'")


class TrainedLora(NamedTuple):
    network: LoraNetwork
    log: List[dict]
    seconds: float  # training time, summed over the sittings of a resumed run


class LoraLinear(nn.Module):
    """base(x) + up(down(x)): a frozen linear layer plus a trainable rank-r update."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) / rank)
        self.up = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.t()) @ self.up.t()


def add_lora(unet: nn.Module, rank: int) -> Dict[str, LoraLinear]:
    """Wrap the attention projections of `unet` in place; returns diffusers module path → layer."""
    layers = {}
    attention = [path for path, _ in unet.named_modules() if path.endswith(("attn1", "attn2"))]
    for path in attention:
        for target in TARGETS:
            parent_name, _, child = f"{path}.{target}".rpartition(".")
            parent = unet.get_submodule(parent_name)
            layers[f"{path}.{target}"] = LoraLinear(getattr(parent, child), rank)
            setattr(parent, child, layers[f"{path}.{target}"])
    return layers


def lora_parameters(layers: Dict[str, LoraLinear]) -> List[nn.Parameter]:
    return [p for layer in layers.values() for p in (layer.down, layer.up)]


def to_network(layers: Dict[str, LoraLinear], run: LoraRun, metadata: Dict[str, str], layout: UnetLayout) -> LoraNetwork:
    """kohya names for the UNet's own layout: ldm names on shapes-sd1, which the WebUI would misread otherwise."""
    return LoraNetwork(
        {
            kohya_name("unet", path, "sd1", layout): LoraLayer(layer.down.detach().clone(), layer.up.detach().clone(), float(run.rank))
            for path, layer in layers.items()
        },
        "kohya",
        {**metadata, **run_metadata(run)},
    )


def run_metadata(run: LoraRun) -> Dict[str, str]:
    """The kohya trainer's metadata keys for the same settings (ss_smooth_* as train/smooth_common.py writes)."""
    return {
        "ss_smooth_lambda": str(run.weight),
        "ss_smooth_ema_decay": str(run.ema_decay),
        "ss_smooth_interval": str(run.interval),
        "ss_smooth_batch_shrink": "1",
        "ss_smooth_method": run.method,
        "ss_smooth_warm_start": str(run.warm_start),
        "ss_smooth_regularizer": "lib_smooth step-wise variation (Smooth Diffusion, CVPR 2024)",
        "ss_network_alpha": str(run.rank),
        "ss_learning_rate": str(run.learning_rate),
        "ss_max_train_steps": str(run.steps),
        "ss_seed": str(run.seed),
        "ss_total_batch_size": str(run.batch),
        "ss_training_comment": "trained by lab/reproduction/lora_loop.py (the LoRA loop for models sd-scripts cannot load)",
    }


def train_lora(
    unet: nn.Module,
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    contexts: torch.Tensor,
    caption_of: torch.Tensor,
    run: LoraRun,
    log_every: int = 10,
    on_step: Optional[Callable[[int], None]] = None,
    checkpoint: Optional[Path] = None,
    checkpoint_every: int = 500,
) -> TrainedLora:
    """Fine-tune a LoRA on (latent, caption) pairs: latents[i] has caption contexts[caption_of[i]].

    The loss is the plain ε-prediction MSE with uniform timesteps, plus the regularizer's penalty
    when λ > 0. The log records every `log_every` steps the loss, the batch's mean variation r and
    the target a; for λ = 0 r is measured too (without training on it), as the plain reference.
    With `checkpoint`, the whole state (LoRA, optimizer, target a, random generator, log, time) is
    saved there every `checkpoint_every` steps and picked up again by the next call, so a run of hours
    can be trained over several sittings and ends as the uninterrupted run would.
    """
    check_training_settings(run.method)
    torch.manual_seed(run.seed)
    model = copy.deepcopy(unet).train().requires_grad_(False)
    layers = add_lora(model, run.rank)
    parameters = lora_parameters(layers)
    optimizer = torch.optim.AdamW(parameters, lr=run.learning_rate, weight_decay=1e-2)  # the official run's AdamW defaults
    regularizer = (
        StepwiseVariationRegularizer(weight=run.weight, ema_decay=run.ema_decay, warm_start=run.warm_start, interval=run.interval, method=run.method)
        if run.weight > 0
        else None
    )
    log: List[dict] = []
    first_step, seconds_before = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        first_step, log, seconds_before = resume(checkpoint, run, parameters, optimizer, regularizer)
    start = time.perf_counter()
    with double_backward_attention():
        for step in range(first_step, run.steps):
            for group in optimizer.param_groups:
                group["lr"] = run.learning_rate_at(step)
            index = torch.randint(len(latents), (run.batch,))
            x0, context = latents[index], contexts[caption_of[index]]
            t = torch.randint(len(alphas_cumprod), (run.batch,))
            a_t = alphas_cumprod[t]
            noise = torch.randn_like(x0)
            noisy = a_t.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a_t).sqrt().view(-1, 1, 1, 1) * noise
            # the input's graph only where a vjp is taken: the regularized steps, or the plain run's logged r
            needs_input_grad = (regularizer.due and run.method == "vjp") if regularizer is not None else step % log_every == 0
            noisy.requires_grad_(needs_input_grad)
            prediction = model(noisy, t, encoder_hidden_states=context).sample
            loss = (prediction - noise).pow(2).mean()
            x0_pred = predict_x0(prediction, noisy, a_t, "eps")
            stats: dict = {}
            if regularizer is not None:

                def x0_fn(subset, indices, t=t, context=context, a_t=a_t):  # a second forward, for jvp_fd
                    return predict_x0(model(subset, t[indices], encoder_hidden_states=context[indices]).sample, subset, a_t[indices], "eps")

                penalty, stats = regularizer(x0_pred, noisy, a_t, x0_fn=x0_fn)
                total = loss + penalty
            else:
                total = loss
                if step % log_every == 0:
                    # create_graph keeps the step's graph alive for the backward below; the value is only logged
                    stats = {"variation_mean": float(variation_norm(x0_pred, noisy, a_t).mean())}
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            if step % log_every == 0 or step == run.steps - 1:
                log.append({"step": step, "loss": loss.item(), **{k: v for k, v in stats.items() if not math.isnan(v)}})
            if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < run.steps:
                save_checkpoint(checkpoint, run, step + 1, parameters, optimizer, regularizer, log, seconds_before + time.perf_counter() - start)
            if on_step:
                on_step(step)
    network = to_network(layers, run, {"ss_base_model_version": "sd_v1"}, unet_layout(unet))
    return TrainedLora(network, log, seconds_before + time.perf_counter() - start)


def save_checkpoint(
    checkpoint: Path,
    run: LoraRun,
    next_step: int,
    parameters: List[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    regularizer: Optional[StepwiseVariationRegularizer],
    log: List[dict],
    seconds: float,
) -> None:
    """Everything `resume` needs to go on at `next_step` exactly as the run would have."""
    state = {
        "run": asdict(run),
        "next_step": next_step,
        "parameters": [p.detach().clone() for p in parameters],
        "optimizer": optimizer.state_dict(),
        "regularizer": regularizer.state_dict() if regularizer is not None else {},
        "rng": torch.get_rng_state(),
        "log": log,
        "seconds": seconds,
    }
    torch.save(state, f"{checkpoint}.partial")
    os.replace(f"{checkpoint}.partial", checkpoint)  # never a half-written checkpoint


def resume(
    checkpoint: Path,
    run: LoraRun,
    parameters: List[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    regularizer: Optional[StepwiseVariationRegularizer],
) -> tuple[int, List[dict], float]:
    """Load a checkpoint of `run` into the training state; returns (next step, log so far, seconds so far)."""
    state, settings = torch.load(checkpoint), asdict(run)
    if state["run"] != settings:
        changed = sorted(k for k in state["run"] if state["run"][k] != settings.get(k))
        raise ValueError(f"{checkpoint} is a checkpoint of another run ({', '.join(changed)} differ): use the same settings or delete it")
    with torch.no_grad():
        for parameter, saved in zip(parameters, state["parameters"], strict=True):
            parameter.copy_(saved)
    optimizer.load_state_dict(state["optimizer"])
    if regularizer is not None:
        regularizer.load_state_dict(state["regularizer"])
    torch.set_rng_state(state["rng"])
    return state["next_step"], state["log"], state["seconds"]


def settling_step(trajectory: List[dict], key: str = "target_a", tolerance: float = 0.05) -> Optional[int]:
    """The first logged step after which `key` stays within `tolerance` (relative) of its final value."""
    values = [(entry["step"], entry[key]) for entry in trajectory if key in entry]
    if not values:
        return None
    final = values[-1][1]
    settled = None
    for step, value in values:
        if abs(value - final) <= tolerance * abs(final):
            settled = step if settled is None else settled
        else:
            settled = None
    return settled


def settled_fraction(trajectory: list, tolerance: float = 0.05) -> float | None:
    """Share of the logged steps at which the target a is within `tolerance` of its final value."""
    values = [entry["target_a"] for entry in trajectory if "target_a" in entry]
    if not values:
        return None
    final = values[-1]
    return sum(abs(value - final) <= tolerance * abs(final) for value in values) / len(values)

"""What the SD1/2 and SDXL Smooth-LoRA trainers share: finding sd-scripts, the options, and a mixin
that adds lib_smooth's step-wise variation regularizer to sd-scripts' network training loop.

The mixin overrides five sd-scripts hooks and leaves the loop itself alone:
- `load_target_model`: registers the regularizer's state with accelerate (saved by --save_state,
  restored by --resume; not when resuming a plain train_network.py state, which has none) and, for SDXL
  with gradient checkpointing, switches to non-reentrant checkpointing;
- `call_unet`: when a training step regularizes, runs the UNet with double-backward-capable attention
  and keeps (x_t, t, output); never for validation (no grad) or the DOP prior call (`indices`);
- `process_batch`: adds the penalty to sd-scripts' loss; sd-scripts' own backward trains both;
- `generate_step_logs`: `reg/*` step logs, once per regularized step;
- `update_metadata`: `ss_smooth_*` LoRA metadata.
All the math is in `lib_smooth.regularizer`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lib_smooth.regularizer import (  # noqa: E402 - needs the repository root on sys.path
    METHODS,
    StepwiseVariationRegularizer,
    check_options,
    check_training_settings,
    double_backward_attention,
    predict_x0,
)

NEEDED_VERSION = "v0.10.0 or newer (v0.10.1 recommended)"
GET_SD_SCRIPTS = "git clone https://github.com/kohya-ss/sd-scripts && cd sd-scripts && git checkout v0.10.1 && pip install -r requirements.txt"


class SdScriptsNotFound(SystemExit):
    """Raised (as a clean exit with a message) when sd-scripts cannot be found or is too old."""


def locate_sd_scripts(argv: Sequence[str]) -> Path:
    """sd-scripts' folder from --sd_scripts_dir, else $SD_SCRIPTS_DIR, else the working directory."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--sd_scripts_dir")
    known, _ = pre.parse_known_args(argv)
    candidates = [known.sd_scripts_dir, os.environ.get("SD_SCRIPTS_DIR"), os.getcwd()]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train_network.py").is_file() and (Path(candidate) / "library").is_dir():
            return Path(candidate).resolve()
    tried = ", ".join(str(c) for c in candidates if c)
    raise SdScriptsNotFound(
        f"error: kohya-ss/sd-scripts not found (looked in: {tried}). Pass --sd_scripts_dir DIR, set SD_SCRIPTS_DIR, "
        f"or run from inside a checkout. sd-scripts {NEEDED_VERSION} is needed: {GET_SD_SCRIPTS}"
    )


def import_sd_scripts(argv: Sequence[str], module: str):
    """Put sd-scripts on sys.path, import `module` (train_network / sdxl_train_network) and check the version."""
    root = locate_sd_scripts(argv)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    imported = __import__(module)
    trainer = getattr(imported, "SdxlNetworkTrainer", None) or imported.NetworkTrainer
    missing = [name for name in ("process_batch", "get_noise_pred_and_target", "call_unet") if not hasattr(trainer, name)]
    if missing:
        raise SdScriptsNotFound(
            f"error: the sd-scripts at {root} is too old (no {', '.join(missing)}): sd-scripts {NEEDED_VERSION} is needed: {GET_SD_SCRIPTS}"
        )
    return imported


def add_smooth_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Smooth Diffusion regularizer")
    group.add_argument("--sd_scripts_dir", default=None, help="kohya-ss/sd-scripts checkout (default: $SD_SCRIPTS_DIR or the working directory)")
    group.add_argument(
        "--smooth_lambda", type=float, default=1.0, help="weight λ of the step-wise variation regularizer (paper: 1; 0 trains a plain LoRA)"
    )
    group.add_argument("--smooth_ema_decay", type=float, default=0.01, help="decay of the moving target a per micro-step (official code: 0.01)")
    group.add_argument(
        "--smooth_warm_start",
        action="store_true",
        help="start the moving target a at the first regularized batch's mean variation instead of 0 (official: 0, which needs "
        "≈ 1/decay steps to settle)",
    )
    group.add_argument(
        "--smooth_interval", type=int, default=1, help="regularize every k-th micro-step with weight λ·k (lazy regularization; official: 1)"
    )
    group.add_argument(
        "--smooth_batch_shrink", type=int, default=1, help="regularize only the first ⌈B/s⌉ samples of a batch (extra forward on them)"
    )
    group.add_argument(
        "--smooth_method",
        default="vjp",
        choices=METHODS,
        help="vjp: exact Jacobianᵀ-vector product by double backward (official); "
        "jvp_fd: finite-difference Jacobian-vector product, no double backward (approximation)",
    )


def uses_network_dropout(args: argparse.Namespace) -> bool:
    """--network_dropout, or rank_dropout / module_dropout in --network_args, above 0."""
    if float(getattr(args, "network_dropout", None) or 0) > 0:
        return True
    for item in getattr(args, "network_args", None) or []:
        key, _, value = str(item).partition("=")
        if key.strip() in ("rank_dropout", "module_dropout", "dropout"):
            try:
                if float(value) > 0:
                    return True
            except ValueError:
                return True  # an unreadable value: sd-scripts will refuse it, do not guess
    return False


def validate_smooth_args(args: argparse.Namespace) -> None:
    """Check the regularizer options (TOML values skip argparse's type checks) before any model loads."""
    try:
        args.smooth_lambda = float(args.smooth_lambda)
        args.smooth_ema_decay = float(args.smooth_ema_decay)
        for name in ("smooth_interval", "smooth_batch_shrink"):
            value = getattr(args, name)
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError(f"{name} must be an integer (got {value!r})")
            setattr(args, name, int(float(value)))
        check_options(args.smooth_lambda, args.smooth_ema_decay, args.smooth_interval, args.smooth_batch_shrink, args.smooth_method)
        if args.smooth_lambda > 0:
            check_training_settings(
                method=args.smooth_method,
                xformers=bool(getattr(args, "xformers", False)),
                mem_eff_attn=bool(getattr(args, "mem_eff_attn", False)),
                torch_compile=bool(getattr(args, "torch_compile", False)),
                mixed_precision=str(getattr(args, "mixed_precision", "no")),
                sdpa_with_checkpointing=bool(getattr(args, "sdpa", False)) and bool(getattr(args, "gradient_checkpointing", False)),
                dropout=uses_network_dropout(args),
                zero_terminal_snr_eps=bool(getattr(args, "zero_terminal_snr", False)) and not bool(getattr(args, "v_parameterization", False)),
            )
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: invalid Smooth Diffusion option: {error}") from None
    except Exception as error:  # UnsupportedTrainingSetting
        raise SystemExit(f"error: {error}") from None


def _select(values, indices: List[int]):
    """Index a batch entry that may be a tensor or a list."""
    if hasattr(values, "index_select") and hasattr(values, "shape"):
        return values[indices]
    return [values[i] for i in indices]


class SmoothRegularizerMixin:
    """Mixed in before sd-scripts' NetworkTrainer / SdxlNetworkTrainer."""

    #: names of batch entries that hold one value per sample and must follow a subset (SDXL size conditioning)
    per_sample_batch_keys: Sequence[str] = ()

    def __init__(self):
        super().__init__()
        self.smooth: Optional[StepwiseVariationRegularizer] = None
        self._captured = None
        self._last_stats = {"variation_mean": float("nan"), "target_a": 0.0, "penalty": 0.0}

    def _regularizer(self, args) -> StepwiseVariationRegularizer:
        if self.smooth is None:
            self.smooth = StepwiseVariationRegularizer(
                args.smooth_lambda,
                args.smooth_ema_decay,
                args.smooth_interval,
                args.smooth_batch_shrink,
                args.smooth_method,
                warm_start=bool(getattr(args, "smooth_warm_start", False)),
            )
        return self.smooth

    # -- model loading: state registration and checkpointing mode ---------------------------------
    def load_target_model(self, args, weight_dtype, accelerator):
        loaded = super().load_target_model(args, weight_dtype, accelerator)
        resume = getattr(args, "resume", None)
        if resume and Path(resume).is_dir() and not (Path(resume) / "custom_checkpoint_0.pkl").exists():
            # a state saved by plain train_network.py: accelerate would look for a custom object it never saved
            warnings.warn(
                f"{resume} holds no Smooth Diffusion state (saved by plain train_network.py?): the moving target a "
                "starts again at 0, and states saved by this run will not hold it either",
                stacklevel=2,
            )
        else:
            accelerator.register_for_checkpointing(self._regularizer(args))
        return loaded

    # -- capturing the training UNet call ---------------------------------------------------------
    def call_unet(self, args, accelerator, unet, noisy_latents, timesteps, text_conds, batch, weight_dtype, **kwargs):
        reg = self._regularizer(args)
        capture = torch_grad_enabled() and kwargs.get("indices") is None and reg.due
        if not capture:
            return super().call_unet(args, accelerator, unet, noisy_latents, timesteps, text_conds, batch, weight_dtype, **kwargs)
        if reg.method == "vjp" and not noisy_latents.requires_grad and noisy_latents.grad_fn is None:
            noisy_latents.requires_grad_(True)  # a leaf: x_t is built without grad (text-encoder-only training)
        attention = double_backward_attention if reg.method == "vjp" else contextlib.nullcontext
        with attention():
            output = super().call_unet(args, accelerator, unet, noisy_latents, timesteps, text_conds, batch, weight_dtype, **kwargs)

        def x0_of_subset(latents, indices):
            idx = indices.tolist()
            sub_batch = dict(batch)
            for key in self.per_sample_batch_keys:
                sub_batch[key] = _select(batch[key], idx)
            with attention():
                out = super(SmoothRegularizerMixin, self).call_unet(
                    args, accelerator, unet, latents, timesteps[idx], [_select(c, idx) for c in text_conds], sub_batch, weight_dtype
                )
            return self._x0(args, out, latents, timesteps[idx])

        self._captured = (noisy_latents, timesteps, output, x0_of_subset)
        return output

    def _alphas(self, timesteps):
        return self._alphas_cumprod[timesteps.cpu()].to(timesteps.device)

    def _x0(self, args, output, noisy_latents, timesteps):
        parameterization = "v" if args.v_parameterization else "eps"
        return predict_x0(output.float(), noisy_latents.float(), self._alphas(timesteps), parameterization)

    # -- adding the penalty --------------------------------------------------------------------------
    def process_batch(
        self,
        batch,
        text_encoders,
        unet,
        network,
        vae,
        noise_scheduler,
        vae_dtype,
        weight_dtype,
        accelerator,
        args,
        text_encoding_strategy,
        tokenize_strategy,
        is_train=True,
        train_text_encoder=True,
        train_unet=True,
    ):
        self._alphas_cumprod = noise_scheduler.alphas_cumprod.detach().float().cpu()
        self._captured = None
        loss = super().process_batch(
            batch,
            text_encoders,
            unet,
            network,
            vae,
            noise_scheduler,
            vae_dtype,
            weight_dtype,
            accelerator,
            args,
            text_encoding_strategy,
            tokenize_strategy,
            is_train,
            train_text_encoder,
            train_unet,
        )
        if not is_train:
            return loss
        reg = self._regularizer(args)
        captured, self._captured = self._captured, None
        if captured is None:
            reg.skip_step()  # the last regularized step's values stay pending until they are logged once
            return loss
        noisy_latents, timesteps, output, x0_of_subset = captured
        x0 = self._x0(args, output, noisy_latents, timesteps)
        penalty, stats = reg(x0, noisy_latents, self._alphas(timesteps).float(), x0_fn=x0_of_subset)
        self._last_stats = stats
        return loss + penalty.to(loss.dtype)

    # -- logs, metadata --------------------------------------------------------------------------------
    def generate_step_logs(self, args, *rest, **kwargs):
        logs = super().generate_step_logs(args, *rest, **kwargs)
        if args.smooth_lambda > 0 and not math.isnan(self._last_stats["variation_mean"]):
            logs.update({f"reg/{key}": value for key, value in self._last_stats.items()})
            # logged once: steps that do not regularize (interval > 1) log no reg/* values instead of repeating these
            self._last_stats = {"variation_mean": float("nan"), "target_a": self._last_stats["target_a"], "penalty": 0.0}
        return logs

    def update_metadata(self, metadata, args):
        super().update_metadata(metadata, args)
        metadata.update({f"ss_smooth_{key}": value for key, value in self._regularizer(args).settings().items()})
        metadata["ss_smooth_regularizer"] = "lib_smooth step-wise variation (Smooth Diffusion, CVPR 2024)"


def torch_grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


def run(module: str, make_trainer: Callable[[object], object], argv: Optional[Sequence[str]] = None) -> None:
    """Parse sd-scripts' options plus ours (command line and --config_file TOML), validate, train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sd_scripts = import_sd_scripts(argv, module)
    from library import train_util

    parser = sd_scripts.setup_parser()
    add_smooth_arguments(parser)
    args = parser.parse_args(argv)
    train_util.verify_command_line_training_args(args)
    args = train_util.read_config_from_file(args, parser)
    validate_smooth_args(args)
    make_trainer(sd_scripts).train(args)

"""The trainer's glue, exercised against a stand-in for sd-scripts' NetworkTrainer (no sd-scripts needed)."""

import argparse
import contextlib
import math

import pytest
import torch

from lib_smooth.regularizer import predict_x0

from smooth_common import SdScriptsNotFound, SmoothRegularizerMixin, add_smooth_arguments, locate_sd_scripts, validate_smooth_args

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0).float()


class FakeAccelerator:
    def __init__(self):
        self.registered = []

    def register_for_checkpointing(self, obj):
        self.registered.append(obj)

    def autocast(self):
        return contextlib.nullcontext()


class FakeScheduler:
    alphas_cumprod = ALPHAS


class FakeBaseTrainer:
    """Mimics sd-scripts v0.10: process_batch → get_noise_pred_and_target → call_unet (+ a DOP call)."""

    def __init__(self):
        self.unet_calls = []

    def load_target_model(self, args, weight_dtype, accelerator):
        return "v1", None, None, None

    def call_unet(self, args, accelerator, unet, noisy_latents, timesteps, text_conds, batch, weight_dtype, **kwargs):
        self.unet_calls.append((noisy_latents.shape[0], kwargs.get("indices")))
        return unet(noisy_latents, timesteps, text_conds[0])

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
        latents, noise, timesteps = batch["latents"], batch["noise"], batch["timesteps"]
        a = noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).requires_grad_(train_unet and is_train)
        with torch.set_grad_enabled(is_train):
            pred = self.call_unet(args, accelerator, unet, noisy, timesteps, [batch["cond"]], batch, weight_dtype)
            if batch.get("dop"):
                with torch.no_grad():
                    self.call_unet(args, accelerator, unet, noisy, timesteps, [batch["cond"]], batch, weight_dtype, indices=[0])
            return ((pred - noise) ** 2).mean()

    def generate_step_logs(self, args, current_loss, avr_loss, *rest, **kwargs):
        return {"loss/current": current_loss}

    def update_metadata(self, metadata, args):
        metadata["ss_base"] = "yes"


class Trainer(SmoothRegularizerMixin, FakeBaseTrainer):
    pass


class ToyUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, t, cond):
        return torch.tanh(self.conv(x)) + cond.mean() + t.view(-1, 1, 1, 1) / 1000


def make_args(**overrides):
    parser = argparse.ArgumentParser()
    add_smooth_arguments(parser)
    args = parser.parse_args([])
    args.v_parameterization, args.xformers, args.mem_eff_attn, args.torch_compile, args.mixed_precision = False, False, False, False, "no"
    for key, value in overrides.items():
        setattr(args, key, value)
    validate_smooth_args(args)
    return args


def batch(seed=0, size=2, **extra):
    g = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(size, 4, 8, 8, generator=g),
        noise=torch.randn(size, 4, 8, 8, generator=g),
        timesteps=torch.tensor([100, 700, 300, 900][:size]),
        cond=torch.randn(size, 3, 5, generator=g),
        **extra,
    )


def step(trainer, args, unet, data, is_train=True):
    return trainer.process_batch(
        data, [], unet, None, None, FakeScheduler(), None, torch.float32, FakeAccelerator(), args, None, None, is_train=is_train
    )


def test_training_loss_is_base_plus_penalty():
    torch.manual_seed(0)
    unet, args = ToyUNet(), make_args(smooth_lambda=1.0, smooth_ema_decay=0.5)
    trainer, plain = Trainer(), FakeBaseTrainer()
    data = batch()
    base = step(plain, args, unet, data)
    torch.manual_seed(1)
    total = step(trainer, args, unet, data)
    stats = trainer._last_stats
    assert total.item() == pytest.approx(base.item() + stats["penalty"], rel=1e-6)
    assert stats["penalty"] > 0 and stats["target_a"] == pytest.approx(0.5 * stats["variation_mean"])
    # the regularizer reached the UNet weights through sd-scripts' single backward
    total.backward()
    assert unet.conv.weight.grad.abs().sum() > 0
    logs = trainer.generate_step_logs(args, 1.0, 1.0)
    assert logs["reg/penalty"] == stats["penalty"] and "reg/variation_mean" in logs and "reg/target_a" in logs


def test_penalty_matches_the_regularizer_on_the_captured_call():
    unet, args = ToyUNet(), make_args(smooth_ema_decay=1.0)
    trainer, data = Trainer(), batch(3)
    torch.manual_seed(5)
    step(trainer, args, unet, data)
    a = ALPHAS[data["timesteps"]].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * data["latents"] + (1 - a).sqrt() * data["noise"]).requires_grad_(True)
    x0 = predict_x0(unet(x_t, data["timesteps"], data["cond"]), x_t, ALPHAS[data["timesteps"]], "eps")
    torch.manual_seed(5)
    y = torch.randn(x0.shape) / x0[0].numel() ** 0.5
    (grad,) = torch.autograd.grad((x0 * y).sum(), x_t)
    r = (1 - ALPHAS[data["timesteps"]]) * grad.flatten(1).norm(dim=1)
    assert trainer._last_stats["variation_mean"] == pytest.approx(r.mean().item(), rel=1e-5)


def test_validation_and_dop_calls_are_not_regularized():
    unet, args, trainer = ToyUNet(), make_args(), Trainer()
    base = step(FakeBaseTrainer(), args, unet, batch(), is_train=False)
    assert step(trainer, args, unet, batch(), is_train=False).item() == pytest.approx(base.item())
    assert trainer.smooth.calls == 0  # validation does not count as a micro-step
    step(trainer, args, unet, batch(dop=True))
    assert trainer.unet_calls[-1] == (2, [0]) and trainer.smooth.updates == 1


def test_lazy_interval_skips_steps_and_counts_them():
    unet, args, trainer = ToyUNet(), make_args(smooth_interval=2), Trainer()
    plain = FakeBaseTrainer()
    losses = [(step(trainer, args, unet, batch(i)).item(), step(plain, args, unet, batch(i)).item()) for i in range(4)]
    assert [math.isclose(a, b, rel_tol=1e-6) for a, b in losses] == [False, True, False, True]
    assert trainer.smooth.state_dict()["calls"] == 4 and trainer.smooth.updates == 2


@pytest.mark.parametrize("method, shrink", [("jvp_fd", 1), ("vjp", 2)])
def test_subset_forward_for_jvp_and_batch_shrink(method, shrink):
    unet, args, trainer = ToyUNet(), make_args(smooth_method=method, smooth_batch_shrink=shrink), Trainer()
    total = step(trainer, args, unet, batch(size=4))
    extra = trainer.unet_calls[1:]
    assert extra == [(4 // shrink, None)]  # one extra forward on ⌈B/s⌉ samples
    assert math.isfinite(trainer._last_stats["variation_mean"]) and total.requires_grad


def test_state_registered_and_metadata_written():
    args, trainer, accelerator = make_args(smooth_lambda=0.5, smooth_interval=3), Trainer(), FakeAccelerator()
    trainer.load_target_model(args, torch.float32, accelerator)
    assert accelerator.registered == [trainer.smooth]
    metadata = {}
    trainer.update_metadata(metadata, args)
    assert metadata["ss_base"] == "yes" and metadata["ss_smooth_lambda"] == "0.5" and metadata["ss_smooth_interval"] == "3"
    assert metadata["ss_smooth_method"] == "vjp" and metadata["ss_smooth_ema_decay"] == "0.01"
    assert metadata["ss_smooth_warm_start"] == "False"
    assert Trainer()._regularizer(make_args(smooth_warm_start=True)).warm_start is True


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"smooth_interval": 0}, "smooth_interval"),
        ({"smooth_interval": "2.5"}, "smooth_interval must be an integer"),
        ({"smooth_lambda": "much"}, "invalid Smooth Diffusion option"),
        ({"smooth_method": "hvp"}, "smooth_method"),
        ({"xformers": True}, "xformers"),
        ({"mem_eff_attn": True}, "mem_eff_attn"),
        ({"torch_compile": True}, "torch.compile"),
        ({"sdpa": True, "gradient_checkpointing": True}, "sdpa together with gradient checkpointing"),
        ({"smooth_method": "jvp_fd", "network_args": ["rank_dropout=0.1"]}, "network dropout"),
        ({"smooth_method": "jvp_fd", "network_dropout": 0.1}, "network dropout"),
        ({"zero_terminal_snr": True}, "zero_terminal_snr with an ε-prediction model"),
    ],
)
def test_invalid_options_stop_before_training(overrides, message):
    with pytest.raises(SystemExit, match=message):
        make_args(**overrides)


def test_settings_the_regularizer_can_live_with_pass():
    make_args(sdpa=True)  # sdpa alone: the regularized forward switches to the math kernel
    make_args(zero_terminal_snr=True, v_parameterization=True)  # v-models keep x̂₀ finite at the last timestep
    make_args(smooth_method="jvp_fd", network_args=["rank_dropout=0", "conv_dim=4"])


def test_lazy_steps_log_no_stale_regularizer_values():
    unet, args, trainer = ToyUNet(), make_args(smooth_interval=2), Trainer()
    logged = []
    for i in range(4):
        step(trainer, args, unet, batch(i))
        logged.append(sorted(k for k in trainer.generate_step_logs(args, 1.0, 1.0) if k.startswith("reg/")))
    assert logged == [["reg/penalty", "reg/target_a", "reg/variation_mean"], [], ["reg/penalty", "reg/target_a", "reg/variation_mean"], []]


def test_a_plain_train_network_state_resumes_with_a_fresh_target(tmp_path):
    plain_state = tmp_path / "plain-state"
    plain_state.mkdir()
    args, trainer, accelerator = make_args(resume=str(plain_state)), Trainer(), FakeAccelerator()
    with pytest.warns(UserWarning, match="holds no Smooth Diffusion state"):
        trainer.load_target_model(args, torch.float32, accelerator)
    assert accelerator.registered == []  # accelerate would otherwise fail looking for custom_checkpoint_0.pkl
    (plain_state / "custom_checkpoint_0.pkl").write_bytes(b"")
    trainer.load_target_model(args, torch.float32, accelerator)
    assert accelerator.registered == [trainer.smooth]


def test_toml_strings_are_coerced():
    args = make_args(smooth_lambda="0.1", smooth_interval="4", smooth_batch_shrink=2.0)
    assert (args.smooth_lambda, args.smooth_interval, args.smooth_batch_shrink) == (0.1, 4, 2)
    assert make_args(xformers=True, smooth_method="jvp_fd").smooth_method == "jvp_fd"  # no double backward needed
    assert make_args(xformers=True, smooth_lambda=0.0).smooth_lambda == 0.0  # plain LoRA


def test_missing_sd_scripts_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SD_SCRIPTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SdScriptsNotFound, match="v0.10.1") as error:
        locate_sd_scripts(["--sd_scripts_dir", str(tmp_path / "nowhere")])
    assert "git clone" in str(error.value)
    (tmp_path / "kohya" / "library").mkdir(parents=True)
    (tmp_path / "kohya" / "train_network.py").write_text("")
    monkeypatch.setenv("SD_SCRIPTS_DIR", str(tmp_path / "kohya"))
    assert locate_sd_scripts([]) == (tmp_path / "kohya").resolve()

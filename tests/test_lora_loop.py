"""The reproduction's minimal LoRA loop (lab/reproduction/lora_loop.py): placement, export round trip, regularizer log."""

from __future__ import annotations

import pytest
import torch

from lab.reproduction.lora_loop import LoraRun, add_lora, settling_step, train_lora
from lib_smooth.lora_apply import unet_layout
from lib_smooth.lora_formats import kohya_name, load_lora, save_kohya


def _data(backend, count=8):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(count, 4, 8, 8, generator=generator)
    contexts = backend.encode_prompts(["a red circle", "a blue square"], 64, 64)
    return latents, contexts, torch.arange(count) % 2


def test_lora_sits_on_q_k_v_out_of_every_attention_layer(sd1):
    import copy

    unet = copy.deepcopy(sd1.unet_model)
    attention_layers = sum(1 for name, _ in unet.named_modules() if name.endswith(("attn1", "attn2")))
    layers = add_lora(unet, rank=4)
    assert attention_layers > 0 and len(layers) == 4 * attention_layers
    assert {path.rsplit(".", 1)[-1] for path in layers} == {"to_q", "to_k", "to_v", "0"}
    # up starts at zero: the wrapped model computes exactly what the base model does
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    context = sd1.encode_prompts(["a", "b"], 64, 64)
    with torch.no_grad():
        assert torch.equal(unet(x, t, encoder_hidden_states=context).sample, sd1.unet_model(x, t, encoder_hidden_states=context).sample)


def test_trained_lora_file_reproduces_the_trained_model(sd1, tmp_path):
    """The kohya file, loaded and merged as a user would, gives the outputs of the model it was trained as."""
    run = LoraRun(weight=1.0, rank=4, seed=0, steps=3, batch=4, learning_rate=1e-2)
    network, log, _ = train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), run)
    assert all(layer.up.abs().sum() > 0 for layer in network.layers.values())
    path = save_kohya(network, tmp_path / "smooth.safetensors")
    loaded = load_lora(path)
    assert loaded.metadata["ss_smooth_lambda"] == "1.0" and loaded.metadata["ss_smooth_warm_start"] == "False" and loaded.arch == "sd1"

    import copy

    trained = copy.deepcopy(sd1.unet_model)
    layout = unet_layout(sd1.unet_model)
    assert not layout.hosts_read_diffusers_names  # one layer per level: the file must carry ldm names
    for path_name, layer in add_lora(trained, 4).items():
        name = kohya_name("unet", path_name, "sd1", layout)
        assert name.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
        layer.down.data, layer.up.data = network.layers[name].down, network.layers[name].up
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    context = sd1.encode_prompts(["a red circle", "a blue square"], 64, 64)
    with torch.no_grad():
        expected = trained(x, t, encoder_hidden_states=context).sample
    sd1.apply_lora(loaded)
    try:
        merged = sd1.unet(x, t, context)
    finally:
        sd1.remove_lora()
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-4)


def test_log_records_the_target_a_for_smooth_runs_and_the_variation_for_plain_ones(sd1):
    smooth_log = train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), LoraRun(1.0, rank=2, steps=3, batch=2), log_every=1)[1]
    assert [entry["step"] for entry in smooth_log] == [0, 1, 2]
    # a starts at 0 and moves by decay·(mean r − a) per step: after the first step a = 0.01·r̄₀
    assert smooth_log[0]["target_a"] == pytest.approx(0.01 * smooth_log[0]["variation_mean"])
    plain_log = train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), LoraRun(0.0, rank=2, steps=4, batch=2), log_every=2)[1]
    assert [(e["step"], "variation_mean" in e, "target_a" in e) for e in plain_log] == [(0, True, False), (2, True, False), (3, False, False)]


def test_settling_step_is_where_the_value_stays_within_tolerance_of_its_end():
    trajectory = [{"step": s, "target_a": a} for s, a in [(0, 0.0), (10, 0.5), (20, 0.97), (30, 1.2), (40, 0.98), (50, 1.0)]]
    assert settling_step(trajectory) == 40  # 0.97 is within 5% but 1.2 leaves the band again
    assert settling_step(trajectory, tolerance=0.25) == 20
    assert settling_step([{"step": 0, "loss": 1.0}]) is None


def test_the_cheap_settings_regularize_every_fourth_step_by_their_own_method(sd1):
    """Interval 4 (vjp or the finite-difference JVP): the target a moves on steps 0, 4, 8 only, and the
    LoRA file says which setting trained it."""
    for method in ("vjp", "jvp_fd"):
        run = LoraRun(1.0, rank=2, steps=9, batch=2, interval=4, method=method)
        network, log, _ = train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), run, log_every=1)
        moved = [entry["step"] for previous, entry in zip([{"target_a": 0.0}] + log, log) if entry["target_a"] != previous["target_a"]]
        assert moved == [0, 4, 8], (method, moved)
        assert network.metadata["ss_smooth_interval"] == "4" and network.metadata["ss_smooth_method"] == method
        assert run.name.endswith("_interval4") and (method == "vjp") != ("_jvp_fd" in run.name)


class _Stop(Exception):
    pass


def _stop_at(stop_step: int):
    """An on_step callback that interrupts training after `stop_step`, as a killed process would."""

    def on_step(step: int) -> None:
        if step == stop_step:
            raise _Stop

    return on_step


def test_a_run_stopped_after_a_checkpoint_resumes_to_the_uninterrupted_result(sd1, tmp_path):
    """Stopped at step 3 of 6 (checkpoints every 2 steps), the next call goes on from step 4 and ends with
    the uninterrupted run's LoRA, log and target a — to the bit."""
    run = LoraRun(1.0, rank=2, steps=6, batch=2, learning_rate=1e-2, warm_start=True, interval=2)
    whole = train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), run, log_every=1)
    checkpoint = tmp_path / "run.checkpoint.pt"
    with pytest.raises(_Stop):
        train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), run, log_every=1, on_step=_stop_at(3), checkpoint=checkpoint, checkpoint_every=2)
    assert torch.load(checkpoint)["next_step"] == 4
    steps_run = []
    resumed = train_lora(
        sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), run, log_every=1, on_step=steps_run.append, checkpoint=checkpoint, checkpoint_every=2
    )
    assert steps_run == [4, 5]
    assert resumed.log == whole.log and [e["step"] for e in resumed.log] == list(range(6))
    assert whole.network.layers.keys() == resumed.network.layers.keys()
    for name, layer in whole.network.layers.items():
        assert torch.equal(layer.up, resumed.network.layers[name].up) and torch.equal(layer.down, resumed.network.layers[name].down), name
    assert any(layer.up.abs().sum() > 0 for layer in whole.network.layers.values())


def test_a_checkpoint_of_other_settings_is_refused_by_name(sd1, tmp_path):
    checkpoint = tmp_path / "run.checkpoint.pt"
    first = LoraRun(1.0, rank=2, steps=4, batch=2)
    with pytest.raises(_Stop):
        train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), first, on_step=_stop_at(1), checkpoint=checkpoint, checkpoint_every=2)
    with pytest.raises(ValueError, match=r"another run \(steps differ\)"):
        train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), LoraRun(1.0, rank=2, steps=8, batch=2), checkpoint=checkpoint)


def test_cosine_schedule_falls_from_the_rate_to_zero_by_kohyas_formula():
    run = LoraRun(1.0, steps=4, learning_rate=0.2, lr_schedule="cosine")
    # 0.2 · (1 + cos(π · step / 4)) / 2
    assert [run.learning_rate_at(step) for step in range(4)] == pytest.approx([0.2, 0.1 + 0.1 / 2**0.5, 0.1, 0.1 - 0.1 / 2**0.5])
    assert LoraRun(1.0, learning_rate=0.2).learning_rate_at(3) == 0.2
    assert run.name.endswith("_cosine") and not LoraRun(1.0).name.endswith("_constant")
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        LoraRun(1.0, lr_schedule="linear").learning_rate_at(0)


def test_the_loop_takes_each_step_at_the_schedules_rate(sd1):
    """AdamW's step is proportional to the rate: cosine's second step (half the rate) moves the LoRA half as far."""

    def up_weights(**settings):
        network = train_lora(sd1.unet_model, sd1.alphas_cumprod, *_data(sd1), LoraRun(1.0, rank=2, batch=2, learning_rate=1e-2, **settings))[0]
        return torch.cat([layer.up.flatten() for layer in network.layers.values()])

    first = up_weights(steps=1)
    constant_second = up_weights(steps=2) - first
    cosine_second = up_weights(steps=2, lr_schedule="cosine") - first
    assert constant_second.abs().max() > 1e-4
    torch.testing.assert_close(cosine_second, constant_second / 2, rtol=1e-3, atol=1e-7)

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lib_smooth.cache import InversionCache
from lib_smooth.ddim import guided_eps, invert
from lib_smooth.invert import dual_null_text_inversion, invert_image, reconstruct
from lib_smooth.jobs import decode, run_interpolate, run_invert
from lib_smooth.nulltext import early_stop_threshold, learning_rate, optimise_null_embeddings
from lib_smooth.requests import InterpolateRequest, InvertRequest

from helpers import CountingBackend, b64

STEPS = 8


def picture(colour="orange", background="navy"):
    image = Image.new("RGB", (64, 64), background)
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=colour)
    return image


def latent_error(backend, inversion, guidance=7.5):
    return float((reconstruct(backend, inversion, guidance) - inversion.x_0).norm() / inversion.x_0.norm())


def test_official_schedules():
    assert [learning_rate(i) for i in (0, 10, 49)] == pytest.approx([1e-2, 9e-3, 5.1e-3])
    assert [early_stop_threshold(i) for i in (0, 10)] == pytest.approx([1e-5, 2.1e-4])


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_null_text_reconstructs_better_than_ddim_at_guidance_7_5(tiny_models, arch):
    backend = tiny_models(arch)
    ddim = invert_image(backend, picture(), "an orange circle", steps=STEPS, width=64, height=64)
    nti = invert_image(backend, picture(), "an orange circle", steps=STEPS, width=64, height=64, mode="null-text")
    assert len(nti.null_embeddings) == STEPS and torch.equal(nti.x_T, ddim.x_T)  # same x_T, tuned nulls
    ddim_error, nti_error = latent_error(backend, ddim), latent_error(backend, nti)
    floor = latent_error(backend, ddim, guidance=1.0)  # what inversion itself loses, without guidance
    # null-text inversion removes most of the error that guidance 7.5 adds on top of that floor
    assert nti_error < ddim_error and nti_error - floor < 0.5 * (ddim_error - floor), (floor, ddim_error, nti_error)


def test_sdxl_keeps_the_pooled_vector_and_sizes(tiny_models):
    xl = tiny_models("sdxl")
    nti = invert_image(xl, picture(), "an orange circle", steps=4, width=64, height=64, mode="null-text", inner_steps=3)
    empty = xl.encode_prompts([""], 64, 64)
    for null in nti.null_embeddings:
        assert torch.equal(null["text_embeds"], empty["text_embeds"]) and torch.equal(null["time_ids"], empty["time_ids"])
    assert not torch.equal(nti.null_embeddings[-1]["context"], empty["context"])


def test_early_stop_rule_is_honoured(sd1):
    x0 = sd1.encode_images(torch.rand(1, 3, 64, 64) * 2 - 1)
    cond, uncond = sd1.encode_prompts(["a cat"], 64, 64), sd1.encode_prompts([""], 64, 64)
    _, trajectory = invert(guided_eps(sd1, cond), x0, sd1.alphas_cumprod, 4, return_trajectory=True)
    for base, per_step in ((1e9, 1), (0.0, 5)):  # stop after the first iteration / never stop early
        counting, units = CountingBackend(sd1), []
        optimise_null_embeddings(
            counting,
            trajectory,
            cond,
            uncond,
            7.5,
            inner_steps=5,
            early_stop_base=base,
            early_stop_slope=0.0,
            on_iteration=lambda step, n: units.append(n),
        )
        # per step: one conditional pass, `per_step` optimisation passes, one final guided step
        assert counting.calls == 4 * (1 + per_step + 1)
        assert sum(units) == 4 * 5  # progress always adds up to steps × inner steps


def test_dual_inversion_shares_one_null_set_that_reconstructs_both(sd1):
    a, b = picture("orange", "navy"), picture("white", "darkgreen")
    first, second = dual_null_text_inversion(sd1, (a, b), ("a circle", "a circle"), steps=STEPS, width=64, height=64)
    assert first.null_embeddings is second.null_embeddings and len(first.null_embeddings) == STEPS
    for image, inversion in ((a, first), (b, second)):
        ddim = invert_image(sd1, image, "a circle", steps=STEPS, width=64, height=64)
        assert torch.allclose(inversion.x_T, ddim.x_T, atol=1e-4)
        assert latent_error(sd1, inversion) < 0.7 * latent_error(sd1, ddim)


def test_invert_job_with_null_text_caches_the_null_embeddings(sd1):
    cache, counting = InversionCache(), CountingBackend(sd1)
    request = InvertRequest(image=b64(picture()), prompt="an orange circle", steps=6, width=64, height=64, inversion="null-text", null_text_steps=4)
    ticks = []
    first = run_invert(counting, request, cache, progress=lambda done, total, latent: ticks.append((done, total)))
    assert ticks[-1][0] == ticks[-1][1] == 6 * (1 + 4) + 6  # DDIM + NTI iterations + reconstruction
    calls = counting.calls
    second = run_invert(counting, request, cache)
    assert counting.calls - calls == 6  # only the reconstruction ran again
    assert np.array_equal(np.asarray(first.reconstruction), np.asarray(second.reconstruction))
    assert first.sidecar["settings"]["inversion"] == "null-text" and first.sidecar["settings"]["null_text_steps"] == 4


def test_dual_null_text_interpolation_ends_use_the_shared_nulls(sd1):
    a, b = picture("orange", "navy"), picture("white", "darkgreen")
    request = InterpolateRequest(
        prompt_a="a circle", image_a=b64(a), image_b=b64(b), frames=4, steps=5, width=64, height=64, inversion="dual-null-text", null_text_steps=3
    )
    frames = run_interpolate(sd1, request).frames
    first, second = dual_null_text_inversion(sd1, (a, b), ("a circle", "a circle"), steps=5, width=64, height=64, inner_steps=3)
    for frame, inversion in ((frames[0], first), (frames[-1], second)):
        expected = decode(sd1, reconstruct(sd1, inversion))[0]
        assert np.abs(np.asarray(frame, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    one_image = InterpolateRequest(
        prompt_a="a circle", image_a=b64(a), seed_b=3, frames=3, steps=4, width=64, height=64, inversion="null-text", null_text_steps=2
    )
    assert len(run_interpolate(sd1, one_image).frames) == 3  # a seed end uses the negative prompt at every step


def test_interrupt_stops_within_one_inner_iteration(sd1):
    from lib_smooth.errors import Interrupted

    counting = CountingBackend(sd1)
    request = InvertRequest(image=b64(picture()), prompt="an orange circle", steps=6, width=64, height=64, inversion="null-text", null_text_steps=10)
    ddim_done = 6  # the DDIM pass reports 6 steps, then each inner iteration one unit

    def progress(done, total, latent):
        if done > ddim_done + 2:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        run_invert(counting, request, progress=progress)
    # 6 DDIM steps, then for the first sampling step: 1 conditional pass and exactly 3 optimisation passes
    assert counting.calls == 6 + 1 + 3

"""Pieces of the embedded model's training recipe (lab/recipe/train_shapes_model.py) that are not exercised by
loading the shipped weights: the optional latent noise and min-SNR weights, and the learning-rate shape."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lab.recipe.train_shapes_model import check_vae, cosine_lr, encode_all, min_snr_weights, with_latent_noise


def test_latent_noise_is_off_at_zero_and_scales_with_the_latents_std():
    latents = 3.0 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert with_latent_noise(latents, 0.0) is latents
    torch.manual_seed(1)
    added = with_latent_noise(latents, 0.25) - latents
    assert added.mean().item() == pytest.approx(0.0, abs=0.02)
    assert added.std().item() == pytest.approx(0.25 * latents.std().item(), rel=0.03)


def test_min_snr_weights_by_hand():
    # ᾱ = 0.5 → SNR 1 → weight 1; ᾱ = 0.9 → SNR 9 → min(9, 5)/9; ᾱ = 0.1 → SNR 1/9 → 1
    weights = min_snr_weights(torch.tensor([0.5, 0.9, 0.1]), 5.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 5 / 9, 1.0]))


def test_cosine_lr_warms_up_then_falls_to_its_floor():
    assert cosine_lr(0, 100, 10) == pytest.approx(0.1) and cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_lr(100, 100, 10, floor=0.1) == pytest.approx(0.1)


def test_encode_all_encodes_each_caption_once_and_puts_its_latents_everywhere():
    from diffusers import AutoencoderKL

    from lib_smooth.backends.shapes_model import VAE_CONFIG

    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    a, b = torch.randint(256, (2, 1, 3, 64, 64), dtype=torch.uint8)
    encoded = []
    vae.encode = lambda x, encode=vae.encode: encoded.append(len(x)) or encode(x)
    latents = encode_all(vae, torch.cat([a, b, a, a]), ["a", "b", "a", "a"])
    assert encoded == [2]
    with torch.no_grad():
        one_by_one = [vae.encode(x.float() / 127.5 - 1).latent_dist.mode() for x in (a, b)]
    torch.testing.assert_close(latents, torch.cat([one_by_one[0], one_by_one[1], one_by_one[0], one_by_one[0]]))


def test_check_vae_reads_shapes_back_through_the_vae():
    def vae_keeping(keep):  # encode to the pixels themselves; decode through `keep`
        return SimpleNamespace(
            encode=lambda x: SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x)), decode=lambda z: SimpleNamespace(sample=keep(z))
        )

    assert check_vae(vae_keeping(lambda z: z), 40) == {"colour": 1.0, "shape": 1.0, "both": 1.0, "count": 40}
    # A decoder that keeps only the picture's mean colour keeps no shape
    flat = check_vae(vae_keeping(lambda z: z.mean(dim=(2, 3), keepdim=True).expand_as(z)), 40)
    assert flat["shape"] <= 0.5 and flat["count"] == 40


def test_every_stage_runs_and_the_vae_learns(tokenizer_dir):
    """A few steps of each stage on 8 images: the VAE's L1 falls, the decoder stage keeps the latents'
    shape, and the denoiser stage returns a UNet and text encoder that take the CLIP tokens."""
    from transformers import CLIPTokenizer

    from lab.recipe.train_shapes_model import render_dataset, train_decoder, train_denoiser, train_vae

    torch.manual_seed(0)
    images, captions = render_dataset(8, seed=0)
    log: list = []
    vae = train_vae(images, steps=30, full_size_steps=2, batch=8, lr=1e-3, log=log)
    first, last = [entry["l1"] for entry in log if entry["stage"] == "vae"][:: len(log) - 1]
    assert last < 0.85 * first  # 0.62 → 0.47 on this seed
    latents = encode_all(vae, images, captions)
    assert latents.shape == (8, 4, 8, 8)
    train_decoder(vae, latents, images, steps=2, batch=4, lr=5e-4, log=log, latent_noise=0.25)
    assert [entry["stage"] for entry in log].count("decoder") == 2
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    unet, text_encoder = train_denoiser(latents, ids, ids[0], steps=2, batch=4, lr=1e-3, log=log, min_snr_gamma=5.0)
    assert unet(latents[:2], torch.tensor([10, 900]), encoder_hidden_states=text_encoder(ids[:2])[0]).sample.shape == (2, 4, 8, 8)
    before = unet.conv_in.weight.detach().clone()
    continued = train_denoiser(latents, ids, ids[0], steps=2, batch=4, lr=1e-3, log=log, start_from=(unet, text_encoder))
    assert continued[0] is unet and not torch.equal(unet.conv_in.weight, before)  # went on training the given pair


def test_the_decoder_stage_beside_the_unet_trains_only_the_decoder_and_gives_the_threads_back(tmp_path, tokenizer_dir):
    """The decoder stage in its own process while the UNet trains: it writes a VAE whose encoder (so the
    UNet's latents) is unchanged and whose decoder moved, its log comes back, and the UNet stage takes
    its threads back once the decoder process has ended."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from lab.recipe.train_shapes_model import finish_decoder_beside, render_dataset, start_decoder_beside, train_denoiser, train_vae, watch_decoder

    torch.manual_seed(0)
    images, captions = render_dataset(8, seed=0)
    vae = train_vae(images, steps=2, full_size_steps=1, batch=4, lr=1e-3, log=[])
    latents = encode_all(vae, images, captions)
    before = {name: value.detach().clone() for name, value in vae.state_dict().items()}
    threads = torch.get_num_threads()
    log: list = []
    decoder = start_decoder_beside(vae, latents, images, steps=3, seed=1, latent_noise=0.0, out=tmp_path)
    torch.set_num_threads(1)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    decoder.join()  # so the hook's first call sees it ended
    train_denoiser(latents, ids, ids[0], steps=1, batch=4, lr=1e-3, log=log, every_step=watch_decoder(decoder, threads))
    assert torch.get_num_threads() == threads
    trained = finish_decoder_beside(decoder, tmp_path, log)
    assert [entry["step"] for entry in log if entry["stage"] == "decoder"] == [0, 2]  # logged every 25th and the last
    after = AutoencoderKL.from_pretrained(tmp_path / "vae").state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before if name.startswith(("encoder.", "quant_conv.")))
    assert not torch.equal(after["decoder.conv_out.weight"], before["decoder.conv_out.weight"])
    torch.testing.assert_close(trained.state_dict()["decoder.conv_out.weight"], after["decoder.conv_out.weight"])


def test_the_decoder_watch_waits_for_the_process_and_stops_the_run_when_it_failed():
    from lab.recipe.train_shapes_model import watch_decoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        running = SimpleNamespace(is_alive=lambda: True, exitcode=None)
        watch_decoder(running, 2)()
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit, match="exit code 1"):
            watch_decoder(SimpleNamespace(is_alive=lambda: False, exitcode=1), 2)()
        watch_decoder(SimpleNamespace(is_alive=lambda: False, exitcode=0), 2)()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)

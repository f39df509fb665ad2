"""Train the embedded shapes-sd1 model (lib_smooth.backends.shapes_model) from scratch on a 2-core CPU.

    python -m lab.recipe.train_shapes_model --out /tmp/shapes-train [--install]

The defaults are a recipe that trains the model from scratch in 45 minutes on two cores (measured:
43.3); the result draws colour and shape right for 86 % of held-out prompts (seed 1: 73 %; bench/RESULTS.md, "From
scratch in 45 minutes"; the shipped weights trained longer, 97 %). The stages, each the textbook
recipe at small scale:
1. VAE: L1 + MSE + an L1 on image differences (edges) plus a tiny KL term (SD's VAE used 1e-6 with
   perceptual and GAN terms we leave out), mostly on random 32 px crops (the VAE is convolutional,
   crops cost a quarter), then on whole 64 px images. The latent scale factor makes the training
   latents unit-variance, which is how SD's 0.18215 was chosen.
2. Decoder alone (--decoder-steps), encoder frozen, on whole images: sharper edges without moving the
   latents. Cheaper per image than stage 1 and it is what brings back the shapes' corners (in the
   pilots 600 + 400 VAE steps gave back 78 % of the shapes, 500 decoder steps more 95 %). With a UNet
   stage it runs beside it, in a process of its own, each on one thread until the decoder is done:
   the UNet's small convolutions gain little from a second thread (lab/recipe/stage_threads.py).
3. Text encoder + UNet, trained together (there is no pretrained CLIP here) on ε-prediction MSE with
   uniform timesteps on SD's scaled-linear schedule, min-SNR-5 weights; captions are dropped 10% of the
   time so classifier-free guidance works. Batch 16: with only about 2,200 distinct images, the number
   of updates counts, not the batch (4,000 steps of 16 beat 1,200 of 64, 85 % against 26 %); 4,700 steps.
4. Check: the shapes detector on DDIM samples for held-out prompts, and on held-out images passed
   through the VAE alone (what the samples can reach at best).

Stages can be resumed from an earlier run's output (--resume-vae, --resume-denoiser). --install writes
the fp16 weights into lib_smooth/models (diffusers folder and WebUI single file); the shipped model's
own sequence of runs is recorded in lib_smooth/models/shapes-sd1/training_report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lab import shapes
from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer
from lib_smooth.backends.diffusers_backend import DiffusersBackend, _alphas_cumprod
from lib_smooth.backends.shapes_model import DESCRIPTION, DIFFUSERS_DIR, IMAGE_SIZE, TEXT_ENCODER_CONFIG, UNET_CONFIG, VAE_CONFIG
from lib_smooth.testing import SCHEDULER

CAPTION_DROPOUT = 0.1


def render_dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for image, spec in tqdm(shapes.samples(count, seed, IMAGE_SIZE), total=count, desc="rendering"):
        images.append(np.asarray(image))
        captions.append(spec.caption)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1


def cosine_lr(step: int, steps: int, warmup: int, floor: float = 0.0) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the images' horizontal and vertical differences: blurred edges cost more than under L1 alone."""
    return (a.diff(dim=-1) - b.diff(dim=-1)).abs().mean() + (a.diff(dim=-2) - b.diff(dim=-2)).abs().mean()


def init_posterior(vae: torch.nn.Module) -> None:
    """Start the posterior's log-variance at −8 (σ ≈ 0.02): from the default σ ≈ 1 the decoder sees mostly
    sampling noise until the encoder has grown its means, which takes thousands of steps."""
    with torch.no_grad():
        vae.quant_conv.weight[4:] = 0
        vae.quant_conv.bias[4:] = -8


def with_latent_noise(latents: torch.Tensor, relative_std: float) -> torch.Tensor:
    """Latents plus Gaussian noise of `relative_std` times their batch std: a decoder trained on these must
    read shape from latent features that survive such noise (see --latent-noise)."""
    if not relative_std:
        return latents
    return latents + relative_std * latents.detach().std() * torch.randn_like(latents)


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, γ) / SNR per sample, SNR = ᾱ / (1 − ᾱ): the min-SNR-γ weights of an ε-prediction loss
    (Hang et al. 2023), less weight on the easy, nearly clean timesteps."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1 + MSE + edge L1, L1, MSE) of a reconstruction against its images."""
    l1, mse = (reconstruction - x).abs().mean(), (reconstruction - x).pow(2).mean()
    return l1 + mse + edge_l1(reconstruction, x), l1, mse


def optimizer_step(optimizer: torch.optim.Optimizer, schedule, loss: torch.Tensor, clip: list | None = None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    optimizer.step()
    schedule.step()


def train_vae(
    images: torch.Tensor,
    steps: int,
    full_size_steps: int,
    batch: int,
    lr: float,
    log: list,
    vae: torch.nn.Module | None = None,
    latent_noise: float = 0.0,
) -> torch.nn.Module:
    """Train a new VAE, or go on training `vae`."""
    from diffusers import AutoencoderKL

    if vae is not None:
        vae.train()
    else:
        vae = AutoencoderKL(**VAE_CONFIG)
        init_posterior(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, 50, floor=0.1))
    crop = IMAGE_SIZE // 2
    bar = tqdm(range(steps), desc="VAE")
    for step in bar:
        full = step >= steps - full_size_steps
        x = to_unit(images[torch.randint(len(images), (batch // 2 if full else batch,))])  # whole images cost 4×
        if not full:
            top, left = torch.randint(IMAGE_SIZE - crop + 1, (2,)).tolist()
            x = x[:, :, top : top + crop, left : left + crop]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(with_latent_noise(posterior.sample(), latent_noise)).sample
        loss, l1, mse = reconstruction_loss(reconstruction, x)
        optimizer_step(optimizer, schedule, loss + 1e-6 * posterior.kl().mean())
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(l1=f"{l1.item():.4f}", mse=f"{mse.item():.5f}")
            log.append({"stage": "vae", "step": step, "l1": l1.item(), "mse": mse.item()})
    return vae.eval()


def train_decoder(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    images: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    log: list,
    latent_noise: float = 0.0,
    bar_position: int = 0,
) -> torch.nn.Module:
    """Sharpen the decoder with the encoder frozen, on whole images: the latents do not change, so a UNet
    trained on them stays valid. `latents` are the posterior means (unscaled)."""
    vae.train()
    parameters = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, 50, floor=0.1))
    bar = tqdm(range(steps), desc="VAE decoder", position=bar_position)
    for step in bar:
        index = torch.randint(len(images), (batch,))
        x = to_unit(images[index])
        reconstruction = vae.decode(with_latent_noise(latents[index], latent_noise)).sample
        loss, l1, mse = reconstruction_loss(reconstruction, x)
        optimizer_step(optimizer, schedule, loss)
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(l1=f"{l1.item():.4f}", mse=f"{mse.item():.5f}")
            log.append({"stage": "decoder", "step": step, "l1": l1.item(), "mse": mse.item()})
    return vae.eval()


def decoder_worker(vae: torch.nn.Module, latents: torch.Tensor, images: torch.Tensor, steps: int, seed: int, latent_noise: float, out: str) -> None:
    """The decoder stage in a process of its own, on one thread: it writes the VAE to out/vae and its log
    to out/decoder_log.json."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    log: list = []
    train_decoder(vae, latents, images, steps, 16, 5e-4, log, latent_noise, bar_position=1).save_pretrained(Path(out) / "vae")
    (Path(out) / "decoder_log.json").write_text(json.dumps(log))


def start_decoder_beside(vae: torch.nn.Module, latents: torch.Tensor, images: torch.Tensor, steps: int, seed: int, latent_noise: float, out: Path):
    """Start the decoder stage beside the UNet stage. Both need only the frozen encoder's latents, and on
    two cores the pair goes faster side by side on one thread each than one after the other on two: the
    UNet's small 8×8 convolutions gain little from a second thread (lab/recipe/stage_threads.py)."""
    process = torch.multiprocessing.get_context("spawn").Process(
        target=decoder_worker, args=(vae, latents, images, steps, seed, latent_noise, str(out)), daemon=True
    )
    process.start()
    return process


def stop_if_failed(process) -> None:
    if process.exitcode != 0:
        raise SystemExit(f"the decoder stage failed (exit code {process.exitcode}); its error is printed above")


def finish_decoder_beside(process, out: Path, log: list) -> torch.nn.Module:
    """Wait for the decoder process; its VAE and log entries."""
    from diffusers import AutoencoderKL

    process.join()
    stop_if_failed(process)
    log.extend(json.loads((out / "decoder_log.json").read_text()))
    return AutoencoderKL.from_pretrained(out / "vae", local_files_only=True).eval()


def watch_decoder(process, threads: int):
    """A per-step hook for the UNet stage: once the decoder `process` has ended, stop at once if it failed
    (rather than after the UNet's half hour), else take all `threads` again."""

    def check() -> None:
        if torch.get_num_threads() < threads and not process.is_alive():
            stop_if_failed(process)
            torch.set_num_threads(threads)

    return check


@torch.no_grad()
def encode_all(vae: torch.nn.Module, images: torch.Tensor, captions: list[str], batch: int = 256) -> torch.Tensor:
    """The posterior means of all images, each distinct image encoded once: a caption fixes its image
    (shapes.render), and 10,000 draws hold only about 2,200 distinct ones."""
    first_index = {}
    for index, caption in enumerate(captions):
        first_index.setdefault(caption, index)
    distinct = images[list(first_index.values())]
    means = torch.cat([vae.encode(to_unit(distinct[i : i + batch])).latent_dist.mode() for i in range(0, len(distinct), batch)])
    slot = {caption: k for k, caption in enumerate(first_index)}
    return means[[slot[caption] for caption in captions]]


def partial_caption_ids(specs: list, tokenize, share: float, drop_probability: float, seed: int):
    """Token ids for a batch of image indices: each caption is, with probability `share`, a partial one
    (each attribute left out with `drop_probability`: "a red shape"), else the full caption."""
    rng = random.Random(seed)
    full = tokenize([spec.caption for spec in specs])

    def ids(index: torch.Tensor) -> torch.Tensor:
        batch = full[index].clone()
        for row, i in enumerate(index.tolist()):
            if rng.random() < share:
                batch[row] = tokenize([shapes.partial_caption(specs[i], rng, drop_probability)])[0]
        return batch

    return ids


def train_denoiser(
    latents: torch.Tensor,
    token_ids,
    empty_ids: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    log: list,
    min_snr_gamma: float = 0.0,
    start_from: tuple | None = None,
    every_step=None,
):
    """Train a new text encoder + UNet, or go on training the pair `start_from` (a fresh warm-up and cosine).
    `token_ids`: the captions' ids (one row per image) or a function of a batch's image indices giving
    them (partial captions). `every_step`, if given, is called before each step."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if start_from:
        unet, text_encoder = (module.float().train() for module in start_from)
    else:
        unet, text_encoder = UNet2DConditionModel(**UNET_CONFIG), CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, 100))
    alphas_cumprod = _alphas_cumprod(SCHEDULER)
    bar = tqdm(range(steps), desc="text encoder + UNet")
    running = None
    for step in bar:
        if every_step:
            every_step()
        index = torch.randint(len(latents), (batch,))
        x0 = latents[index]
        ids = token_ids(index) if callable(token_ids) else token_ids[index].clone()
        ids[torch.rand(batch) < CAPTION_DROPOUT] = empty_ids
        t = torch.randint(len(alphas_cumprod), (batch,))
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        prediction = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        per_sample = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(a.flatten(), min_snr_gamma)).mean() if min_snr_gamma else per_sample.mean()
        optimizer_step(optimizer, schedule, loss, clip=parameters)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{running:.4f}")
            log.append({"stage": "denoiser", "step": step, "loss_ema": running})
    return unet.eval(), text_encoder.eval()


def sample_latents(backend: DiffusersBackend, specs: list, guidance: float, steps: int, first_seed: int = 0) -> torch.Tensor:
    """DDIM latents for the specs' captions, sample i from the noise of seed first_seed + i, 64 at a time."""
    from lib_smooth.ddim import guided_eps, sample
    from lib_smooth.interpolate import seed_noise

    uncond = backend.encode_prompts([""], IMAGE_SIZE, IMAGE_SIZE)
    latents = []
    for start in range(0, len(specs), 64):
        chunk = specs[start : start + 64]
        cond = backend.encode_prompts([s.caption for s in chunk], IMAGE_SIZE, IMAGE_SIZE)
        noise = torch.cat([seed_noise(first_seed + start + i, (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)) for i in range(len(chunk))])
        latents.append(sample(guided_eps(backend, cond, uncond, guidance), noise, backend.alphas_cumprod, steps))
    return torch.cat(latents)


def draw(backend: DiffusersBackend, specs: list, guidance: float, steps: int, first_seed: int = 0) -> list:
    """The images of `sample_latents`."""
    from lib_smooth.images import tensor_to_pils

    latents = sample_latents(backend, specs, guidance, steps, first_seed)
    return [image for start in range(0, len(latents), 64) for image in tensor_to_pils(backend.decode_latents(latents[start : start + 64]))]


def check_samples(backend: DiffusersBackend, count: int, guidance: float, steps: int, seed: int = 1) -> dict:
    """Detector accuracy on samples for `count` prompts drawn with another data seed (held-out draws)."""
    specs = [shapes.spec_for(i, seed) for i in range(count)]
    return {"guidance": guidance, "steps": steps, **shapes.accuracy(draw(backend, specs, guidance, steps), specs)}


# partial prompts for the diversity check: what each names; the noise decides the rest
PARTIAL_PROMPTS = (
    {"colour": "red"},
    {"shape": "circle"},
    {"shape": "star", "size": "large", "background": "blue"},
    {"colour": "green", "background": "white"},
    {"shape": "triangle", "size": "small", "position": "on the left"},
    {},
)


def check_diversity(backend: DiffusersBackend, seeds: int, guidance: float, steps: int) -> list:
    """For each partial prompt, over `seeds` seeds: how often the named attributes are drawn right, and
    how the detector reads the ones left out (entropy, share of the most common value)."""
    placeholder = shapes.ShapeSpec("circle", "red", "blue", "large", "in the centre")
    report = []
    for named in PARTIAL_PROMPTS:
        spec = shapes.ShapeSpec(**{**placeholder.__dict__, **named})
        left_out = [name for name in shapes.ATTRIBUTES if name not in named]
        prompt = spec.caption_leaving_out(left_out)
        images = draw_prompt(backend, prompt, seeds, guidance, steps)
        found = [shapes.detect(image) for image in images]
        right = {name: float(np.mean([d.attribute(name) == value for d in found])) for name, value in named.items()}
        report.append({"prompt": prompt, "seeds": seeds, "named_right": right, "left_out": shapes.diversity(images, left_out)})
    return report


def draw_prompt(backend: DiffusersBackend, prompt: str, seeds: int, guidance: float, steps: int) -> list:
    """One prompt drawn from the noise of seeds 0 … seeds − 1."""
    from lib_smooth.ddim import guided_eps, sample
    from lib_smooth.images import tensor_to_pils
    from lib_smooth.interpolate import seed_noise

    cond, uncond = backend.encode_prompts([prompt], IMAGE_SIZE, IMAGE_SIZE), backend.encode_prompts([""], IMAGE_SIZE, IMAGE_SIZE)
    noise = torch.cat([seed_noise(seed, (1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8)) for seed in range(seeds)])
    latents = sample(guided_eps(backend, cond, uncond, guidance), noise, backend.alphas_cumprod, steps)
    return tensor_to_pils(backend.decode_latents(latents))


@torch.no_grad()
def check_vae(vae: torch.nn.Module, count: int, seed: int = 1) -> dict:
    """Detector accuracy on held-out images passed through the VAE (encode, decode): the most the
    denoiser's samples can reach."""
    from lib_smooth.images import tensor_to_pils

    images, captions = render_dataset(count, seed)
    round_trip = tensor_to_pils(vae.decode(encode_all(vae, images, captions)).sample)
    return shapes.accuracy(round_trip, [shapes.spec_for(i, seed) for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="working folder: log, checkpoints, fp16 model")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-full-size-steps", type=int, default=400)
    parser.add_argument(
        "--latent-noise",
        type=float,
        default=0.0,
        help="train the decoder on latents plus noise of this many batch stds (shipped model: 0; bench/RESULTS.md)",
    )
    parser.add_argument("--resume-vae", help="a VAE folder written by an earlier run, to train further instead of from scratch")
    parser.add_argument("--decoder-steps", type=int, default=500, help="then train the VAE decoder alone (latents unchanged)")
    parser.add_argument("--unet-steps", type=int, default=4700)
    parser.add_argument("--unet-lr", type=float, default=1e-3, help="peak learning rate of the text encoder + UNet stage")
    parser.add_argument(
        "--min-snr-gamma", type=float, default=5.0, help="min-SNR-γ loss weights for the UNet, 0 for none (the shipped model's runs: none)"
    )
    parser.add_argument(
        "--resume-denoiser",
        help="a diffusers folder written by an earlier run: start from its text encoder and UNet (with --unet-steps 0: take them as they are)",
    )
    parser.add_argument("--batch", type=int, default=16, help="text encoder + UNet batch (the shipped model's runs: 64)")
    parser.add_argument(
        "--partial-captions",
        type=float,
        default=0.0,
        help="share of training captions that leave attributes out (each with --drop-probability): the noise then decides them",
    )
    parser.add_argument("--drop-probability", type=float, default=0.5)
    parser.add_argument("--install", action="store_true", help="write the result into lib_smooth/models")
    parser.add_argument("--install-only", action="store_true", help="install the model already trained in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.install_only:
        return install(out / "shapes-sd1")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    log: list = []
    timings = {}

    start = time.perf_counter()
    images, captions = render_dataset(args.images, args.data_seed)
    timings["data_s"] = time.perf_counter() - start

    start = time.perf_counter()
    vae = None
    if args.resume_vae:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.resume_vae, local_files_only=True)
    if args.vae_steps:
        vae = train_vae(images, args.vae_steps, args.vae_full_size_steps, 16, 1e-3, log, vae, args.latent_noise)
    needs_latents = args.vae_steps or args.decoder_steps or args.unet_steps or not args.resume_denoiser
    latents = encode_all(vae, images, captions) if needs_latents else None
    if args.vae_steps:
        vae.register_to_config(scaling_factor=float(1 / latents.std()))
    decoder_beside = bool(args.decoder_steps and args.unet_steps)
    if args.decoder_steps and not decoder_beside:
        vae = train_decoder(vae, latents, images, args.decoder_steps, 16, 5e-4, log, args.latent_noise)
    if not decoder_beside:
        vae.save_pretrained(out / "vae")
    timings["vae_s"] = time.perf_counter() - start
    if not args.unet_steps and not args.resume_denoiser:
        return print(f"VAE written to {out / 'vae'}")

    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out / "tokenizer"), local_files_only=True)
    tokenize = lambda texts: tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids  # noqa: E731
    start = time.perf_counter()
    threads, decoder = torch.get_num_threads(), None
    if decoder_beside:
        decoder = start_decoder_beside(vae, latents, images, args.decoder_steps, args.seed + 1, args.latent_noise, out)
        torch.set_num_threads(1)
    unet = text_encoder = None
    if args.resume_denoiser:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(Path(args.resume_denoiser) / "unet", local_files_only=True).float().eval()
        text_encoder = CLIPTextModel.from_pretrained(Path(args.resume_denoiser) / "text_encoder", local_files_only=True).float().eval()
    if args.unet_steps:
        specs = [shapes.spec_for(i, args.data_seed) for i in range(args.images)]
        unet, text_encoder = train_denoiser(
            latents * vae.config.scaling_factor,
            partial_caption_ids(specs, tokenize, args.partial_captions, args.drop_probability, args.seed)
            if args.partial_captions
            else tokenize(captions),
            tokenize([""])[0],
            args.unet_steps,
            args.batch,
            args.unet_lr,
            log,
            args.min_snr_gamma,
            start_from=(unet, text_encoder) if unet is not None else None,
            every_step=watch_decoder(decoder, threads) if decoder else None,
        )
    if decoder:
        vae = finish_decoder_beside(decoder, out, log)
        torch.set_num_threads(threads)
    timings["decoder_and_denoiser_s" if decoder else "denoiser_s"] = time.perf_counter() - start

    from lib_smooth.testing import save_diffusers_folder

    # DiffusersBackend casts the modules in place: save in fp16, then evaluate in fp32 as users run it.
    half = DiffusersBackend(unet, vae, [text_encoder], [tokenizer], _alphas_cumprod(SCHEDULER), "eps", "sd1", dtype=torch.float16)
    save_diffusers_folder(half, out / "shapes-sd1")
    backend = DiffusersBackend(unet.float(), vae.float(), [text_encoder.float()], [tokenizer], _alphas_cumprod(SCHEDULER), "eps", "sd1")
    checks = [check_samples(backend, 256, guidance, 25) for guidance in (3.0, 5.0, 7.5)]
    report = {
        "model": DESCRIPTION,
        "args": vars(args),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_training_minutes": round(sum(timings.values()) / 60, 1),
        "detector": checks,
        "diversity": check_diversity(backend, 64, 5.0, 25),
        "vae_round_trip": check_vae(vae, 200),
        "torch_threads": torch.get_num_threads(),
        "log": log,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    for check in checks:
        print(f"guidance {check['guidance']}: colour {check['colour']:.1%} shape {check['shape']:.1%} both {check['both']:.1%}")
    if args.install:
        install(out / "shapes-sd1")


def install(folder: Path) -> None:
    """Copy the trained fp16 diffusers folder into lib_smooth/models and write the WebUI single file beside it.

    tokenizer.json is left out: vocab.json + merges.txt describe the same tokenizer in a third of the space.
    """
    import shutil

    from lib_smooth.backends.diffusers_backend import load_diffusers_folder
    from lib_smooth.backends.ldm_layout import save_single_file
    from lib_smooth.backends.shapes_model import CHECKPOINT, WEBUI_TEXT_ENCODER_DIR

    report = {k: v for k, v in json.loads((folder.parent / "training_report.json").read_text()).items() if k != "log"}
    resumed = report["args"].get("resume_denoiser")
    if resumed and (Path(resumed) / "training_report.json").is_file():  # a continued model keeps the record of the run it continued
        report["resumed_from"] = json.loads((Path(resumed) / "training_report.json").read_text())
    shutil.rmtree(DIFFUSERS_DIR, ignore_errors=True)
    shutil.copytree(folder, DIFFUSERS_DIR, ignore=shutil.ignore_patterns("tokenizer.json"))
    (DIFFUSERS_DIR / "training_report.json").write_text(json.dumps(report, indent=1))
    clip_folder = CHECKPOINT.parent / Path(WEBUI_TEXT_ENCODER_DIR).name
    shutil.rmtree(clip_folder, ignore_errors=True)
    save_single_file(load_diffusers_folder(DIFFUSERS_DIR, dtype=torch.float16), CHECKPOINT, clip_folder, named_as=WEBUI_TEXT_ENCODER_DIR)
    for leftover in clip_folder.rglob("tokenizer.json"):
        leftover.unlink()
    print(f"installed {DIFFUSERS_DIR} and {CHECKPOINT}")


if __name__ == "__main__":
    main()

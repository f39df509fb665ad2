"""Conditionings of different token counts (WebUI prompts over 75 tokens have 77·k tokens)."""

import pytest
import torch

from lib_smooth.backend import cond_cat, cond_lerp, cond_pad_tokens, cond_tokens
from lib_smooth.ddim import guided_eps, model_output_to_eps


def test_padding_repeats_the_last_token_and_leaves_pooled_vectors_alone():
    short = torch.arange(6.0).view(1, 3, 2)  # tokens [0,1], [2,3], [4,5]
    padded = cond_pad_tokens(short, 5)
    assert padded.tolist() == [[[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]]
    sdxl = {"crossattn": short, "vector": torch.ones(1, 4)}
    out = cond_pad_tokens(sdxl, 4)
    assert out["crossattn"].shape == (1, 4, 2) and torch.equal(out["vector"], sdxl["vector"])
    assert cond_tokens(out) == 4 and cond_tokens(short) == 3


def test_cat_and_lerp_accept_prompts_of_different_lengths():
    short, long = torch.zeros(1, 77, 4), torch.ones(1, 154, 4)
    short[:, -1] = 2.0  # the short prompt's last token: what fills its missing 77
    both = cond_cat([short, long])
    assert both.shape == (2, 154, 4) and torch.all(both[0, 77:] == 2.0) and torch.all(both[1] == 1.0)
    blend = cond_lerp(short, long, torch.tensor([0.0, 0.25, 1.0]))
    assert blend.shape == (3, 154, 4)
    assert torch.allclose(blend[1, :76], torch.full((76, 4), 0.25))  # 0.75·0 + 0.25·1
    assert torch.allclose(blend[1, 77:], torch.full((77, 4), 0.75 * 2 + 0.25))
    assert torch.equal(blend[0], cond_pad_tokens(short, 154)[0]) and torch.equal(blend[2], long[0])


def test_guidance_with_a_long_prompt_runs_each_branch_unpadded(sd1):
    calls = []

    class Recording:
        def __getattr__(self, name):
            return getattr(sd1, name)

        def unet(self, x, t, cond):
            calls.append(cond.shape[1])
            return sd1.unet(x, t, cond)

    g = torch.Generator().manual_seed(0)
    width = sd1.encode_prompts(["a cat"], 64, 64).shape[-1]
    cond, uncond = torch.randn(1, 154, width, generator=g), torch.randn(1, 77, width, generator=g)
    x = torch.randn(2, 4, 8, 8, generator=g)
    eps = guided_eps(Recording(), cond, uncond, 7.5)(x, 501, 0)
    assert sorted(calls) == [77, 154]  # two calls, neither padded
    t = torch.full((2,), 501)
    alpha = float(sd1.alphas_cumprod[501])
    eps_c = model_output_to_eps(sd1.unet(x, t, cond.expand(2, -1, -1)), x, alpha, sd1.parameterization)
    eps_u = model_output_to_eps(sd1.unet(x, t, uncond.expand(2, -1, -1)), x, alpha, sd1.parameterization)
    assert torch.allclose(eps, eps_u + 7.5 * (eps_c - eps_u), atol=1e-5)
    calls.clear()
    guided_eps(Recording(), cond[:, :77], uncond, 7.5)(x, 501, 0)
    assert calls == [77]  # equal lengths: one batched call as before


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_the_diffusers_host_encodes_long_prompts_in_77_token_windows_as_the_webui(tiny_models, arch):
    backend = tiny_models(arch)
    tokenizer = backend.tokenizers[0]
    words = " ".join(["red circle"] * 50)  # 100 prompt tokens: two windows
    ids = tokenizer(words, add_special_tokens=False).input_ids
    assert len(ids) == 100
    long = backend.encode_prompts([words], 64, 64)
    context = long["context"] if arch == "sdxl" else long
    assert context.shape[1] == 154
    first_75 = tokenizer.decode(ids[:75])
    alone = backend.encode_prompts([first_75], 64, 64)
    alone_context = alone["context"] if arch == "sdxl" else alone
    assert torch.allclose(context[:, :77], alone_context, atol=1e-5)  # window 1 is the prompt's first 75 tokens
    assert not torch.allclose(context[:, 77:], alone_context, atol=1e-3)  # window 2 carries the rest
    if arch == "sdxl":
        assert torch.allclose(long["text_embeds"], alone["text_embeds"], atol=1e-5)  # pooled from the first window
    # up to 75 tokens: the usual single window, exactly what a max_length tokenization gives
    short = tokenizer(["a red circle"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    expected = backend.text_encoders[0](short)[0] if arch == "sd1" else None
    if expected is not None:
        assert torch.equal(backend.encode_prompts(["a red circle"], 64, 64), expected.float())

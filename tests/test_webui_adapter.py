"""The WebUI adapter's own logic, with small stand-ins for the WebUI's `modules` and the Lora extension."""

import re
import sys
import types

import pytest
import torch

from lib_smooth.errors import Interrupted, SmoothDiffusionError
from lib_smooth.plots import distance_plot
from lib_smooth.webui.generation import accordion_from_infotext, add_lora_to_prompts, parse_infotext
from lib_smooth.webui.ui import infotext


class FakeNetwork:
    """A loaded network as the built-in extension keeps it: `modules` holds the layers that matched."""

    def __init__(self, name, te, unet, dyn, modules=None):
        self.name, self.te_multiplier, self.unet_multiplier, self.dyn_dim = name, te, unet, dyn
        self.modules = modules if modules is not None else {"layer": FakeModule("lora_unet_layer", torch.nn.Linear(2, 2), rank=1)}


class FakeModule:
    """A matched LoRA layer; its delta has the model layer's shape unless `delta` says otherwise."""

    def __init__(self, key, sd_module, rank, delta=None):
        out_features, in_features = delta or sd_module.weight.shape
        self.network_key, self.sd_module = f"{key}.lora_up.weight", sd_module
        self.up_model, self.down_model = torch.nn.Linear(rank, out_features, bias=False), torch.nn.Linear(in_features, rank, bias=False)


class SpatialTransformer(torch.nn.Module):
    """Named like ldm's attention block: the layout is read from the output blocks' module types."""


def ldm_unet(layers=2, attention_levels=(1, 2, 3), levels=4):
    blocks = [
        torch.nn.Sequential(torch.nn.Identity(), *([SpatialTransformer()] if index // (layers + 1) in attention_levels else []))
        for index in range(levels * (layers + 1))
    ]
    return types.SimpleNamespace(num_res_blocks=[layers] * levels, output_blocks=blocks, channel_mult=(1,) * levels)


class FakeLayer(torch.nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.network_layer_name = "layer"


@pytest.fixture
def fake_webui(monkeypatch, tmp_path):
    """`modules.shared` with a model of two patched layers, and a `networks` module that records loads."""
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya

    save_kohya(LoraNetwork({"lora_unet_layer": LoraLayer(torch.ones(1, 2), torch.ones(2, 1))}, "kohya"), tmp_path / "smooth.safetensors")
    model = torch.nn.Sequential(FakeLayer(), FakeLayer())
    model.model = types.SimpleNamespace(diffusion_model=ldm_unet())
    model.alphas_cumprod, model.scale_factor = torch.linspace(0.99, 0.01, 1000), 0.18215
    networks = types.ModuleType("networks")
    networks.loaded_networks = [FakeNetwork("user-style", 0.7, 0.7, None)]
    networks.available_networks = {"smooth": types.SimpleNamespace(name="smooth", filename=str(tmp_path / "smooth.safetensors")), "user-style": None}
    networks.available_network_aliases = dict(networks.available_networks)
    networks.calls, networks.merged = [], []

    def load_networks(names, te, unet, dyn):
        networks.calls.append(list(names))
        networks.loaded_networks[:] = [FakeNetwork(*a) for a in zip(names, te, unet, dyn)]

    networks.load_networks = load_networks
    networks.rescans = []
    networks.list_available_networks = lambda: networks.rescans.append(True)
    networks.network_apply_weights = lambda module: networks.merged.append(tuple(n.name for n in networks.loaded_networks))
    modules = types.ModuleType("modules")
    modules.shared = types.SimpleNamespace(
        sd_model=model,
        device="cpu",
        progress_print_out=sys.stderr,
        state=types.SimpleNamespace(interrupted=False, skipped=False, stopping_generation=False),
    )
    modules.sd_samplers_common = types.SimpleNamespace(store_latent=lambda x: setattr(modules.shared.state, "current_latent", x))
    monkeypatch.setitem(sys.modules, "networks", networks)
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.shared", modules.shared)
    monkeypatch.setitem(sys.modules, "modules.sd_samplers_common", modules.sd_samplers_common)
    # the rest of what an AUTOMATIC1111 host provides (lib_smooth.webui.host checks for it)
    modules.shared.opts = types.SimpleNamespace()
    for name, attributes in (
        ("devices", {"autocast": None, "device": "cpu", "dtype_unet": torch.float32}),
        ("sd_models", {"apply_alpha_schedule_override": lambda model: None}),
        ("prompt_parser", {"SdConditioning": list}),
    ):
        fake = types.SimpleNamespace(**attributes)
        setattr(modules, name, fake)
        monkeypatch.setitem(sys.modules, f"modules.{name}", fake)
    return networks, modules


def a1111_backend(model):
    """The AUTOMATIC1111 adapter over `model`, without the WebUI state its constructor reads."""
    from lib_smooth.webui.automatic1111 import Automatic1111Backend

    backend = Automatic1111Backend.__new__(Automatic1111Backend)
    backend.model, backend.is_sdxl, backend.lora_label = model, False, ""
    return backend


def test_lora_session_restores_the_users_networks_even_on_error(fake_webui):
    networks, modules = fake_webui
    backend = a1111_backend(modules.shared.sd_model)
    with pytest.raises(RuntimeError):
        with backend.use_lora("smooth", 0.5) as loaded:
            assert loaded.name == "smooth" and loaded.weight == 0.5 and backend.lora_label == "smooth:0.5"
            assert [(n.name, n.te_multiplier) for n in networks.loaded_networks] == [("smooth", 0.5)]
            raise RuntimeError("the job failed")
    assert networks.calls == [["smooth"], ["user-style"]]
    assert [(n.name, n.te_multiplier) for n in networks.loaded_networks] == [("user-style", 0.7)]
    assert networks.merged[-2:] == [("user-style",), ("user-style",)]  # both layers re-merged at once, not lazily
    assert backend.lora_label == ""
    with pytest.raises(SmoothDiffusionError, match="not found"):
        with backend.use_lora("missing", 1.0):
            pass


def test_official_format_is_converted_once_beside_the_original(fake_webui, tmp_path):
    from safetensors.torch import save_file

    from lib_smooth.lora_formats import SD_LAYOUT
    from lib_smooth.webui.lora import prepare

    networks, modules = fake_webui
    save_file(
        {
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.ones(8, 320),
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.ones(320, 8),
        },
        str(tmp_path / "official.safetensors"),
    )
    networks.available_networks["official"] = types.SimpleNamespace(name="official", filename=str(tmp_path / "official.safetensors"))
    refreshed = []
    networks.list_available_networks = lambda: refreshed.append(True)
    assert prepare("official", SD_LAYOUT, False).name == "official_kohya" and refreshed == [True]
    assert (tmp_path / "official_kohya.safetensors").is_file() and (tmp_path / "official.safetensors").is_file()
    before = (tmp_path / "official_kohya.safetensors").stat().st_mtime_ns
    assert prepare("official", SD_LAYOUT, False).name == "official_kohya"
    assert (tmp_path / "official_kohya.safetensors").stat().st_mtime_ns == before  # never rewritten
    assert prepare("smooth", SD_LAYOUT, False) == type(prepare("smooth", SD_LAYOUT, False))("smooth", 1)  # kohya files are used as they are


def test_diffusers_names_for_another_unet_layout_get_an_ldm_copy(fake_webui, tmp_path):
    """On a UNet with one layer per level the WebUI would read down_blocks_1 as input_blocks_4 (SD 1.5's
    numbering): the copy it loads names input_blocks_3, where lib_smooth puts that layer."""
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, load_lora, save_kohya
    from lib_smooth.webui.lora import prepare, unet_layout

    networks, modules = fake_webui
    layout = unet_layout(ldm_unet(layers=1, attention_levels=(0, 1), levels=2))
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_kohya(LoraNetwork({name: LoraLayer(torch.ones(2, 8), torch.ones(8, 2))}, "kohya"), tmp_path / "small.safetensors")
    networks.available_networks["small"] = types.SimpleNamespace(name="small", filename=str(tmp_path / "small.safetensors"))
    networks.list_available_networks = lambda: None
    assert prepare("small", layout, False).name == "small_ldm"
    assert list(load_lora(tmp_path / "small_ldm.safetensors").layers) == ["lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"]


def test_a_lora_that_does_not_fit_is_refused_and_the_users_networks_come_back(fake_webui):
    from lib_smooth.errors import LoraError, LoraShapeError

    networks, modules = fake_webui
    backend = a1111_backend(modules.shared.sd_model)
    loads = networks.load_networks

    def loading_with(matched):
        def load(names, te, unet, dyn):
            loads(names, te, unet, dyn)
            for network in networks.loaded_networks:
                if network.name == "smooth":
                    network.modules = matched

        return load

    assert backend.checked_lora_name("smooth") == "smooth"
    for matched, error, message in (
        ({}, LoraError, "matches none of this model's layers"),
        (
            {"x": FakeModule("lora_unet_layer", torch.nn.Linear(3, 2), rank=1, delta=(2, 2))},
            LoraShapeError,
            r"layer lora_unet_layer gives a \(2, 2\) delta but the model layer is \(2, 3\)",
        ),
    ):
        networks.load_networks = loading_with(matched)
        with pytest.raises(error, match=message):
            backend.checked_lora_name("smooth")
        with pytest.raises(error, match=message):
            with backend.use_lora("smooth", 1.0):
                pass
        assert [n.name for n in networks.loaded_networks] == ["user-style"]


def test_progress_drives_shared_state_and_honours_interrupt(fake_webui):
    from lib_smooth.webui.api import webui_progress

    _, modules = fake_webui
    progress = webui_progress("interpolate")
    progress(3, 10, torch.ones(2, 4, 8, 8))
    state = modules.shared.state
    assert (state.sampling_step, state.sampling_steps) == (3, 10) and "3/10" in state.textinfo
    assert state.current_latent.shape == (1, 4, 8, 8) and progress.bar.n == 3  # live preview and console bar
    for flag in ("interrupted", "skipped"):
        setattr(state, flag, True)
        with pytest.raises(Interrupted):
            progress(4, 10, None)
        setattr(state, flag, False)
    progress.close()


def _generation(fake_webui, prompts):
    return types.SimpleNamespace(
        all_prompts=list(prompts), all_hr_prompts=list(prompts[:1]), extra_generation_params={}, sd_model=fake_webui[1].shared.sd_model, sample=None
    )


def test_accordion_adds_the_lora_tag_and_infotext(fake_webui):
    p = _generation(fake_webui, ["a cat", "a dog"])
    add_lora_to_prompts(p, True, "smooth", 0.75)
    assert p.all_prompts == ["a cat <lora:smooth:0.75>", "a dog <lora:smooth:0.75>"] and p.all_hr_prompts == ["a cat <lora:smooth:0.75>"]
    assert p.extra_generation_params == {"Smooth-LoRA": "smooth:0.75"}
    untouched = _generation(fake_webui, ["a cat"])
    add_lora_to_prompts(untouched, False, "smooth", 1.0)
    add_lora_to_prompts(untouched, True, "None", 1.0)
    assert untouched.all_prompts == ["a cat"] and untouched.extra_generation_params == {}


def test_a_pasted_infotext_does_not_apply_the_lora_twice(fake_webui):
    p = _generation(fake_webui, ["a cat <lora:smooth:0.75>", "a dog"])
    add_lora_to_prompts(p, True, "smooth", 0.75)
    assert p.all_prompts == ["a cat <lora:smooth:0.75>", "a dog <lora:smooth:0.75>"]


@pytest.mark.parametrize(
    "lora, weight, reason, status",
    [("missing", 1.0, "LoRA 'missing' not found", 400), ("smooth", "heavy", "lora_weight must be of type float; got 'heavy'", 422)],
)
def test_accordion_problems_refuse_the_generation_with_the_reason(fake_webui, lora, weight, reason, status):
    from lib_smooth.webui.generation import GenerationRefused

    p = _generation(fake_webui, ["a cat"])
    add_lora_to_prompts(p, True, lora, weight)
    assert p.all_prompts == ["a cat"]
    with pytest.raises(GenerationRefused, match=reason) as refusal:
        p.sample(conditioning=None)
    assert refusal.value.status_code == status and reason.split(";")[0] in refusal.value.detail  # what the WebUI's API answers


def test_img2img_script_arguments_are_checked():
    from lib_smooth.errors import RequestError
    from lib_smooth.requests import SmoothInversionRequest, from_args

    assert from_args(SmoothInversionRequest, ["a cat", 0.8, "null-text"]) == SmoothInversionRequest("a cat", 0.8, "null-text")
    assert from_args(SmoothInversionRequest, []) == SmoothInversionRequest()  # every argument has its default
    for args, reason in (
        (["a", 0.8, "magic"], "inversion must be one of"),
        (["a", "0.8", "ddim"], "switch_ratio must be of type float; got '0.8'"),
        (["a", True, "ddim"], "switch_ratio must be of type float"),
        (["a", 1.2, "ddim"], "switch_ratio must be between 0 and 1"),
        ([None, 0.8, "ddim"], "source_prompt must be of type str; got null"),
        (["a", 0.8, "ddim", "extra"], "takes at most 3 arguments"),
    ):
        with pytest.raises(RequestError, match=reason):
            from_args(SmoothInversionRequest, args)


def test_infotext_round_trips():
    assert parse_infotext("smooth:0.75") == ("smooth", 0.75)
    assert parse_infotext("my:lora:1") == ("my:lora", 1.0)
    assert parse_infotext("plain") == ("plain", 1.0)
    assert accordion_from_infotext({"Prompt": "a cat <lora:my:lora:0.5>", "Smooth-LoRA": "my:lora:0.5"}) == ("my:lora", 0.5)
    assert accordion_from_infotext({"Prompt": "a cat", "Steps": "20"}) is None
    text = infotext(
        {
            "job": "interpolate",
            "model_hash": "abc",
            "lora": {"name": "smooth", "weight": 0.5},
            "settings": {"prompt_a": "a cat", "negative_prompt": "blurry", "steps": 20, "guidance": 7.5, "seed_a": 3, "width": 64, "height": 64},
        }
    )
    assert text.startswith("a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 3, Size: 64x64, Model hash: abc")
    assert "Smooth-LoRA: smooth:0.5" in text


def test_distance_plot_draws_each_model():
    smooth = {"mean": {"distances": [1.0, 1.1, 1.0], "mean_step": 1.03}}
    plain = {"mean": {"distances": [1.0, 3.0, 1.5], "mean_step": 1.83}}
    image = distance_plot([(name, r["mean"]["distances"], r["mean"]["mean_step"]) for name, r in (("with LoRA", smooth), ("without LoRA", plain))])
    assert image.size == (640, 360)
    dark = lambda box: sum(1 for r, g, b in image.crop(box).getdata() if r + g + b < 200)  # noqa: E731
    assert dark((0, 70, 62, 320)) > 20 and dark((72, 314, 640, 330)) > 10  # values on the y and the x axis
    assert dark((80, 22, 560, 46)) > 50  # the title, in the band above the plot area
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 16)}
    assert (0xD6, 0x27, 0x28) in colours and (0x1F, 0x77, 0xB4) in colours


def test_the_host_is_detected_and_an_unsupported_one_is_told_what_is_missing(fake_webui, monkeypatch):
    from lib_smooth.webui import host
    from lib_smooth.webui.automatic1111 import Automatic1111Backend

    assert host.unsupported_reason() is None and isinstance(host.open_backend(), Automatic1111Backend)
    monkeypatch.setitem(sys.modules, "modules.prompt_parser", None)  # an SD.Next-like host without it
    assert host.missing_pieces() == ["modules.prompt_parser"]
    with pytest.raises(host.UnsupportedHost, match=r"lacks modules.prompt_parser — use AUTOMATIC1111 1.10, WebUI Forge"):
        host.open_backend()
    monkeypatch.setitem(sys.modules, "modules.prompt_parser", types.SimpleNamespace(SdConditioning=list))
    monkeypatch.setitem(sys.modules, "modules_forge", types.ModuleType("modules_forge"))  # a Forge fork that moved Forge's pieces
    assert host.missing_pieces() == ["modules.sd_models.forge_model_reload", "backend.memory_management"]
    assert "looks like Forge but lacks modules.sd_models.forge_model_reload, backend.memory_management" in host.unsupported_reason()
    p = _generation(fake_webui, ["a cat"])
    add_lora_to_prompts(p, True, "smooth", 1.0)  # the accordion there: refused with the reason, not a traceback
    with pytest.raises(Exception, match="looks like Forge but lacks"):
        p.sample()


def test_each_tab_job_gets_a_folder_of_its_own(monkeypatch, tmp_path):
    """Jobs finishing within the same second (a comparison's two runs, a tiny model) never share, and so
    never overwrite, a results folder."""
    import lib_smooth.webui.ui as ui

    monkeypatch.setattr(ui, "_opt", lambda key, default: str(tmp_path) if key == "smooth_diffusion_outdir" else default)
    folders = [ui._outdir("invert") for _ in range(3)]
    assert len(set(folders)) == 3 and all(folder.is_dir() and not any(folder.iterdir()) for folder in folders)
    assert all(re.fullmatch(r"\d{6}-invert(-\d+)?", folder.name) for folder in folders)


def test_empty_boxes_are_empty_text_or_a_named_refusal():
    """None (a gradio 4 client's default textbox, a cleared number box): text becomes "", a seed is asked for by name."""
    import lib_smooth.webui.ui as ui

    assert ui._text(None) == "" and ui._text("a cat") == "a cat"
    assert ui._seed(7.0, "Seed A") == 7
    with pytest.raises(ValueError, match="Seed A is empty: enter a whole number"):
        ui._seed(None, "Seed A")

"""The "Smooth Diffusion" tab (interpolation, inversion & editing, smoothness), its settings, and saving.

Only gradio components from the subset shared by gradio 3.41 (A1111) and 4.x are used. Each button
runs through the WebUI's GPU queue (`wrap_gradio_gpu_call`) with a task id, so the WebUI progress bar,
ETA, live preview and Interrupt work as in txt2img.
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path
from typing import List

from .. import __version__
from ..export import write_animation, write_json
from ..images import png_bytes
from ..metrics import EXPLANATIONS
from ..metrics import smoothness as sequence_smoothness
from ..plots import distance_plot
from ..requests import EditRequest, InterpolateRequest, InvertRequest, IstdRequest, field_meta, type_name, validate
from .api import execute

TAB_ID = "smooth_diffusion"
DEFAULT_PROMPTS = [
    "a photograph of a cat",
    "a red car parked on a street",
    "a bowl of fruit on a table",
    "a mountain lake at sunrise",
    "a portrait of an old man",
]
NONE = "None"


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    section = ("smooth_diffusion", "Smooth Diffusion")
    options = {
        "smooth_diffusion_default_lora": shared.OptionInfo(NONE, "Default Smooth-LoRA (a name from the Lora folder, or None)", section=section),
        "smooth_diffusion_lora_weight": shared.OptionInfo(
            1.0, "Default LoRA weight", gr.Slider, {"minimum": 0.0, "maximum": 2.0, "step": 0.05}, section=section
        ),
        "smooth_diffusion_frames": shared.OptionInfo(
            24, "Default interpolation frames", gr.Slider, {"minimum": 2, "maximum": 120, "step": 1}, section=section
        ),
        "smooth_diffusion_steps": shared.OptionInfo(50, "Default DDIM steps", gr.Slider, {"minimum": 1, "maximum": 150, "step": 1}, section=section),
        "smooth_diffusion_size": shared.OptionInfo(
            0,
            "Default width and height (0: the loaded model's native size — 512 SD1, 768 SD2-v, 1024 SDXL, 64 shapes-sd1)",
            gr.Slider,
            {"minimum": 0, "maximum": 2048, "step": 8},
            section=section,
        ),
        "smooth_diffusion_formats": shared.OptionInfo(
            ["gif"], "Animation formats to save (mp4 needs ffmpeg)", gr.CheckboxGroup, {"choices": ["gif", "webp", "mp4"]}, section=section
        ),
        "smooth_diffusion_outdir": shared.OptionInfo("outputs/smooth-diffusion", "Output folder", section=section),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)


def _opt(name: str, default):
    from modules import shared

    return getattr(shared.opts, name, default)


def _lora_choices() -> List[str]:
    try:
        from .lora import available

        return [NONE] + available()
    except Exception:  # Lora extension disabled: the tab still works without LoRAs
        return [NONE]


def _outdir(job: str) -> Path:
    stamp = datetime.datetime.now()
    day = Path(_opt("smooth_diffusion_outdir", "outputs/smooth-diffusion")) / stamp.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    for count in range(1, 1000):  # a folder of its own even for jobs started within the same second
        folder = day / (f"{stamp:%H%M%S}-{job}" + (f"-{count}" if count > 1 else ""))
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"more than 999 {job} results in {day} within one second")


def infotext(sidecar: dict) -> str:
    """A WebUI-style parameters text, so a frame sent to txt2img/img2img carries its settings."""
    s = sidecar["settings"]
    prompt = s.get("prompt_a") or s.get("prompt") or ""
    fields = {
        "Steps": s.get("steps"),
        "Sampler": "DDIM",
        "CFG scale": s.get("guidance"),
        "Seed": s.get("seed_a", s.get("seed")),
        "Size": f"{s.get('width')}x{s.get('height')}",
        "Model hash": sidecar.get("model_hash"),
        "Smooth Diffusion": f"{sidecar['job']} (lib_smooth {__version__})",
    }
    if sidecar.get("lora"):
        fields["Smooth-LoRA"] = f"{sidecar['lora']['name']}:{sidecar['lora']['weight']:g}"
    negative = f"\nNegative prompt: {s['negative_prompt']}" if s.get("negative_prompt") else ""
    return prompt + negative + "\n" + ", ".join(f"{k}: {v}" for k, v in fields.items() if v not in (None, ""))


def save_run(job: str, images: dict, sidecar: dict, frames=None) -> Path:
    """PNGs with the parameters text, the animation in the chosen formats, and the sidecar JSON."""
    from PIL.PngImagePlugin import PngInfo

    folder = _outdir(job)
    info = PngInfo()
    info.add_text("parameters", infotext(sidecar))
    for name, image in images.items():
        image.save(folder / f"{name}.png", pnginfo=info)
    if frames:
        for index, frame in enumerate(frames):
            frame.save(folder / f"frame_{index:03d}.png", pnginfo=info)
        sidecar = dict(sidecar, files=write_animation(frames, folder / "interpolation", _opt("smooth_diffusion_formats", ["gif"])))
    write_json(sidecar, folder / "sidecar.json")
    return folder


def _text(value) -> str:
    """A textbox's value, "" for None: what a gradio 4 client sends for a textbox it leaves at its default
    (a browser sends "")."""
    return "" if value is None else value


def _seed(value, label: str) -> int:
    """A seed box's value; a cleared box (None) is refused by name instead of failing inside int()."""
    if value is None:
        raise ValueError(f"{label} is empty: enter a whole number")
    return int(value)


def _job_fields(steps, guidance, inversion_guidance, inversion, width, height, lora, weight, compare) -> dict:
    """The request fields the Interpolation and Inversion panels share, from their components' values."""
    return dict(
        steps=int(steps),
        guidance=float(guidance),
        inversion_guidance=float(inversion_guidance),
        inversion=inversion,
        **_size_fields(width, height),
        **_lora_fields(lora, weight),
        compare_without_lora=bool(compare),
    )


def _size_fields(width, height) -> dict:
    """A size slider at 0 means the loaded model's native size (the request leaves it unset)."""
    return {"width": int(width) or None, "height": int(height) or None}


def request_size(result: dict) -> str:
    settings = result["sidecar"]["settings"]
    return f"{settings['width']}×{settings['height']}"


def _lora_fields(lora: str, weight: float) -> dict:
    return {"lora": None if lora in (None, "", NONE) else lora, "lora_weight": float(weight)}


def interpolate(
    task_id,
    lora,
    weight,
    image_a,
    image_b,
    prompt_a,
    prompt_b,
    negative,
    seed_a,
    seed_b,
    frames,
    steps,
    guidance,
    inversion_guidance,
    inversion,
    width,
    height,
    compare=False,
):
    encode = lambda img: base64.b64encode(png_bytes(img)).decode() if img is not None else None  # noqa: E731
    request = validate(
        InterpolateRequest(
            prompt_a=_text(prompt_a),
            prompt_b=_text(prompt_b),
            negative_prompt=_text(negative),
            image_a=encode(image_a),
            image_b=encode(image_b),
            seed_a=_seed(seed_a, "Seed A"),
            seed_b=_seed(seed_b, "Seed B"),
            frames=int(frames),
            **_job_fields(steps, guidance, inversion_guidance, inversion, width, height, lora, weight, compare),
        )
    )
    result = execute("interpolate", request)
    folder = save_run("interpolate", {}, result["sidecar"], result["frames"])
    animation = next((str(p) for p in sorted(folder.glob("interpolation.*")) if p.suffix in (".gif", ".webp")), None)
    runs = [("with LoRA" if request.lora else "checkpoint", result["frames"])]
    plain_frames = None
    saved = f"<p>Saved to {folder}</p>"
    if "frames_without_lora" in result:  # the same ends, seeds and prompts without the LoRA: the LoRA is the only difference
        plain_frames = result["frames_without_lora"]
        runs.append(("without LoRA", plain_frames))
        saved += f"<p>Without the LoRA: {save_run('interpolate-without-lora', {}, result['sidecar_without_lora'], plain_frames)}</p>"
    figures = [(name, sequence_smoothness(frames)) for name, frames in runs]
    plot = distance_plot([(name, s.distances, s.mean_step) for name, s in figures])
    return result["frames"], animation, infotext(result["sidecar"]), plain_frames, plot, _comparison_html(figures) + saved


def _table_html(corner: str, columns, rows, titles=None) -> str:
    """A figures table, one row per run: rows are (run name, cells); titles are the columns' tooltips."""
    header = "".join(
        f"<th title='{title}'>{name}</th>" if title else f"<th>{name}</th>" for name, title in zip(columns, titles or [None] * len(columns))
    )
    body = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" for name, cells in rows)
    return f"<div class='smooth-diffusion-table-wrap'><table class='smooth-diffusion-table'><tr><th>{corner}</th>{header}</tr>{body}</table></div>"


def _comparison_html(figures) -> str:
    """ISTD and its companions of each run."""
    keys = ("istd", "normalized_istd", "max_step_ratio", "mean_step")
    rows = [(name, [f"{getattr(s, key):.4g}" for key in keys]) for name, s in figures]
    return _table_html("", keys, rows, [EXPLANATIONS[key] for key in keys])


def _reconstruction_html(runs) -> str:
    """Reconstruction metrics of each run."""
    rows = [
        (name, [f"{m['psnr']:.2f} dB", f"{m['ssim']:.4f}", f"{m['mse']:.4f}", "unavailable" if m["lpips"] is None else f"{m['lpips']:.4f}"])
        for name, m in runs
    ]
    return _table_html("reconstruction", ("PSNR", "SSIM", "MSE", "LPIPS"), rows)


def invert_or_edit(
    task_id,
    lora,
    weight,
    image,
    prompt,
    target_prompt,
    negative,
    switch_ratio,
    steps,
    guidance,
    inversion_guidance,
    inversion,
    width,
    height,
    compare=False,
):
    if image is None:
        raise ValueError("upload an image to invert")
    fields = dict(
        image=base64.b64encode(png_bytes(image)).decode(),
        prompt=_text(prompt),
        negative_prompt=_text(negative),
        **_job_fields(steps, guidance, inversion_guidance, inversion, width, height, lora, weight, compare),
    )
    target_prompt = _text(target_prompt)
    job = "edit" if target_prompt.strip() else "invert"
    request = validate(
        EditRequest(target_prompt=target_prompt, switch_ratio=float(switch_ratio), **fields) if job == "edit" else InvertRequest(**fields)
    )
    result = execute(job, request)
    images = {"input": result["input"], "reconstruction": result["reconstruction"]}
    if "edited" in result:
        images["edited"] = result["edited"]
    runs = [("with LoRA" if request.lora else "checkpoint", result["metrics"])]
    shown = list(images.values())
    saved = f"<p>Saved to {save_run(job, images, result['sidecar'])}</p>"
    if "metrics_without_lora" in result:  # the same image and prompts without the LoRA: the LoRA is the only difference
        plain_images = {name: result[f"{name}_without_lora"] for name in ("reconstruction", "edited") if f"{name}_without_lora" in result}
        shown += list(plain_images.values())
        runs.append(("without LoRA", result["metrics_without_lora"]))
        saved = f"<p>Gallery: the input, then {' and '.join(plain_images)} with the LoRA, then without it.</p>" + saved
        saved += f"<p>Without the LoRA: {save_run(f'{job}-without-lora', plain_images, result['sidecar_without_lora'])}</p>"
    return shown, infotext(result["sidecar"]), _reconstruction_html(runs) + saved


def smoothness(task_id, lora, weight, prompts_text, pairs, points, steps, guidance, width, height, seed):
    prompts = [line.strip() for line in _text(prompts_text).splitlines() if line.strip()]
    request = validate(
        IstdRequest(
            prompts=prompts,
            pairs=int(pairs),
            points=int(points),
            steps=int(steps),
            guidance=float(guidance),
            **_size_fields(width, height),
            seed=_seed(seed, "Seed"),
            compare_without_lora=lora not in (None, "", NONE),
            **_lora_fields(lora, weight),
        )
    )
    result = execute("istd", request)
    reports = [("with LoRA" if request.lora else "checkpoint", result["istd"])]
    if "istd_without_lora" in result:
        reports.append(("without LoRA", result["istd_without_lora"]))
    rows = [(name, [f"{r['mean'][key]:.4g}" for key in EXPLANATIONS]) for name, r in reports]
    notes = "".join(f"<li><b>{key}</b>: {text}</li>" for key, text in EXPLANATIONS.items())
    html = (
        _table_html("", list(EXPLANATIONS), rows, list(EXPLANATIONS.values()))
        + f"<p>{request_size(result)} px, {len(prompts)} prompts × {int(pairs)} pairs, {int(points)} points</p><ul>{notes}</ul>"
    )
    plot = distance_plot([(name, report["mean"]["distances"], report["mean"]["mean_step"]) for name, report in reports])
    save_run("istd", {"distances": plot}, dict(result["sidecar"], report={name: r for name, r in reports}))
    return plot, html


def slider(cls: type, name: str, label: str, value=None, step=None, **extra):
    """A slider whose bounds come from the request model's field metadata, so the tab, the API and the
    CLI share limits; `value` defaults to the field's default, `step` to 1 for integers."""
    import dataclasses

    import gradio as gr

    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = spec.metadata
    step = step or meta.get("multiple_of") or (1 if type_name(spec) == "int" else 0.05)
    return gr.Slider(minimum=meta["low"], maximum=meta["high"], step=step, value=spec.default if value is None else value, label=label, **extra)


def _size_row():
    import gradio as gr

    side = int(_opt("smooth_diffusion_size", 0))
    meta = field_meta(InterpolateRequest, "width")
    with gr.Row():
        # 0 = the loaded model's native size; the request model's limits otherwise
        width = gr.Slider(minimum=0, maximum=meta["high"], step=meta["multiple_of"], value=side, label="Width (0: model's native size)")
        height = gr.Slider(minimum=0, maximum=meta["high"], step=meta["multiple_of"], value=side, label="Height (0: model's native size)")
    return width, height


def tool_button(text: str, elem_id: str):
    """The WebUI's small icon button (ToolButton, in AUTOMATIC1111 and Forge), a plain button elsewhere."""
    import gradio as gr

    try:
        from modules.ui_components import ToolButton
    except ImportError:
        return gr.Button(text, elem_id=elem_id)
    return ToolButton(value=text, elem_id=elem_id)


def _interrupt_button(job: str):
    """The WebUI's own Interrupt: stops the running job within one sampling step."""
    import gradio as gr
    from modules import shared

    button = gr.Button("Interrupt", elem_id=f"smooth_diffusion_{job}_interrupt")
    button.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
    return button


def _submit_kwargs(js_function: str) -> dict:
    """`_js` on gradio 3 (A1111), `js` on gradio 4."""
    import gradio as gr

    return {"_js": js_function} if int(gr.__version__.split(".")[0]) < 4 else {"js": js_function}


def build_tab():
    import gradio as gr
    from modules.call_queue import wrap_gradio_gpu_call

    from .host import unsupported_reason

    with gr.Blocks(analytics_enabled=False) as tab:
        reason = unsupported_reason()
        if reason:  # a clear message in the tab instead of a traceback at start-up
            gr.HTML(f"<h3>Smooth Diffusion cannot run in this WebUI.</h3><p>{html.escape(reason)}</p>")
            return [(tab, "Smooth Diffusion", TAB_ID)]
        with gr.Row(elem_id="smooth_diffusion_lora_row"):
            default = _opt("smooth_diffusion_default_lora", NONE)
            lora = gr.Dropdown(
                label="Smooth-LoRA", choices=_lora_choices(), value=default if default in _lora_choices() else NONE, elem_id="smooth_diffusion_lora"
            )
            refresh = tool_button("🔄", "smooth_diffusion_refresh")
            weight = slider(
                InterpolateRequest, "lora_weight", "LoRA weight", _opt("smooth_diffusion_lora_weight", 1.0), elem_id="smooth_diffusion_weight"
            )
        refresh.click(fn=lambda: gr.update(choices=lora_choices_refreshed()), inputs=[], outputs=[lora])
        task_id = gr.Textbox(visible=False, elem_id="smooth_diffusion_task")
        frames_default, steps_default = _opt("smooth_diffusion_frames", 24), _opt("smooth_diffusion_steps", 50)
        with gr.Tabs(elem_id="smooth_diffusion_panels"):
            with gr.Tab("Interpolation", elem_id="smooth_diffusion_interpolation_tab"):
                with gr.Row():
                    with gr.Column():
                        with gr.Row():
                            image_a = gr.Image(label="Image A (optional: else seed A)", type="pil", elem_id="smooth_diffusion_image_a")
                            image_b = gr.Image(label="Image B (optional: else seed B)", type="pil", elem_id="smooth_diffusion_image_b")
                        prompt_a = gr.Textbox(label="Prompt A", lines=2, elem_id="smooth_diffusion_prompt_a")
                        prompt_b = gr.Textbox(label="Prompt B (optional)", lines=2, elem_id="smooth_diffusion_prompt_b")
                        negative = gr.Textbox(label="Negative prompt", elem_id="smooth_diffusion_negative")
                        with gr.Row():
                            seed_a = gr.Number(label="Seed A", value=1, precision=0)
                            seed_b = gr.Number(label="Seed B", value=2, precision=0)
                        with gr.Row():
                            frames = slider(InterpolateRequest, "frames", "Frames", frames_default)
                            steps = slider(InterpolateRequest, "steps", "DDIM steps", steps_default)
                        with gr.Row():
                            guidance = slider(InterpolateRequest, "guidance", "Guidance", step=0.5)
                            inversion_guidance = slider(InterpolateRequest, "inversion_guidance", "Inversion guidance", step=0.5)
                        inversion = gr.Dropdown(
                            label="Inversion (image ends)",
                            choices=list(field_meta(InterpolateRequest, "inversion")["choices"]),
                            value="ddim",
                            info="null-text: official demo's default, ≈ 10× slower inversion, far better reconstruction",
                        )
                        width, height = _size_row()
                        compare = gr.Checkbox(
                            label="Also without the LoRA (side by side, same seeds and prompts)", value=False, elem_id="smooth_diffusion_compare"
                        )
                        with gr.Row():
                            go = gr.Button("Interpolate", variant="primary", elem_id="smooth_diffusion_interpolate")
                            _interrupt_button("interpolate")
                    with gr.Column():
                        # with the comparison on, the two runs' frames one above the other, then their distances and figures
                        _progress_anchor("interpolate")
                        gallery = _gallery("Frames", "smooth_diffusion_gallery", 4)
                        gallery_plain = _gallery("Without the LoRA", "smooth_diffusion_gallery_plain", 4, show_label=True, visible=False)
                        distances = gr.Image(label="Adjacent-frame distances", type="pil", elem_id="smooth_diffusion_interpolate_plot")
                        log = gr.HTML(elem_id="smooth_diffusion_interpolate_log")
                        # at a size that does not blow a 64 px GIF up to the column
                        animation = gr.Image(label="Animation", type="filepath", height=320, elem_id="smooth_diffusion_interpolate_animation")
                        info = _parameters("interpolate", gallery)
                compare.change(
                    fn=lambda on: (gr.update(visible=bool(on)), gr.update(label="With the LoRA" if on else "Frames", show_label=bool(on))),
                    inputs=[compare],
                    outputs=[gallery_plain, gallery],
                )
                go.click(
                    fn=wrap_gradio_gpu_call(interpolate, extra_outputs=[None, None, "", None, None]),
                    inputs=[
                        task_id,
                        lora,
                        weight,
                        image_a,
                        image_b,
                        prompt_a,
                        prompt_b,
                        negative,
                        seed_a,
                        seed_b,
                        frames,
                        steps,
                        guidance,
                        inversion_guidance,
                        inversion,
                        width,
                        height,
                        compare,
                    ],
                    outputs=[gallery, animation, info, gallery_plain, distances, log],
                    **_submit_kwargs("smoothDiffusionSubmitInterpolate"),
                )
            with gr.Tab("Inversion & editing", elem_id="smooth_diffusion_inversion_tab"):
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(label="Image", type="pil", elem_id="smooth_diffusion_image")
                        source = gr.Textbox(label="Source prompt (describes the image)", lines=2)
                        target = gr.Textbox(label="Target prompt (optional: edit)", lines=2)
                        negative_inv = gr.Textbox(label="Negative prompt")
                        switch = slider(EditRequest, "switch_ratio", "Switch threshold r (target prompt for the last r of the steps)")
                        with gr.Row():
                            steps_inv = slider(InvertRequest, "steps", "DDIM steps", steps_default)
                            guidance_inv = slider(InvertRequest, "guidance", "Guidance", step=0.5)
                            inversion_guidance_inv = slider(InvertRequest, "inversion_guidance", "Inversion guidance", step=0.5)
                        mode = gr.Dropdown(
                            label="Inversion",
                            choices=list(field_meta(InvertRequest, "inversion")["choices"]),
                            value="ddim",
                            info="null-text: steps × 10 extra UNet passes; much better reconstruction",
                        )
                        width_inv, height_inv = _size_row()
                        compare_inv = gr.Checkbox(
                            label="Also without the LoRA (the same image and prompts)", value=False, elem_id="smooth_diffusion_invert_compare"
                        )
                        with gr.Row():
                            go_inv = gr.Button("Invert / edit", variant="primary", elem_id="smooth_diffusion_invert")
                            _interrupt_button("invert")
                    with gr.Column():
                        results, info_inv, report = _results_column(
                            "invert", "Input · reconstruction · edit", "smooth_diffusion_inversion_gallery", 3
                        )
                go_inv.click(
                    fn=wrap_gradio_gpu_call(invert_or_edit, extra_outputs=[None, ""]),
                    inputs=[
                        task_id,
                        lora,
                        weight,
                        image,
                        source,
                        target,
                        negative_inv,
                        switch,
                        steps_inv,
                        guidance_inv,
                        inversion_guidance_inv,
                        mode,
                        width_inv,
                        height_inv,
                        compare_inv,
                    ],
                    outputs=[results, info_inv, report],
                    **_submit_kwargs("smoothDiffusionSubmitInvert"),
                )
            with gr.Tab("Smoothness", elem_id="smooth_diffusion_smoothness_tab"):
                with gr.Row():
                    with gr.Column():
                        prompts = gr.Textbox(label="Prompts, one per line", lines=6, value="\n".join(DEFAULT_PROMPTS))
                        with gr.Row():
                            pairs = slider(IstdRequest, "pairs", "Noise pairs per prompt", 2)
                            points = slider(IstdRequest, "points", "Points per sequence (paper: 11)")
                        with gr.Row():
                            steps_istd = slider(IstdRequest, "steps", "DDIM steps", steps_default)
                            guidance_istd = slider(IstdRequest, "guidance", "Guidance", step=0.5)
                        width_istd, height_istd = _size_row()
                        seed_istd = gr.Number(label="Seed", value=0, precision=0)
                        with gr.Row():
                            go_istd = gr.Button("Measure ISTD", variant="primary", elem_id="smooth_diffusion_istd")
                            _interrupt_button("istd")
                    with gr.Column():
                        gr.HTML("<div id='smooth_diffusion_istd_progress'></div>")
                        plot = gr.Image(label="Adjacent-frame distances", type="pil", elem_id="smooth_diffusion_plot")
                        table = gr.HTML(elem_id="smooth_diffusion_istd_log")
                go_istd.click(
                    fn=wrap_gradio_gpu_call(smoothness, extra_outputs=[None]),
                    inputs=[task_id, lora, weight, prompts, pairs, points, steps_istd, guidance_istd, width_istd, height_istd, seed_istd],
                    outputs=[plot, table],
                    **_submit_kwargs("smoothDiffusionSubmitIstd"),
                )
    return [(tab, "Smooth Diffusion", TAB_ID)]


def lora_choices_refreshed() -> List[str]:
    try:
        from .lora import refresh

        return [NONE] + refresh()
    except Exception:
        return [NONE]


def _progress_anchor(job: str) -> None:
    import gradio as gr

    gr.HTML(f"<div id='smooth_diffusion_{job}_progress'></div>")


def _gallery(label: str, elem_id: str, columns: int, show_label: bool = False, visible: bool = True):
    import gradio as gr

    # no label badge over the first thumbnail unless the gallery must say which run it shows
    return gr.Gallery(label=label, show_label=show_label, elem_id=elem_id, columns=columns, object_fit="contain", visible=visible)


def _parameters(job: str, gallery):
    """The job's parameters, with buttons sending the selected image and them to txt2img / img2img."""
    import gradio as gr

    info = gr.Textbox(label="Parameters", lines=3, elem_id=f"smooth_diffusion_{job}_infotext")
    with gr.Row():
        _send_buttons(gallery, info)
    return info


def _results_column(job: str, label: str, gallery_id: str, columns: int):
    """Progress anchor, gallery, parameters with send-to buttons, and a log line."""
    import gradio as gr

    _progress_anchor(job)
    gallery = _gallery(label, gallery_id, columns)
    info = _parameters(job, gallery)
    log = gr.HTML(elem_id=f"smooth_diffusion_{job}_log")
    return gallery, info, log


def _send_buttons(gallery, text):
    """Send the selected image and its parameters to txt2img / img2img (the WebUI's paste machinery)."""
    from modules import infotext_utils

    buttons = infotext_utils.create_buttons(["txt2img", "img2img"])
    for tabname, button in buttons.items():
        infotext_utils.register_paste_params_button(
            infotext_utils.ParamBinding(paste_button=button, tabname=tabname, source_text_component=text, source_image_component=gallery)
        )
    return buttons

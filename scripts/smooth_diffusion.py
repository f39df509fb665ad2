"""Smooth Diffusion extension for the AUTOMATIC1111 WebUI and WebUI Forge: registers the tab, settings, routes and scripts.

All logic lives in the `lib_smooth` package beside this folder; the WebUI puts the extension root on
sys.path only while this file is imported, so everything is imported here, at top level.
"""

import gradio as gr
from modules import processing, script_callbacks, scripts

import lib_smooth.webui.api as smooth_api
import lib_smooth.webui.generation as smooth_generation
import lib_smooth.webui.ui as smooth_ui
from lib_smooth.errors import RequestError
from lib_smooth.requests import AccordionRequest, SmoothInversionRequest, field_meta, from_args


def on_app_started(_demo, app) -> None:
    smooth_api.register(app)


script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_tabs(smooth_ui.build_tab)
script_callbacks.on_ui_settings(smooth_ui.on_ui_settings)


class SmoothLoraAccordion(scripts.Script):
    """Apply a Smooth-LoRA to ordinary txt2img / img2img generations (also via the API's alwayson_scripts)."""

    def title(self):
        return "Smooth Diffusion"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("Smooth Diffusion", open=False, elem_id=self.elem_id("accordion")):
            enabled = gr.Checkbox(label="Apply Smooth-LoRA", value=False, elem_id=self.elem_id("enabled"))
            with gr.Row(elem_id=self.elem_id("lora_row")):
                lora = gr.Dropdown(label="Smooth-LoRA", choices=smooth_ui._lora_choices(), value=smooth_ui.NONE, elem_id=self.elem_id("lora"))
                refresh = smooth_ui.tool_button("🔄", self.elem_id("refresh"))  # LoRAs added since start-up
                weight = smooth_ui.slider(AccordionRequest, "lora_weight", "Weight", elem_id=self.elem_id("weight"))
            refresh.click(fn=lambda: gr.update(choices=smooth_ui.lora_choices_refreshed()), inputs=[], outputs=[lora])
        pasted = smooth_generation.accordion_from_infotext
        self.infotext_fields = [
            (enabled, lambda d: pasted(d) is not None),
            (lora, lambda d: pasted(d)[0] if pasted(d) else gr.update()),
            (weight, lambda d: pasted(d)[1] if pasted(d) else gr.update()),
        ]
        return [enabled, lora, weight]

    def process(self, p, *args):
        smooth_generation.add_lora_to_prompts(p, *args)


class SmoothInversion(scripts.Script):
    """img2img: start from the DDIM inversion of the init image instead of fresh noise (reconstruct or edit)."""

    def title(self):
        return "Smooth inversion"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        source = gr.Textbox(
            label="Source prompt (describes the init image; empty: reconstruct with the prompt)", lines=2, elem_id=self.elem_id("source")
        )
        switch = smooth_ui.slider(
            SmoothInversionRequest, "switch_ratio", "Switch threshold r (the prompt drives the last r of the steps)", elem_id=self.elem_id("switch")
        )
        mode = gr.Dropdown(
            label="Inversion (the whole schedule is inverted: Denoising strength is not used)",
            choices=list(field_meta(SmoothInversionRequest, "inversion")["choices"]),
            value="ddim",
            elem_id=self.elem_id("mode"),
        )
        return [source, switch, mode]

    def run(self, p, *args):
        try:
            request = from_args(SmoothInversionRequest, args)
        except RequestError as error:
            raise smooth_generation.refused(error) from None
        p.sample = smooth_generation.smooth_inversion_sampler(p, request)
        return processing.process_images(p)

"""Run by the WebUI at launch: install only what the WebUI lacks; never touches torch, gradio or transformers."""

import importlib.util

import launch

# lib_smooth needs torch, numpy, pillow, safetensors and tqdm; the WebUI ships them all.
for module, requirement in (("safetensors", "safetensors"), ("tqdm", "tqdm")):
    if importlib.util.find_spec(module) is None:
        launch.run_pip(f"install {requirement}", f"{requirement} for Smooth Diffusion")

"""Smooth Diffusion (Guo et al., CVPR 2024) inference tools: DDIM sampling and inversion, smooth
interpolation, prompt-switch editing, the ISTD smoothness metric and Smooth-LoRA file formats.

The core modules talk to a model only through :class:`lib_smooth.backend.Backend`; they import no
diffusers, transformers or gradio. Model hosts live in ``lib_smooth.backends`` (diffusers) and
``lib_smooth.webui`` (the AUTOMATIC1111 WebUI).
"""

__version__ = "0.1.0"

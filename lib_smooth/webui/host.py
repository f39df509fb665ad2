"""Which WebUI the extension runs in, and the Backend adapter for it — one module per host.

The tab, the routes, the accordion and the img2img script are host-independent; they get the loaded
model through :func:`open_backend`. Supported: AUTOMATIC1111 1.10 (``automatic1111.py``). WebUI Forge
(and its forks) replaced the model objects with its own backend and is not supported yet; any other host
(SD.Next, an unknown fork) is told which of the pieces the extension needs are missing.
"""

from __future__ import annotations

import importlib
from typing import List, Optional

from ..errors import SmoothDiffusionError

# what the AUTOMATIC1111 adapter calls: module → attributes
AUTOMATIC1111_NEEDS = {
    "modules.shared": ("state", "opts"),
    "modules.devices": ("autocast", "device"),
    "modules.sd_models": ("apply_alpha_schedule_override",),
    "modules.prompt_parser": ("SdConditioning",),
    "modules.sd_samplers_common": ("store_latent",),
}


class UnsupportedHost(SmoothDiffusionError):
    """The running WebUI does not expose what the extension needs."""


def is_forge() -> bool:
    try:
        importlib.import_module("modules_forge")  # only Forge and its forks ship it
        return True
    except ImportError:
        return False


def missing_pieces() -> List[str]:
    """The names the AUTOMATIC1111 adapter needs that this host lacks ("module.attribute")."""
    missing = []
    for module, attributes in AUTOMATIC1111_NEEDS.items():
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        missing.extend(f"{module}.{name}" for name in attributes if not hasattr(loaded, name))
    return missing


def unsupported_reason() -> Optional[str]:
    """Why this host cannot run the extension, or None when it can."""
    if is_forge():
        return (
            "Smooth Diffusion does not support WebUI Forge yet: Forge replaced AUTOMATIC1111's model objects with its own "
            "backend; use AUTOMATIC1111 stable-diffusion-webui 1.10 or the command line (python -m lib_smooth)"
        )
    missing = missing_pieces()
    if missing:
        return (
            "Smooth Diffusion runs in AUTOMATIC1111 stable-diffusion-webui 1.10; this WebUI lacks "
            + ", ".join(missing)
            + " — use AUTOMATIC1111 1.10 or the command line (python -m lib_smooth)"
        )
    return None


def open_backend(sd_model=None):
    """The Backend over the host's loaded model (or `sd_model`)."""
    reason = unsupported_reason()
    if reason:
        raise UnsupportedHost(reason)
    from .automatic1111 import Automatic1111Backend

    return Automatic1111Backend(sd_model)

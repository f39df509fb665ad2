"""Which WebUI the extension runs in, and the Backend adapter for it — one module per host.

The tab, the routes, the accordion and the img2img script are host-independent; they get the loaded
model through :func:`open_backend`. Supported: AUTOMATIC1111 1.10 (``automatic1111.py``) and WebUI Forge
(``forge.py``), told apart by Forge's ``modules_forge`` package. A host lacking what its adapter calls
(SD.Next, a fork that moved things) is told which pieces are missing instead of failing mid-job.
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


# what the Forge adapter calls besides the shared ones (shared.state/opts, prompt_parser, store_latent)
FORGE_NEEDS = {
    "modules.shared": ("state", "opts"),
    "modules.sd_models": ("forge_model_reload",),
    "modules.prompt_parser": ("SdConditioning",),
    "modules.sd_samplers_common": ("store_latent",),
    "backend.memory_management": ("load_model_gpu", "get_torch_device"),
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
    """The names this host's adapter needs that the host lacks ("module.attribute")."""
    missing = []
    for module, attributes in (FORGE_NEEDS if is_forge() else AUTOMATIC1111_NEEDS).items():
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        missing.extend(f"{module}.{name}" for name in attributes if not hasattr(loaded, name))
    return missing


def unsupported_reason() -> Optional[str]:
    """Why this host cannot run the extension, or None when it can."""
    missing = missing_pieces()
    if missing:
        return (
            "Smooth Diffusion runs in AUTOMATIC1111 stable-diffusion-webui 1.10 and WebUI Forge; this WebUI "
            + ("looks like Forge but " if is_forge() else "")
            + "lacks "
            + ", ".join(missing)
            + " — use AUTOMATIC1111 1.10, WebUI Forge (lllyasviel/stable-diffusion-webui-forge) or the command line (python -m lib_smooth)"
        )
    return None


def open_backend(sd_model=None):
    """The Backend over the host's loaded model (or `sd_model`)."""
    reason = unsupported_reason()
    if reason:
        raise UnsupportedHost(reason)
    if is_forge():
        from .forge import ForgeBackend

        return ForgeBackend(sd_model)
    from .automatic1111 import Automatic1111Backend

    return Automatic1111Backend(sd_model)

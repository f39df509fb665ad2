"""Smooth Diffusion extension for the AUTOMATIC1111 WebUI: registers the HTTP routes.

All logic lives in the `lib_smooth` package beside this folder; the WebUI puts the extension root on
sys.path only while this file is imported, so the package is imported here, at top level.
"""

from modules import script_callbacks

import lib_smooth.webui.api as smooth_api


def on_app_started(_demo, app) -> None:
    smooth_api.register(app)


script_callbacks.on_app_started(on_app_started)

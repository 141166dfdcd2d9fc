"""The progress bars Hugging Face libraries draw while they load weights, off on request.

transformers draws "Loading weights" for each ``from_pretrained`` of the megasr engine's text
encoder and extractors, and huggingface_hub one per download; a command asked to be quiet
should print neither. Both read ``HF_HUB_DISABLE_PROGRESS_BARS`` when first imported, so
setting it before the engine is built costs no import here; a library already imported is
switched off through its own call. diffusers has no such variable: the MegaSR checkpoint
loader reads the same one before it loads a pipeline (diffusers draws "Loading pipeline
components..." there).
"""

from __future__ import annotations

import os
import sys

_SWITCHES = (
    ("huggingface_hub.utils", "disable_progress_bars"),
    ("transformers.utils.logging", "disable_progress_bar"),
    ("diffusers.utils.logging", "disable_progress_bar"),
)


def hide_loading_bars() -> None:
    """No loading bars from this process on, whether the libraries are imported yet or not."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module_name, switch in _SWITCHES:
        module = sys.modules.get(module_name)
        if module is not None:
            getattr(module, switch)()

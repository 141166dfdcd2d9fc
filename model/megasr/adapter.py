"""MegaSR's new modules as a state: which keys are theirs, and how many there are.

Installation (:mod:`.networks`) only adds, so the new modules' keys all contain
``.processor.`` (a CSM) or ``.msfm.`` (an MSFM): that is how the adapter state is told apart
from the pretrained weights.
"""

from __future__ import annotations

from torch import nn

from megasr.model.megasr.csm import CSMProcessor
from megasr.model.megasr.msfm import MSFM

ADAPTER_MARKERS = (".processor.", ".msfm.")


def is_adapter_key(key: str) -> bool:
    return any(marker in key for marker in ADAPTER_MARKERS)


def adapter_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The new modules' parameters of ``net``, by name."""
    return {name: p for name, p in net.named_parameters() if is_adapter_key(name)}


def count_modules(net: nn.Module) -> dict[str, int]:
    """How many CSM processors and MSFMs ``net`` holds (a check that installation is whole)."""
    return {
        "csm": sum(isinstance(m, CSMProcessor) for m in net.modules()),
        "msfm": sum(isinstance(m, MSFM) for m in net.modules()),
    }

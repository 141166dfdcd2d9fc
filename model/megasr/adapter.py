"""MegaSR's new modules inside a network: which weights are theirs, and how many there are.

A MegaSR network is its diffusers network plus the new modules, whose weights all sit under
a ``csm`` (a CSM's Connector and LGWAM), ``msfm`` or ``shared_connector`` (a Connector
shared by the network) module name: that is how they are told apart from the pretrained
weights (the trainable set, copying a plain network's weights, ``megasr model info``).
"""

from __future__ import annotations

from torch import nn

from megasr.model.megasr.csm import CSMAttention
from megasr.model.megasr.msfm import MSFM

ADAPTER_MARKERS = (".csm.", ".msfm.", ".shared_connector.")


def is_adapter_key(key: str) -> bool:
    dotted = f".{key}"
    return any(marker in dotted for marker in ADAPTER_MARKERS)


def adapter_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The new modules' parameters of ``net``, by name."""
    return {name: p for name, p in net.named_parameters() if is_adapter_key(name)}


def count_modules(net: nn.Module) -> dict[str, int]:
    """How many CSMs and MSFMs ``net`` holds (``megasr model info`` shows it: a check that
    every attention block carries its modules)."""
    return {
        "csm": sum(isinstance(m, CSMAttention) for m in net.modules()),
        "msfm": sum(isinstance(m, MSFM) for m in net.modules()),
    }

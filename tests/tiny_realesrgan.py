"""The Real-ESRGAN engine's own code on a tiny network, for the backend and worker tests.

:class:`TinyRealESRGAN` is :class:`RealESRGANEngine` on a seeded RRDBNet with the x4plus
structure (1 block of 16 features instead of 23 of 64), so that inductor compiles it in tens
of seconds rather than the minutes the full network takes on 2 cores. A worker loads it as
``tiny_realesrgan:TinyRealESRGAN`` (the tests folder on its ``PYTHONPATH``).

:class:`GatedTinyRealESRGAN` builds its compiled package only once the file named by
``MEGASR_TEST_COMPILE_GATE`` is gone: a test decides when the background compile may end
(and so which jobs run before it and which after), with no sleeps and no timing guesses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from megasr.model.engines.backends import PackageBuild, build_package
from megasr.model.engines.realesrgan import RealESRGANEngine
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.settings import Settings

GATE_ENV = "MEGASR_TEST_COMPILE_GATE"


class TinyRealESRGAN(RealESRGANEngine):
    """The engine on a seeded tiny RRDBNet, its weights scaled up so that the features
    reach the range of the real network's (a fresh init keeps them near zero)."""

    name = "tiny-realesrgan"

    def __init__(self, settings: Settings, channels_last: bool = True) -> None:
        super().__init__(settings, channels_last)
        self.name = TinyRealESRGAN.name  # not x4plus's: its own queue, never x4plus's choice

    def _load_network(self) -> RRDBNet:
        torch.manual_seed(0)
        net = RRDBNet(num_feat=16, num_block=1, num_grow_ch=8)
        with torch.no_grad():
            for param in net.parameters():
                param.mul_(2.0)
        return net


def gated_build(network: nn.Module, dtype: torch.dtype, path: Path, threads: int) -> None:
    """:func:`build_package`, once the gate file is gone (runs in the compile's process)."""
    gate = Path(os.environ[GATE_ENV])
    while gate.exists():
        time.sleep(0.01)  # the test opens the gate by deleting the file
    build_package(network, dtype, path, threads)


class GatedTinyRealESRGAN(TinyRealESRGAN):
    def _start_build(self) -> PackageBuild:
        return PackageBuild(self._package, self.network, self.dtype, target=gated_build)

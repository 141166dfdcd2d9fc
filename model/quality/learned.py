"""Learned metrics whose weights no package ships, which this version does not compute.

Each needs ImageNet backbones or checkpoints trained by its authors, published only on model
hubs the project cannot reach, so none could be checked against its reference values here.
They are listed so that an evaluation names them and says why they are missing, instead of
silently leaving them out.
"""

from __future__ import annotations

from collections.abc import Callable

from megasr.errors import EngineError

NOT_IMPLEMENTED: dict[str, str] = {
    "dists": "DISTS needs VGG16 ImageNet weights and its trained alpha/beta weights",
    "musiq": "MUSIQ needs its multi-scale transformer checkpoint (KonIQ-10k)",
    "maniqa": "MANIQA needs a ViT-B/8 checkpoint trained on KonIQ-10k or PIPAL",
    "clipiqa": "CLIP-IQA needs CLIP ResNet-50 weights and its prompt-tuned checkpoint",
    "fid": "FID needs the TF-ported Inception-v3 weights (pt_inception-2015-12-05)",
}


def unavailable_reason(name: str) -> str:
    """Why the learned metric ``name`` is not computed in this version."""
    return f"not implemented in this version; {NOT_IMPLEMENTED[name]}, which no package ships"


def refusal(name: str) -> Callable[..., float]:
    """The registry's function for the metric ``name``: a clear refusal, whatever the call."""

    def refuse(*_images: object, **_options: object) -> float:
        raise EngineError(f"{name} is not available: {unavailable_reason(name)}")

    return refuse

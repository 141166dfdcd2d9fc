"""Synthetic degradations that turn HR photographs into realistic LR inputs."""

from megasr.model.degradation.config import BlurConfig, DegradationConfig, StageConfig
from megasr.model.degradation.realesrgan import DegradationDraw, RealESRGANDegradation

__all__ = [
    "BlurConfig",
    "DegradationConfig",
    "DegradationDraw",
    "RealESRGANDegradation",
    "StageConfig",
]

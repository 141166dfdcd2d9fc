"""MegaSR's frozen guidance extractors: HED, depth, segmentation, CLIP and the tagger."""

from megasr.model.extractors.config import ExtractorConfig
from megasr.model.extractors.extractors import Extractors, build_extractors
from megasr.model.extractors.maps import GuidanceMaps
from megasr.model.extractors.tiny import tiny_clip_tokenizer, tiny_extractors

__all__ = [
    "ExtractorConfig",
    "Extractors",
    "GuidanceMaps",
    "build_extractors",
    "tiny_clip_tokenizer",
    "tiny_extractors",
]

"""All of MegaSR's frozen extractors behind one object: guidance maps, image tokens, tags.

The MegaSR pipeline and the worker see only this object. It takes RGB batches in [0, 1] on
any device and runs each component on the device and in the dtype of its weights, under
``torch.no_grad`` (not ``inference_mode``: training feeds the outputs to modules that need
gradients, and inference tensors cannot be saved for backward).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from megasr.errors import InvalidParameterError
from megasr.model.extractors.clip import ClipEncoder
from megasr.model.extractors.config import ExtractorConfig
from megasr.model.extractors.depth import DepthExtractor
from megasr.model.extractors.hed import HEDNet
from megasr.model.extractors.hed_weights import load_hed, save_hed
from megasr.model.extractors.maps import GuidanceMaps
from megasr.model.extractors.segmentation import SegmentationExtractor
from megasr.model.extractors.tagger import ClipTagger, read_vocabulary
from megasr.settings import get_settings

# Names of the components inside a directory written by Extractors.save_pretrained.
HED_FILE = "hed.safetensors"
DEPTH_DIR = "depth"
SEGMENTATION_DIR = "segmentation"
CLIP_DIR = "clip"
VOCABULARY_FILE = "tags.txt"


class Extractors(nn.Module):
    """HED, depth, segmentation, CLIP and the tagger (``None`` for the ``none`` tagger)."""

    def __init__(
        self,
        hed: HEDNet,
        depth: DepthExtractor,
        segmentation: SegmentationExtractor,
        clip: ClipEncoder,
        tagger: ClipTagger | None,
    ) -> None:
        super().__init__()
        self.hed = hed.eval().requires_grad_(False)
        self.depth = depth.eval().requires_grad_(False)
        self.segmentation = segmentation.eval().requires_grad_(False)
        self.clip = clip.eval().requires_grad_(False)
        self.tagger = tagger

    @property
    def clip_width(self) -> int:
        """Channels of :meth:`image_tokens`."""
        return self.clip.width

    @torch.no_grad()
    def guidance(self, images: Tensor) -> GuidanceMaps:
        """HED, depth and segmentation maps at the images' size, in the HED weights' dtype."""
        images = self._input(images, self.hed)
        dtype = images.dtype
        return GuidanceMaps(
            hed=self.hed.edges(images),
            depth=self.depth(images).to(dtype),
            seg=self.segmentation(images).to(dtype),
        )

    @torch.no_grad()
    def image_tokens(self, images: Tensor) -> Tensor:
        """CLIP vision tokens (B, 1 + patches, clip_width): the last hidden state."""
        return self.clip.image_tokens(self._input(images, self.clip))

    @torch.no_grad()
    def tags(self, images: Tensor) -> list[str]:
        """One comma-separated tag string per image ("" for every image with no tagger)."""
        images = self._input(images, self.clip)
        if self.tagger is None:
            return [""] * images.shape[0]
        return self.tagger(self.clip.image_embeddings(images))

    def save_pretrained(self, directory: Path) -> ExtractorConfig:
        """Write every component under ``directory``; the returned config loads them back.

        Its sources are relative to ``directory`` (pass it as ``root`` to
        :func:`build_extractors`), so a checkpoint that carries its extractors can move.
        """
        directory.mkdir(parents=True, exist_ok=True)
        save_hed(self.hed, directory / HED_FILE)
        for name, component in ((DEPTH_DIR, self.depth), (SEGMENTATION_DIR, self.segmentation)):
            component.model.save_pretrained(directory / name)
            component.pixels.save_pretrained(directory / name)
        self.clip.model.save_pretrained(directory / CLIP_DIR)
        self.clip.tokenizer.save_pretrained(directory / CLIP_DIR)
        self.clip.pixels.save_pretrained(directory / CLIP_DIR)
        if self.tagger is None:
            return ExtractorConfig(HED_FILE, DEPTH_DIR, SEGMENTATION_DIR, CLIP_DIR, tagger="none")
        (directory / VOCABULARY_FILE).write_text("\n".join(self.tagger.vocabulary) + "\n")
        return ExtractorConfig(
            HED_FILE,
            DEPTH_DIR,
            SEGMENTATION_DIR,
            CLIP_DIR,
            tagger="clip",
            top_k=self.tagger.top_k,
            threshold=self.tagger.threshold,
            vocabulary=VOCABULARY_FILE,
        )

    @staticmethod
    def _input(images: Tensor, component: nn.Module) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InvalidParameterError(f"extractors take RGB batches (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise InvalidParameterError(
                f"extractors take float images in [0, 1], got {images.dtype}"
            )
        weight = next(component.parameters())
        return images.to(device=weight.device, dtype=weight.dtype)


def build_extractors(
    config: ExtractorConfig,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    root: Path | None = None,
    cache_dir: Path | None = None,
) -> Extractors:
    """Load every extractor a config names, frozen, on ``device`` in ``dtype``.

    ``root``: the directory relative sources are resolved against (a checkpoint). Converted
    HED weights are cached under ``cache_dir``, by default the settings' cache directory.
    """
    config = config.resolved(root)
    hed = load_hed(config.hed, cache_dir or get_settings().cache_dir)
    clip = ClipEncoder.from_pretrained(config.clip).to(device=device, dtype=dtype)
    tagger = None
    if config.tagger == "clip":
        vocabulary = read_vocabulary(config.vocabulary)
        tagger = ClipTagger.from_clip(clip, vocabulary, config.top_k, config.threshold)
    extractors = Extractors(
        hed,
        DepthExtractor.from_pretrained(config.depth),
        SegmentationExtractor.from_pretrained(config.segmentation),
        clip,
        tagger,
    )
    return extractors.to(device=device, dtype=dtype)

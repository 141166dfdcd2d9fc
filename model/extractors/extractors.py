"""All of MegaSR's frozen extractors behind one object: guidance maps, image tokens, tags.

The MegaSR pipeline and the worker see only this object. It takes RGB batches in [0, 1] on
any device and runs each component on the device and in the dtype of its weights, under
``torch.no_grad`` (not ``inference_mode``: training feeds the outputs to modules that need
gradients, and inference tensors cannot be saved for backward).
"""

from __future__ import annotations

from collections.abc import Sequence
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
        """HED, depth and segmentation maps of a batch (B, 3, H, W), in the HED's dtype."""
        each = self.guidance_each(self._input(images))
        return GuidanceMaps(
            hed=torch.stack([maps.hed for maps in each]),
            depth=torch.stack([maps.depth for maps in each]),
            seg=torch.stack([maps.seg for maps in each]),
        )

    @torch.no_grad()
    def guidance_each(self, images: Sequence[Tensor]) -> list[GuidanceMaps]:
        """The maps of each image (3, H, W) of any size, unbatched: ``hed`` and ``depth``
        (1, H, W), ``seg`` (3, H, W), in the HED's dtype.

        Depth and segmentation see every image at their fixed input size in one batch and
        their maps are normalised per whole image; HED is fully convolutional and runs on
        each image at its own size (images of the same size in one batch).
        """
        images = self._input(images)
        dtype = next(self.hed.parameters()).dtype
        edges = self._edges(images)
        depths = self.depth([self._on(image, self.depth) for image in images])
        segs = self.segmentation([self._on(image, self.segmentation) for image in images])
        return [
            GuidanceMaps(hed=hed, depth=depth.to(dtype), seg=seg.to(dtype))
            for hed, depth, seg in zip(edges, depths, segs, strict=True)
        ]

    @torch.no_grad()
    def semantics(self, images: Sequence[Tensor]) -> tuple[Tensor, list[str]]:
        """One CLIP vision pass over every image (any sizes): the image tokens
        (B, 1 + patches, clip_width), its last hidden state, and one comma-separated tag
        string per image ("" for every image with no tagger)."""
        images = self._input(images)
        tokens, embeddings = self.clip.encode_images([self._on(i, self.clip) for i in images])
        tags = [""] * len(images) if self.tagger is None else self.tagger(embeddings)
        return tokens, tags

    def image_tokens(self, images: Sequence[Tensor]) -> Tensor:
        """CLIP vision tokens (B, 1 + patches, clip_width) (see :meth:`semantics`)."""
        return self.semantics(images)[0]

    def tags(self, images: Sequence[Tensor]) -> list[str]:
        """One tag string per image (see :meth:`semantics`)."""
        return self.semantics(images)[1]

    def _edges(self, images: list[Tensor]) -> list[Tensor]:
        """HED of each image at its own size; images of one size share a pass."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(index)
        edges: list[Tensor | None] = [None] * len(images)
        for indices in by_size.values():
            batch = torch.stack([self._on(images[i], self.hed) for i in indices])
            for index, edge in zip(indices, self.hed.edges(batch), strict=True):
                edges[index] = edge
        return edges

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
    def _input(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """A batch (B, 3, H, W) or a sequence of (3, H, W) images, as a list of images."""
        if isinstance(images, Tensor) and (images.ndim != 4 or images.shape[1] != 3):
            raise InvalidParameterError(
                f"extractors take RGB batches (B, 3, H, W), got {tuple(images.shape)}"
            )
        images = list(images)
        for image in images:
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise InvalidParameterError(f"extractors take RGB images (3, H, W), got {shape}")
            if not image.is_floating_point():
                raise InvalidParameterError(
                    f"extractors take float images in [0, 1], got {image.dtype}"
                )
        return images

    @staticmethod
    def _on(image: Tensor, component: nn.Module) -> Tensor:
        weight = next(component.parameters())
        return image.to(device=weight.device, dtype=weight.dtype)


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

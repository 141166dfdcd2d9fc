"""The built-in tagger: zero-shot CLIP scoring of a tag vocabulary.

The paper tags the LR image with RAM, which no package ships. This tagger keeps the role
(short, comma-separated tags that describe what is in the picture) with the CLIP model MegaSR
already loads: every tag is embedded once as "a photo of {tag}." and each image is scored
against all of them at CLIP's own temperature. The softmax over the vocabulary makes the
threshold independent of the CLIP variant's similarity range.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from megasr.errors import EngineError
from megasr.model.extractors.clip import ClipEncoder
from megasr.model.extractors.config import BUNDLED

PROMPT_TEMPLATE = "a photo of {}."
# Tags embedded per text-tower call: bounds memory on big vocabularies.
EMBEDDING_CHUNK = 256


def read_vocabulary(source: str) -> list[str]:
    """Tags from a file, one a line; blank lines and ``#`` comments skipped, order kept."""
    if source == BUNDLED:
        text = resources.files(__package__).joinpath("tags.txt").read_text(encoding="utf-8")
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as error:
            raise EngineError(f"cannot read the tag vocabulary {source}: {error}") from error
    tags = [line.strip() for line in text.splitlines()]
    tags = list(dict.fromkeys(tag for tag in tags if tag and not tag.startswith("#")))
    if not tags:
        raise EngineError(f"the tag vocabulary {source} holds no tags")
    return tags


class ClipTagger(nn.Module):
    """Top-k tags at or above a probability threshold, over cached tag embeddings."""

    def __init__(
        self,
        vocabulary: list[str],
        tag_embeddings: Tensor,
        scale: float,
        top_k: int,
        threshold: float,
    ) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.scale = scale
        self.top_k = min(top_k, len(vocabulary))
        self.threshold = threshold
        # A buffer, so the cache follows the module across devices.
        self.register_buffer("tag_embeddings", tag_embeddings, persistent=False)

    @classmethod
    @torch.no_grad()
    def from_clip(
        cls, clip: ClipEncoder, vocabulary: list[str], top_k: int, threshold: float
    ) -> ClipTagger:
        """Embed the whole vocabulary once with CLIP's text tower."""
        embeddings = torch.cat(
            [
                clip.text_embeddings([PROMPT_TEMPLATE.format(tag) for tag in chunk])
                for chunk in _chunks(vocabulary, EMBEDDING_CHUNK)
            ]
        )
        return cls(vocabulary, embeddings, clip.similarity_scale(), top_k, threshold)

    def forward(self, image_embeddings: Tensor) -> list[str]:
        """One comma-separated tag string per unit-length CLIP image embedding (B, D).

        Best tag first; "" when no tag qualifies.
        """
        logits = self.scale * image_embeddings.float() @ self.tag_embeddings.float().T
        scores, indices = logits.softmax(dim=-1).topk(self.top_k, dim=-1)
        return [
            ", ".join(
                self.vocabulary[index]
                for score, index in zip(row_scores.tolist(), row_indices.tolist(), strict=True)
                if score >= self.threshold
            )
            for row_scores, row_indices in zip(scores, indices, strict=True)
        ]


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]

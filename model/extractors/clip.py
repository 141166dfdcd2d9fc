"""CLIP for MegaSR: the vision tower's tokens (``e_i``) and the shared embedding space.

One CLIP model serves two purposes: the last hidden state of its vision tower is the image
semantics the CSM visual branch attends to, and its joint image-text embedding space lets the
built-in tagger score a tag vocabulary against the image zero-shot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase

from megasr.errors import EngineError
from megasr.model.extractors.pretrained import PixelSpec, load_model


class ClipEncoder(nn.Module):
    """A CLIP model, its tokenizer and its input convention."""

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, pixels: PixelSpec):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pixels = pixels

    @classmethod
    def from_pretrained(cls, source: str) -> ClipEncoder:
        model = load_model(CLIPModel, source, "CLIP")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise EngineError(f"cannot load the CLIP tokenizer from {source!r}") from error
        return cls(model, tokenizer, PixelSpec.from_pretrained(source, "CLIP"))

    @property
    def width(self) -> int:
        """Channels of :meth:`image_tokens`, what a Connector maps from."""
        return self.model.config.vision_config.hidden_size

    def encode_images(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """One pass of the vision tower over every image (any sizes): its last hidden state
        (B, 1 + patches, width), class token first, and the unit-length image embeddings
        (B, projection_dim) in the space shared with text."""
        pixel_values = self.pixels(images, self.model.dtype)
        vision = self.model.vision_model(pixel_values=pixel_values)
        embeddings = self.model.visual_projection(vision.pooler_output).float()
        return vision.last_hidden_state, F.normalize(embeddings, dim=-1)

    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """Unit-length text embeddings (N, projection_dim)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(
            self.model.device
        )
        pooled = self.model.text_model(**tokens).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def similarity_scale(self) -> float:
        """CLIP's learned inverse temperature for cosine similarities."""
        return float(self.model.logit_scale.exp())

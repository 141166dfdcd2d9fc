"""Representation-level prior-guided fine-tuning (PGFT) of the CLIP vision tower.

MegaSR's image tokens ``e_i`` and the tagger's image embedding come from CLIP looking at
the LR image. PGFT teaches the tower to see the degraded LR image as it sees the clean HR
one: a frozen copy of the pretrained tower on the HR image is the teacher; the student
tower on the LR image learns with the loss ``MSE(tokens) + (1 - cosine(embedding))`` over
the last hidden state and the projected pooled embedding (what the CSM and the tagger
read). Trainable: LoRA on the attention's query and value projections (DAPE's recipe,
rank 8), or instead the last few transformer layers. The LoRA is merged before saving, so
the result is a plain CLIP folder that ``megasr model init --clip`` loads.

SeeSR's DAPE adds a BCE on RAM's tag logits; this project's tagger has no head of its own
(it scores tags against the pooled embedding), so the cosine term is what keeps its tags.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megasr.errors import EngineError
from megasr.files import replace_directory
from megasr.model.extractors.clip import ClipEncoder
from megasr.model.training.lora import add_lora, merge_lora

LORA_TARGETS = ("q_proj", "v_proj")


class ClipStudent(nn.Module):
    """CLIP vision on the LR image, taught by the frozen pretrained tower on the HR image."""

    def __init__(self, clip: ClipEncoder, lora_rank: int = 8, last_layers: int = 0) -> None:
        super().__init__()
        self.clip = clip
        vision = clip.model.vision_model
        self.teacher = copy.deepcopy(vision).eval().requires_grad_(False)
        clip.model.eval().requires_grad_(False)
        if last_layers:
            layers = vision.encoder.layers
            if not 0 < last_layers <= len(layers):
                raise EngineError(f"the tower has {len(layers)} layers, not {last_layers}")
            for layer in layers[-last_layers:]:
                layer.requires_grad_(True)
            vision.post_layernorm.requires_grad_(True)
        else:
            add_lora(vision, LORA_TARGETS, rank=lora_rank, alpha=float(lora_rank))

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        student_tokens, student_embedding, teacher_tokens, teacher_embedding = self._both(hr, lr)
        tokens = F.mse_loss(student_tokens, teacher_tokens)
        cosine = F.cosine_similarity(student_embedding, teacher_embedding, dim=-1)
        return tokens + (1.0 - cosine).mean()

    @torch.no_grad()
    def distances(self, hr: Tensor, lr: Tensor) -> dict[str, float]:
        student_tokens, student_embedding, teacher_tokens, teacher_embedding = self._both(hr, lr)
        cosine = F.cosine_similarity(student_embedding, teacher_embedding, dim=-1)
        return {
            "token_mse": float(F.mse_loss(student_tokens, teacher_tokens)),
            "cosine": float(cosine.mean()),
        }

    def save(self, out: Path) -> None:
        """Merge the LoRA and write a CLIP folder (model, tokenizer, input convention)."""
        merge_lora(self.clip.model)

        def fill(folder: Path) -> None:
            self.clip.model.save_pretrained(folder)
            self.clip.tokenizer.save_pretrained(folder)
            self.clip.pixels.save_pretrained(folder)

        replace_directory(out, fill)

    def _both(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            teacher = self._tower(self.teacher, hr)
        return (*self._tower(self.clip.model.vision_model, lr), *teacher)

    def _tower(self, tower: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
        """(tokens, projected pooled embedding) in float32."""
        output = tower(pixel_values=self.clip.pixels(images, self.clip.model.dtype))
        embedding = self.clip.model.visual_projection(output.pooler_output)
        return output.last_hidden_state.float(), embedding.float()

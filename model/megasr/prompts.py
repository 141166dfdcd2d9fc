"""Text side of the conditioning: the prompt MegaSR builds and SD's frozen text encoder."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer


def compose_prompt(tags: str, user_prompt: str, added_prompt: str) -> str:
    """Tags of the LR image (comma-separated), then the user's prompt, then the added positive
    prompt; empty parts are left out."""
    parts = [tags.strip(), user_prompt.strip(), added_prompt.strip()]
    return ", ".join(part for part in parts if part)


class PromptEncoder:
    """Turns prompts into the token embeddings ``e_t`` the cross-attentions attend to."""

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_length, width) embeddings, padded and truncated like SD."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

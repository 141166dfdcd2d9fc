"""Tiny random extractors built in code: every component's real code path, no downloads.

For tests and smoke checks of everything downstream (the MegaSR pipeline, ``model init
--preset tiny``, the service): the architectures are the real ones (VGG16-HED, DPT,
SegFormer, CLIP with a CLIP tokenizer), shrunk to a few thousand parameters each.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    DPTConfig,
    DPTForDepthEstimation,
    SegformerConfig,
    SegformerForSemanticSegmentation,
)

from megasr.model.extractors.clip import ClipEncoder
from megasr.model.extractors.config import BUNDLED
from megasr.model.extractors.depth import DepthExtractor
from megasr.model.extractors.extractors import Extractors
from megasr.model.extractors.hed import HEDNet
from megasr.model.extractors.pretrained import PixelSpec
from megasr.model.extractors.segmentation import SegmentationExtractor
from megasr.model.extractors.tagger import ClipTagger, read_vocabulary

TINY_HED_WIDTHS = (4, 8, 8, 8, 8)
TINY_SEGMENTATION_CLASSES = 8
TINY_TOP_K = 3
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_extractors(seed: int = 0) -> Extractors:
    """Random tiny extractors on the CPU in float32, the same for the same seed.

    The tagger keeps its ``top_k`` tags whatever their probability (threshold 0): random
    CLIP weights spread the probability almost evenly over the vocabulary.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(seed)
        clip = _tiny_clip()
        hed, depth, segmentation = HEDNet(TINY_HED_WIDTHS), _tiny_depth(), _tiny_segmentation()
    tagger = ClipTagger.from_clip(clip, read_vocabulary(BUNDLED), TINY_TOP_K, threshold=0.0)
    return Extractors(hed, depth, segmentation, clip, tagger)


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the printable ASCII characters: no BPE merges.

    Every character is one token, so any lowercase prompt tokenizes without a downloaded
    vocabulary; tiny text encoders built with ``len(tokenizer)`` as vocabulary size fit it.
    """
    characters = [chr(code) for code in range(33, 127)]
    tokens = [*characters, *(f"{char}</w>" for char in characters), BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _tiny_clip() -> ClipEncoder:
    tokenizer = tiny_clip_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.convert_tokens_to_ids(BOS),
        "eos_token_id": tokenizer.convert_tokens_to_ids(EOS),
        "pad_token_id": tokenizer.convert_tokens_to_ids(EOS),
    }
    vision = {
        "hidden_size": 24,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12))
    return ClipEncoder(model.eval(), tokenizer, PixelSpec(32, 32, CLIP_MEAN, CLIP_STD))


def _tiny_depth() -> DepthExtractor:
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
    )
    model = DPTForDepthEstimation(config).eval()
    return DepthExtractor(model, PixelSpec(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


def _tiny_segmentation() -> SegmentationExtractor:
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=TINY_SEGMENTATION_CLASSES,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    return SegmentationExtractor(model, PixelSpec(64, 64, IMAGENET_MEAN, IMAGENET_STD))

"""Baseline JPEG compression in torch, batched, each image at its own quality.

Real-ESRGAN compresses on the GPU with a differentiable JPEG approximation. This module
follows libjpeg instead, step by step, so the artefacts are those of the encoder that made
the world's JPEGs: JFIF YCbCr with 8-bit rounding, 4:2:0 chroma by 2x2 averaging with
libjpeg's alternating rounding bias, the standard (Annex K) quantization tables scaled by
libjpeg's quality formula, 8x8 DCT with round-half-away-from-zero quantization, and on the
way back libjpeg's "fancy" triangular chroma upsampling. Only the integer DCT of libjpeg is
replaced by an exact one, so results differ from OpenCV's libjpeg round trip by rounding
(tests/test_degradations.py measures it). Nothing here needs gradients; it runs under
``torch.no_grad`` like the rest of the degradation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
BLOCK = 8
MCU = 16  # a 4:2:0 minimum coded unit: 2x2 luma blocks, one block of each chroma plane


def quantization_tables(quality: Tensor) -> Tensor:
    """(B, 2, 8, 8) luma and chroma tables for integer qualities 1..100, as libjpeg scales
    them (``jpeg_quality_scaling``, baseline: entries clamped to 1..255)."""
    q = quality.clamp(1, 100).double()
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None, None, None]
    base = torch.tensor((LUMA_TABLE, CHROMA_TABLE), dtype=torch.float64)[None]
    return torch.floor((base * scale + 50.0) / 100.0).clamp(1.0, 255.0)


def jpeg_round_trip(images: Tensor, quality: Tensor) -> Tensor:
    """Encode and decode RGB images (B, 3, H, W) in [0, 1] at per-image ``quality`` (B,).

    Returns the decoded images in [0, 1] on 8-bit levels, same shape, dtype and device.
    """
    _, _, height, width = images.shape
    samples = torch.floor(images.clamp(0.0, 1.0) * 255.0 + 0.5)
    samples = _pad_to(samples, MCU)
    ycc = _rgb_to_ycbcr(samples)
    tables = quantization_tables(quality.cpu()).to(images)
    luma = _quantize_blocks(ycc[:, :1], tables[:, 0])
    chroma = _quantize_blocks(_downsample(ycc[:, 1:]), tables[:, 1])
    rgb = _ycbcr_to_rgb(torch.cat([luma, _upsample(chroma)], dim=1))
    return (rgb[..., :height, :width] / 255.0).to(images.dtype)


def _pad_to(samples: Tensor, multiple: int) -> Tensor:
    """Repeat the last row and column up to whole MCUs, as libjpeg extends the edges."""
    height, width = samples.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    return F.pad(samples, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else samples


def _rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """JFIF full-range YCbCr, rounded to 8-bit samples as libjpeg's ``rgb_ycc_convert``."""
    r, g, b = rgb.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0
    return torch.floor(torch.stack([y, cb, cr], dim=1) + 0.5).clamp(0.0, 255.0)


def _ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """libjpeg's ``ycc_rgb_convert``: rounded per-term offsets, then range-limited."""
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128.0, ycc[:, 2] - 128.0
    r = y + torch.floor(1.402 * cr + 0.5)
    g = y + torch.floor(-0.344136286 * cb - 0.714136286 * cr + 0.5)
    b = y + torch.floor(1.772 * cb + 0.5)
    return torch.stack([r, g, b], dim=1).clamp(0.0, 255.0)


def _downsample(chroma: Tensor) -> Tensor:
    """libjpeg's ``h2v2_downsample``: the 2x2 sum plus a bias of 1, 2, 1, 2... by column,
    divided by 4 and truncated (the bias alternates so rounding does not drift)."""
    sums = F.avg_pool2d(chroma, 2, divisor_override=1)
    bias = torch.ones(sums.shape[-1], device=chroma.device, dtype=chroma.dtype)
    bias[1::2] = 2.0
    return torch.floor((sums + bias) / 4.0)


def _upsample(chroma: Tensor) -> Tensor:
    """libjpeg's ``h2v2_fancy_upsample``: a triangle filter (3/4 near, 1/4 far) in integers.

    Vertically each output row sums 3x its own input row and 1x the next one towards it;
    horizontally the same, with the rounding biases 8 and 7 of the integer code. Edges
    repeat the border sample, which is what libjpeg's edge cases compute.
    """
    above = torch.cat([chroma[..., :1, :], chroma[..., :-1, :]], dim=-2)
    below = torch.cat([chroma[..., 1:, :], chroma[..., -1:, :]], dim=-2)
    rows = torch.stack([3 * chroma + above, 3 * chroma + below], dim=-2)
    rows = rows.flatten(-3, -2)  # (..., 2h, w): even rows lean up, odd rows lean down
    left = torch.cat([rows[..., :1], rows[..., :-1]], dim=-1)
    right = torch.cat([rows[..., 1:], rows[..., -1:]], dim=-1)
    even = torch.floor((3 * rows + left + 8) / 16)
    odd = torch.floor((3 * rows + right + 7) / 16)
    return torch.stack([even, odd], dim=-1).flatten(-2)


def _quantize_blocks(planes: Tensor, tables: Tensor) -> Tensor:
    """8x8 DCT, quantize with ``tables`` (B, 8, 8), dequantize, inverse DCT, 8-bit samples."""
    batch, channels, height, width = planes.shape
    rows, cols = height // BLOCK, width // BLOCK
    blocks = planes.reshape(batch, channels, rows, BLOCK, cols, BLOCK).permute(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(batch, -1, BLOCK * BLOCK) - 128.0
    transform = _dct_2d(planes.device, planes.dtype)  # one GEMM for every block at once
    step = tables.reshape(batch, 1, BLOCK * BLOCK).to(planes.dtype)
    ratio = blocks @ transform.T / step
    quantized = torch.sign(ratio) * torch.floor(ratio.abs() + 0.5) * step
    pixels = torch.floor(quantized @ transform + 128.0 + 0.5).clamp(0.0, 255.0)
    pixels = pixels.reshape(batch, channels, rows, cols, BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5)
    return pixels.reshape(batch, channels, height, width)


def _dct_2d(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The orthonormal 8x8 DCT-II as a (64, 64) matrix on row-major flattened blocks.

    With ``D`` the 8-point transform, ``D @ block @ D.T`` flattened is ``kron(D, D) @ block``;
    the matrix is orthogonal, so its transpose is the inverse transform.
    """
    k = torch.arange(BLOCK, dtype=torch.float64)[:, None]
    n = torch.arange(BLOCK, dtype=torch.float64)[None, :]
    basis = torch.cos((2 * n + 1) * k * math.pi / (2 * BLOCK)) * math.sqrt(2.0 / BLOCK)
    basis[0] /= math.sqrt(2.0)
    return torch.kron(basis, basis).to(device=device, dtype=dtype)

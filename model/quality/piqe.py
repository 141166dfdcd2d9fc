"""PIQE, the Perception-based Image Quality Evaluator (Venkatanath et al., NCC 2015).

Parameter free and no reference: the image is cut into 16x16 blocks of MSCN coefficients;
only spatially active blocks (variance above 0.1) count, as the eye attends to them. An active
block is distorted when a 6-pixel stretch of one of its edges is flat (blockiness, ringing,
blur seams) or when its centre and surround vary alike (Gaussian noise). The score, 0 (best)
to 100 (worst), is the share of distortion over the active blocks. Follows MATLAB's ``piqe``
step for step, including its 8-bit gray conversion, edge padding to whole blocks, sample
(n - 1) deviations, and the surround that skips the columns next-but-one to the centre.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from megasr.model.quality.mscn import mscn
from megasr.model.quality.pixels import matlab_gray

BLOCK = 16
ACTIVITY_THRESHOLD = 0.1
FLAT_SEGMENT_THRESHOLD = 0.1
SEGMENT = 6
# MATLAB takes columns 8 and 9 (1-based) as the centre, then deletes column 8 and, from what
# is left, column 9 (originally 10) as the surround.
_CENTRE_COLUMNS = [7, 8]
_DELETED_COLUMNS = [7, 9]


def piqe(image: np.ndarray) -> float:
    """The PIQE score of ``image``, 0 to 100; a flat image scores 100."""
    gray = matlab_gray(image)
    pad_rows, pad_columns = (-gray.shape[0]) % BLOCK, (-gray.shape[1]) % BLOCK
    gray = np.pad(gray, ((0, pad_rows), (0, pad_columns)), mode="edge")
    blocks = _blocks(mscn(gray))
    variance = blocks.reshape(len(blocks), -1).var(axis=1, ddof=1)
    active = variance > ACTIVITY_THRESHOLD
    blocks, variance = blocks[active], variance[active]
    if len(blocks) == 0:
        return 100.0
    distortion = _has_flat_edge(blocks) * (1 - variance) + _is_noisy(blocks, variance) * variance
    return float((distortion.sum() + 1) / (len(blocks) + 1) * 100)


def _blocks(plane: np.ndarray) -> np.ndarray:
    """(N, 16, 16) non-overlapping blocks, row by row."""
    rows, columns = plane.shape[0] // BLOCK, plane.shape[1] // BLOCK
    tiled = plane.reshape(rows, BLOCK, columns, BLOCK).swapaxes(1, 2)
    return tiled.reshape(rows * columns, BLOCK, BLOCK)


def _has_flat_edge(blocks: np.ndarray) -> np.ndarray:
    """Whether any 6-pixel stretch of any of the four block edges is nearly constant."""
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    segments = sliding_window_view(edges, SEGMENT, axis=2)
    return (segments.std(axis=-1, ddof=1) < FLAT_SEGMENT_THRESHOLD).any(axis=(1, 2))


def _is_noisy(blocks: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Gaussian noise: the block deviation exceeds twice its mismatch with centre/surround."""
    sigma = np.sqrt(variance)
    count = len(blocks)
    centre = blocks[:, :, _CENTRE_COLUMNS].reshape(count, -1).std(axis=1, ddof=1)
    surround = np.delete(blocks, _DELETED_COLUMNS, axis=2).reshape(count, -1).std(axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = centre / surround
        ratio[np.isnan(ratio)] = 0.0
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
    return sigma > 2 * beta

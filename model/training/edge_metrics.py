"""How far one edge map is from another: mean absolute difference and an edge F-score.

The F-score follows the BSDS benchmark's idea with a fixed threshold and a simple
tolerance: both maps are binarised at ``threshold``; a predicted edge pixel counts as right
when a reference edge lies within ``tolerance`` pixels (a square neighbourhood), and a
reference edge pixel counts as found when a predicted edge lies within the same distance.
That forgives the one- or two-pixel shifts that resampling causes without rewarding a map
that is edges everywhere (precision falls) or nowhere (recall falls).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

EDGE_THRESHOLD = 0.5
EDGE_TOLERANCE = 2


def mean_absolute_difference(prediction: Tensor, reference: Tensor) -> float:
    return float((prediction.float() - reference.float()).abs().mean())


def edge_f_score(
    prediction: Tensor,
    reference: Tensor,
    threshold: float = EDGE_THRESHOLD,
    tolerance: int = EDGE_TOLERANCE,
) -> float:
    """F-score of ``prediction`` against ``reference``, edge maps (B, 1, H, W) in [0, 1].

    Two maps without a single edge agree perfectly (1.0); one empty and one not score 0.
    """
    predicted = prediction.float() >= threshold
    actual = reference.float() >= threshold
    if not predicted.any() and not actual.any():
        return 1.0
    precision = _fraction_near(predicted, actual, tolerance)
    recall = _fraction_near(actual, predicted, tolerance)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _fraction_near(edges: Tensor, others: Tensor, tolerance: int) -> float:
    """Share of ``edges`` pixels within ``tolerance`` pixels of an ``others`` pixel."""
    if not edges.any():
        return 0.0
    size = 2 * tolerance + 1
    near = F.max_pool2d(others.float(), size, stride=1, padding=tolerance) > 0
    return float((edges & near).sum() / edges.sum())

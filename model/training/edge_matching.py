"""Edge maps compared the way the BSDS500 benchmark compares them.

A soft edge map is first thinned: non-maximum suppression across the edge (the orientation
from the second derivatives of the smoothed map, as in Dollár's structured-edge toolbox that
HED's own evaluation uses), then, at each threshold, the binary map is thinned to one-pixel
lines (Zhang-Suen). Predicted and reference edge pixels are matched one to one within a
distance tolerance of ``0.0075`` times the image diagonal (BSDS's ``maxDist``): a maximum
bipartite matching (Hopcroft-Karp), so a thick band or a doubled line cannot match one
reference pixel twice.
Precision is matched / predicted, recall matched / reference, counted per image and summed
over images before the F-score (BSDS's aggregation).

- ODS: one threshold for the whole set. Here it is chosen on *other* images (the training
  photographs) and applied unchanged to the held-out ones, so the figure is a fair estimate,
  not the benchmark's oracle over the test set.
- OIS: each image at its own best threshold (an oracle per image; it shows what the map
  holds, whatever its calibration).

The reference is a fixed binary map: the teacher's map on the HR image, suppressed, at
``REFERENCE_THRESHOLD``, thinned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix

MAX_DIST = 0.0075
"""Match tolerance as a fraction of the image diagonal (BSDS500's ``maxDist``)."""
THRESHOLDS = 1.0 / (1.0 + np.exp(-np.linspace(-5.0, 5.0, 49)))
"""Evenly spaced in logit, 0.0067 to 0.9933: as fine among faint edges as among strong ones,
so a weak but well-placed map is not cut off by a grid that starts at 0.02."""
REFERENCE_THRESHOLD = 0.5
BORDER = 5
"""Pixels at the border over which suppressed edges fade to zero (the toolbox's ``s``)."""
SUPPRESSION_MARGIN = 1.01
"""A pixel survives when ``margin * value`` is at least both neighbours across the edge."""


@dataclass(frozen=True)
class EdgeCounts:
    """One image at every threshold: matched and predicted pixels, and reference pixels."""

    matched: np.ndarray
    predicted: np.ndarray
    reference: int


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f: float

    @classmethod
    def of(cls, matched: float, predicted: float, reference: float) -> PRF:
        precision = matched / predicted if predicted else 1.0 if not reference else 0.0
        recall = matched / reference if reference else 1.0
        total = precision + recall
        return cls(precision, recall, 2 * precision * recall / total if total else 0.0)


def suppress(edges: np.ndarray) -> np.ndarray:
    """Non-maximum suppression of a soft edge map (H, W) in [0, 1]: every pixel that is not
    the largest across the edge becomes 0; the rest keep their value."""
    image = torch.from_numpy(np.ascontiguousarray(edges, dtype=np.float32))[None, None]
    angle = _orientation(image)
    height, width = edges.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    keep = torch.ones_like(image, dtype=torch.bool)
    for step in (-1.0, 1.0):
        x = xs + step * torch.cos(angle[0, 0])
        y = ys + step * torch.sin(angle[0, 0])
        grid = torch.stack((2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1), dim=-1)
        neighbour = F.grid_sample(
            image, grid[None], mode="bilinear", padding_mode="border", align_corners=True
        )
        keep &= image * SUPPRESSION_MARGIN >= neighbour
    suppressed = (image * keep)[0, 0].numpy()
    return suppressed * _border_ramp(height, width)


def binary_edges(suppressed: np.ndarray, threshold: float) -> np.ndarray:
    """The one-pixel-wide edges of a suppressed map at ``threshold`` (bool (H, W))."""
    binary = (suppressed >= threshold).astype(np.uint8) * 255
    return cv2.ximgproc.thinning(binary, thinningType=cv2.ximgproc.THINNING_ZHANGSUEN) > 0


def reference_edges(teacher: np.ndarray, threshold: float = REFERENCE_THRESHOLD) -> np.ndarray:
    """The fixed reference of an image: its teacher map suppressed, thresholded, thinned."""
    return binary_edges(suppress(teacher), threshold)


def match_count(predicted: np.ndarray, reference: np.ndarray, radius: float) -> int:
    """Pixels of ``predicted`` matched one to one to pixels of ``reference`` no farther than
    ``radius`` (Euclidean): the size of a maximum bipartite matching."""
    if not predicted.any() or not reference.any():
        return 0
    height, width = predicted.shape
    pred_index = np.full(predicted.shape, -1, dtype=np.int64)
    pred_index[predicted] = np.arange(int(predicted.sum()))
    ref_index = np.full(reference.shape, -1, dtype=np.int64)
    ref_index[reference] = np.arange(int(reference.sum()))
    reach = int(np.floor(radius))
    rows, cols = [], []
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            source = pred_index[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            target = ref_index[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)]
            both = (source >= 0) & (target >= 0)
            rows.append(source[both])
            cols.append(target[both])
    row, col = np.concatenate(rows), np.concatenate(cols)
    if row.size == 0:
        return 0
    left, right = int(predicted.sum()), int(reference.sum())
    if left > right:  # search from the smaller side: fewer free vertices per phase
        row, col, left, right = col, row, right, left
    graph = csr_matrix((np.ones(row.size, dtype=np.int8), (row, col)), shape=(left, right))
    return maximum_matching(graph.indptr, graph.indices, left, right)


def maximum_matching(indptr: np.ndarray, indices: np.ndarray, left: int, right: int) -> int:
    """Size of a maximum matching of a bipartite graph (CSR adjacency of the left side):
    Hopcroft-Karp after a greedy start.

    SciPy's ``maximum_bipartite_matching`` ran for minutes on some of these graphs (two
    thousand pixels a side, twenty thousand edges), so the project carries its own; the
    greedy start leaves few vertices for the augmenting phases.
    """
    adjacency = [indices[indptr[u] : indptr[u + 1]].tolist() for u in range(left)]
    match_left, match_right = [-1] * left, [-1] * right
    matched = 0
    for u, neighbours in enumerate(adjacency):
        for v in neighbours:
            if match_right[v] < 0:
                match_left[u], match_right[v] = v, u
                matched += 1
                break
    while True:
        distance = _layers(adjacency, match_left, match_right)
        if distance is None:
            return matched
        matched += _augment(adjacency, match_left, match_right, distance)


def _layers(
    adjacency: list[list[int]], match_left: list[int], match_right: list[int]
) -> list[float] | None:
    """BFS layers of the left vertices from the free ones; None when no augmenting path."""
    distance = [np.inf] * len(adjacency)
    queue = [u for u, v in enumerate(match_left) if v < 0]
    for u in queue:
        distance[u] = 0
    found, head = False, 0
    while head < len(queue):
        u = queue[head]
        head += 1
        for v in adjacency[u]:
            w = match_right[v]
            if w < 0:
                found = True
            elif distance[w] == np.inf:
                distance[w] = distance[u] + 1
                queue.append(w)
    return distance if found else None


def _augment(
    adjacency: list[list[int]], match_left: list[int], match_right: list[int], distance: list
) -> int:
    """Vertex-disjoint shortest augmenting paths along the layers (iterative DFS)."""
    pointer = [0] * len(adjacency)
    augmented = 0
    for root in range(len(adjacency)):
        if match_left[root] >= 0:
            continue
        stack, path = [root], []
        while stack:
            u = stack[-1]
            if pointer[u] == len(adjacency[u]):
                distance[u] = np.inf  # a dead end for this phase
                stack.pop()
                if path:
                    path.pop()
                continue
            v = adjacency[u][pointer[u]]
            pointer[u] += 1
            w = match_right[v]
            if w < 0:
                path.append(v)
                for uu, vv in zip(stack, path, strict=True):
                    match_left[uu], match_right[vv] = vv, uu
                augmented += 1
                break
            if distance[w] == distance[u] + 1:
                path.append(v)
                stack.append(w)
    return augmented


def edge_counts(
    prediction: np.ndarray, reference: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> EdgeCounts:
    """Counts of a soft prediction (H, W) against binary reference edges at each threshold."""
    radius = MAX_DIST * float(np.hypot(*prediction.shape))
    suppressed = suppress(prediction)
    matched, predicted = [], []
    for threshold in thresholds:
        edges = binary_edges(suppressed, float(threshold))
        matched.append(match_count(edges, reference, radius))
        predicted.append(int(edges.sum()))
    return EdgeCounts(np.array(matched), np.array(predicted), int(reference.sum()))


def best_threshold(counts: Sequence[EdgeCounts]) -> int:
    """Index of the threshold with the best F-score over the images together (ODS)."""
    return int(np.argmax([_summed(counts, index).f for index in range(len(THRESHOLDS))]))


def at_threshold(counts: Sequence[EdgeCounts], index: int) -> PRF:
    """Precision, recall and F of the images together at one threshold (ODS's measure)."""
    return _summed(counts, index)


def per_image_best(counts: Sequence[EdgeCounts]) -> PRF:
    """Each image at its own best threshold, then summed (OIS)."""
    matched = predicted = reference = 0
    for image in counts:
        scores = [
            PRF.of(image.matched[i], image.predicted[i], image.reference).f
            for i in range(len(image.matched))
        ]
        best = int(np.argmax(scores))
        matched += int(image.matched[best])
        predicted += int(image.predicted[best])
        reference += image.reference
    return PRF.of(matched, predicted, reference)


def _summed(counts: Sequence[EdgeCounts], index: int) -> PRF:
    return PRF.of(
        sum(int(c.matched[index]) for c in counts),
        sum(int(c.predicted[index]) for c in counts),
        sum(c.reference for c in counts),
    )


def _orientation(image: torch.Tensor) -> torch.Tensor:
    """Edge normal angle in [0, pi) from the second derivatives of the smoothed map."""
    smooth = _triangle_blur(image, 4)
    dy, dx = _gradient(smooth)
    _, dxx = _gradient(dx)
    dyy, dxy = _gradient(dy)
    ratio = dyy * torch.sign(-dxy) / (dxx + 1e-5)
    return torch.remainder(torch.atan(ratio), torch.pi)


def _gradient(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (one-sided at the borders) along y and x, as MATLAB's gradient."""
    return torch.gradient(image, dim=(2, 3))


def _triangle_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    weights = torch.cat((torch.arange(1, radius + 2), torch.arange(radius, 0, -1))).float()
    kernel = weights / weights.sum()
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(rows, kernel.view(1, 1, -1, 1))


def _border_ramp(height: int, width: int) -> np.ndarray:
    """1 inside, falling linearly to 0 over ``BORDER`` pixels at each side."""
    ys = np.minimum(np.arange(height), np.arange(height)[::-1])
    xs = np.minimum(np.arange(width), np.arange(width)[::-1])
    ramp_y = np.clip(ys / BORDER, 0.0, 1.0)
    ramp_x = np.clip(xs / BORDER, 0.0, 1.0)
    return np.minimum(ramp_y[:, None], ramp_x[None, :]).astype(np.float32)

"""The PGFT edge measure (BSDS's protocol) and the recalibration control, on drawn maps."""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from megasr.model.training.calibration import LogitRemap, fit_logit_remap
from megasr.model.training.edge_matching import (
    THRESHOLDS,
    EdgeCounts,
    at_threshold,
    best_threshold,
    binary_edges,
    edge_counts,
    match_count,
    maximum_matching,
    per_image_best,
    reference_edges,
    suppress,
)

SIZE = 64


def _line(row: int = 32, width: int = 1) -> np.ndarray:
    edges = np.zeros((SIZE, SIZE), dtype=bool)
    edges[row : row + width, 8:56] = True
    return edges


def test_a_soft_ridge_thins_to_one_pixel_on_its_crest():
    rows = np.arange(SIZE, dtype=np.float32)[:, None]
    ridge = np.exp(-((rows - 30.0) ** 2) / (2 * 3.0**2)) * np.ones((1, SIZE), np.float32)
    edges = binary_edges(suppress(ridge), 0.5)
    columns = edges[:, 8:56]
    assert (columns.sum(axis=0) == 1).all()  # one pixel per column ...
    assert (np.argmax(columns, axis=0) == 30).all()  # ... on the crest


def test_matching_is_one_to_one_so_a_thick_band_cannot_match_a_line_three_times():
    line, band = _line(31), _line(30, width=3)
    assert match_count(line, line, radius=2.0) == line.sum()
    matched = match_count(band, line, radius=2.0)
    assert matched == line.sum()  # each reference pixel once: precision 1/3, not 1
    assert matched / band.sum() < 0.34


def test_matching_forgives_shifts_within_the_tolerance_only():
    line = _line(32)
    assert match_count(_line(34), line, radius=2.0) == line.sum()
    assert match_count(_line(35), line, radius=2.0) == 0
    assert match_count(np.zeros_like(line), line, radius=2.0) == 0


def test_ods_takes_its_threshold_from_other_images_and_ois_is_an_oracle_per_image():
    reference = reference_edges(_soft(_line(32)))
    speckles = np.random.default_rng(0).uniform(0.0, 0.3, (SIZE, SIZE)).astype(np.float32)
    noisy, faint = np.maximum(_soft(_line(32)), speckles), 0.1 * _soft(_line(32))
    train = [edge_counts(noisy, reference)]
    held = [edge_counts(faint, reference)]
    index = best_threshold(train)
    assert at_threshold(train, index).f == 1.0
    assert THRESHOLDS[index] > 0.3  # above the training maps' speckles ...
    assert at_threshold(held, index).f == 0.0  # ... so the faint held-out map finds nothing
    assert per_image_best(held).f == 1.0  # while at its own threshold it is perfect


def test_counts_add_up_over_images_before_the_f_score():
    counts = [
        EdgeCounts(np.array([10]), np.array([10]), 10),
        EdgeCounts(np.array([0]), np.array([30]), 30),
    ]
    summed = at_threshold(counts, 0)
    assert (summed.precision, summed.recall) == (0.25, 0.25)


def test_a_logit_remap_recovers_the_calibration_it_is_fitted_to():
    torch.manual_seed(0)
    target = torch.rand(4, 1, 32, 32) * 0.98 + 0.01
    weak = torch.sigmoid(0.5 * torch.logit(target) - 1.0)  # a faint, shifted copy
    remap = fit_logit_remap([weak], [target])
    assert isinstance(remap, LogitRemap)
    assert abs(remap.a - 2.0) < 0.1 and abs(remap.b - 2.0) < 0.2
    assert (remap(weak) - target).abs().mean() < 0.1 * (weak - target).abs().mean()


def _soft(edges: np.ndarray) -> np.ndarray:
    """A drawn edge as a network would draw it: a soft ridge, peak 1."""
    kernel = np.exp(-(np.arange(-4, 5) ** 2) / 4.0)
    blurred = np.apply_along_axis(np.convolve, 0, edges.astype(np.float32), kernel, "same")
    return (blurred / blurred.max()).astype(np.float32)


def test_the_matching_is_maximum_on_random_graphs():
    """Against SciPy's Hopcroft-Karp on graphs small enough for it (it stalls on some of the
    edge maps' graphs, hence the project's own)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        left, right = rng.integers(1, 12, size=2)
        dense = rng.random((left, right)) < rng.uniform(0.05, 0.5)
        graph = csr_matrix(dense.astype(np.int8))
        expected = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
        assert maximum_matching(graph.indptr, graph.indices, left, right) == expected

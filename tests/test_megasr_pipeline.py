"""The MegaSR sampling pipeline on a tiny random model: seeds, tiles, batching, colour, cancel."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from megasr_tiny import one_thread, randomise_new_modules

from megasr.errors import InvalidParameterError
from megasr.model.megasr.color_fix import low_frequency
from megasr.model.megasr.components import MegaSRModel, build_tiny_model
from megasr.model.megasr.pipeline import Cancelled, ImageRequest, MegaSRPipeline
from megasr.model.megasr.tiling import LatentTiling, map_tiled

STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model() -> MegaSRModel:
    with one_thread():
        model = build_tiny_model(seed=0).freeze()
        randomise_new_modules(model.denoiser, std=0.1)
        return model


@pytest.fixture(scope="module")
def pipeline(model) -> MegaSRPipeline:
    pipe = model.pipeline()
    pipe.options = replace(pipe.options, steps=STEPS)
    return pipe


@pytest.fixture(scope="module")
def photo(coffee) -> torch.Tensor:
    """A real photo as the bicubic-upscaled LR image, 128 x 192."""
    image = torch.from_numpy(coffee).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, size=(128, 192), mode="area")[0]


def request(
    model: MegaSRModel, lr_up: torch.Tensor, seed: int = 1, prompt: str = "a cup", **kw
) -> ImageRequest:
    """The request for an image already at the output size (the bicubic step is a no-op)."""
    return replace(model.prepare(lr_up, tuple(lr_up.shape[-2:]), prompt, seed), **kw)


def test_a_seed_gives_the_same_image_and_another_seed_another(model, pipeline, photo):
    first = pipeline.restore_one(request(model, photo, seed=7))
    again = pipeline.restore_one(request(model, photo, seed=7))
    other = pipeline.restore_one(request(model, photo, seed=8))
    assert first.shape == photo.shape and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.05


def test_tiled_sampling_agrees_with_untiled_and_shows_no_seam(model, pipeline, photo):
    """Stated tolerance: mean |tiled - untiled| <= 0.1 (in [0, 1] units) and under a third of
    what another seed changes; no seam: at every tile edge the step between neighbouring
    pixels is at most 1.3 x the image's median step."""
    untiled = pipeline.restore_one(request(model, photo))
    options = replace(
        pipeline.options, latent_tile=8, latent_tile_overlap=4, vae_tile=8, vae_tile_overlap=4
    )
    tiled = pipeline.restore_one(request(model, photo), options)
    other_seed = pipeline.restore_one(request(model, photo, seed=2))

    difference = (tiled - untiled).abs().mean().item()
    assert difference <= 0.1
    assert difference < (other_seed - untiled).abs().mean().item() / 3

    tiling = LatentTiling.plan(16, 24, 8, 4, options.tile_sigma, 2)
    assert len(tiling) == 15  # the run above really was tiled, 3 x 5
    for axis, starts, side, length in ((2, tiling.xs, 8, 24), (1, tiling.ys, 8, 16)):
        steps = (
            tiled.narrow(axis, 1, tiled.shape[axis] - 1)
            - tiled.narrow(axis, 0, tiled.shape[axis] - 1)
        ).abs()
        profile = steps.mean(dim=tuple(d for d in (0, 1, 2) if d != axis))
        edges = {s * 8 for s in starts if s} | {(s + side) * 8 for s in starts if s + side < length}
        assert max(profile[e - 1] for e in edges) <= 1.3 * profile.median()


def test_tiled_vae_stays_close_to_the_whole_image_vae(model, pipeline, photo):
    """Stated tolerance, relative to how much another image changes the result: tiled encode
    within 0.35 of it, tiled decode within 0.5 (a random tiny VAE normalises each tile with
    its own GroupNorm statistics; a trained VAE is far less sensitive)."""
    options = replace(pipeline.options, vae_tile=16, vae_tile_overlap=8)
    whole, other = pipeline.encode(photo), pipeline.encode(photo.flip(-1))
    tiled = pipeline.encode(photo, options)
    assert tiled.shape == whole.shape == (4, 16, 24)
    scale = (other - whole).abs().mean()
    assert (tiled - whole).abs().mean() < 0.35 * scale
    decoded_whole, decoded_other = pipeline.decode(whole), pipeline.decode(other)
    decoded_tiled = pipeline.decode(whole, options)
    assert decoded_tiled.shape == photo.shape
    scale = (decoded_other - decoded_whole).abs().mean()
    assert (decoded_tiled - decoded_whole).abs().mean() < 0.5 * scale


def test_tiles_blend_back_to_the_exact_input():
    image = torch.rand(3, 40, 56)
    tiling = LatentTiling.plan(40, 56, 16, 6, 0.25)
    assert len(tiling) > 4
    assert torch.allclose(
        map_tiled(lambda x: x, image, tiling, 1, 1, batch_size=3), image, atol=1e-6
    )


def test_images_batched_together_come_out_as_each_alone(model, pipeline, photo):
    small = photo[:, :48, :64]
    alone = [
        pipeline.restore_one(request(model, photo, seed=3, prompt="a cup")),
        pipeline.restore_one(request(model, small, seed=4, prompt="coffee")),
        pipeline.restore_one(request(model, photo.flip(-1), seed=5, prompt="")),
    ]
    options = replace(pipeline.options, latent_tile=12, latent_tile_overlap=4)
    batched = pipeline.restore(
        [
            request(model, photo, seed=3, prompt="a cup"),
            request(model, small, seed=4, prompt="coffee"),
            request(model, photo.flip(-1), seed=5, prompt=""),
        ],
        batch_size=8,
    )
    for one, many in zip(alone, batched, strict=True):
        torch.testing.assert_close(many, one, atol=1e-4, rtol=0)
    tiled_batch = pipeline.restore([request(model, photo, seed=3)], options, batch_size=4)
    assert tiled_batch[0].shape == photo.shape


def test_odd_sizes_are_padded_inside_and_cropped_back(model, pipeline, photo):
    odd = photo[:, :37, :53]
    out = pipeline.restore_one(request(model, odd))
    assert out.shape == (3, 37, 53)


def test_colour_fix_keeps_the_low_frequency_colour_of_the_lr_image(model, pipeline, photo):
    def run(method: str) -> torch.Tensor:
        return pipeline.restore_one(
            request(model, photo), replace(pipeline.options, color_fix=method)
        )

    none, adain, wavelet = run("none"), run("adain"), run("wavelet")
    lr_mean = photo.mean(dim=(1, 2))
    assert (none.mean(dim=(1, 2)) - lr_mean).abs().max() > 0.05  # the raw output drifted
    assert (adain.mean(dim=(1, 2)) - lr_mean).abs().max() < 0.02

    def low(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(low_frequency(x[None]), 8)

    assert (low(none) - low(photo)).abs().mean() > 0.1
    assert (low(wavelet) - low(photo)).abs().mean() < 0.03


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_other_samplers_are_selectable(model, pipeline, photo, sampler):
    options = replace(pipeline.options, sampler=sampler)
    out = pipeline.restore_one(request(model, photo), options)
    ddpm = pipeline.restore_one(request(model, photo))
    assert out.shape == photo.shape and torch.isfinite(out).all()
    assert (out - ddpm).abs().mean() > 1e-3


def test_progress_is_reported_every_step(model, pipeline, photo):
    seen: list[tuple[int, int]] = []
    pipeline.restore_one(request(model, photo, on_step=lambda i, n: seen.append((i, n))))
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]


def test_a_cancelled_image_stops_and_its_batch_mates_finish(model, pipeline, photo):
    steps: list[int] = []
    cancel = request(
        model, photo, on_step=lambda i, n: steps.append(i), should_cancel=lambda: len(steps) >= 1
    )
    with pytest.raises(Cancelled):
        pipeline.restore_one(cancel)
    assert steps == [1]

    steps.clear()
    cancel = request(
        model, photo, on_step=lambda i, n: steps.append(i), should_cancel=lambda: len(steps) >= 1
    )
    results = pipeline.restore([cancel, request(model, photo, seed=9)])
    assert isinstance(results[0], Cancelled)
    alone = pipeline.restore_one(request(model, photo, seed=9))
    torch.testing.assert_close(results[1], alone, atol=1e-4, rtol=0)


def test_guidance_scale_one_needs_no_negative_prompt(model, pipeline, photo):
    unguided = replace(pipeline.options, guidance_scale=1.0)
    req = replace(request(model, photo), negative_text=None)
    assert pipeline.restore_one(req, unguided).shape == photo.shape
    with pytest.raises(InvalidParameterError):
        pipeline.restore_one(req)

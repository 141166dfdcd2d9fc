"""The ``megasr`` engine end to end on a tiny checkpoint, through the shared upscaler, with the
per-tile generation options a request brings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from megasr_tiny import one_thread
from worker_engines import TinyEngine

from megasr.errors import EngineError, InvalidParameterError
from megasr.imaging.image import DecodedImage
from megasr.imaging.sizing import OutputSize
from megasr.model.engines.base import GenerationOptions, run_tiles
from megasr.model.engines.megasr_engine import MegaSREngine
from megasr.model.megasr.checkpoint import init_tiny_checkpoint
from megasr.model.tiler import TileAccumulator
from megasr.model.upscaler import Upscaler, cut_tiles
from megasr.settings import Settings


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> MegaSREngine:
    directory = tmp_path_factory.mktemp("tiny-megasr")
    with one_thread():
        init_tiny_checkpoint(directory, seed=0)
        engine = MegaSREngine(directory, Settings())
        engine.load(torch.device("cpu"))
    return engine


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_tile_spec_is_one_latent_tile_of_output(engine):
    spec = engine.tile_spec
    # 96 latents x 8 px / 4 = 192 LR px; a 32-latent overlap is 64 LR px; tiny U-Net: x2 latents.
    assert (spec.size, spec.overlap, spec.multiple) == (192, 64, 4)
    assert MegaSREngine(engine.checkpoint_dir, Settings(tile=100)).tile_spec.size == 100


def test_an_image_comes_back_at_the_requested_size(engine, coffee):
    rgb = coffee[100:140, 200:256].astype(np.float32) / 255  # 40 x 56, a real photo crop
    image = DecodedImage(rgb=rgb, alpha=None, source_format="png")
    out = Upscaler(engine).upscale(image, OutputSize(width=150))
    assert (out.width, out.height) == (150, 107)
    assert out.rgb.dtype == np.float32 and out.rgb.min() >= 0.0 and out.rgb.max() <= 1.0
    native = engine.run(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
    assert native.shape == (1, 3, 160, 224)
    assert torch.equal(native, engine.run(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]))


def test_an_unloaded_engine_or_a_missing_checkpoint_is_an_engine_error(engine, tmp_path):
    with pytest.raises(EngineError, match="not loaded"):
        MegaSREngine(engine.checkpoint_dir, Settings()).run(torch.zeros(1, 3, 8, 8))
    with pytest.raises(EngineError, match="not a MegaSR checkpoint"):
        MegaSREngine(tmp_path, Settings())


def lr_tiles(count: int, side: int = 16) -> torch.Tensor:
    return torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(5))


def test_tiles_with_their_own_prompt_and_seed_share_a_call(engine):
    tiles = lr_tiles(2)
    cat = GenerationOptions(prompt="a cat", seed=1, steps=2, color_fix="wavelet")
    dog = GenerationOptions(
        prompt="a dog", negative_prompt="fur", seed=9, steps=2, color_fix="wavelet"
    )

    together = engine.run(tiles, [cat, dog])

    assert together.shape == (2, 3, 64, 64)
    # Each tile comes out as it does alone (up to float rounding of a larger batch).
    torch.testing.assert_close(together[0], engine.run(tiles[:1], [cat])[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(together[1], engine.run(tiles[1:], [dog])[0], atol=1e-4, rtol=0)
    assert torch.equal(engine.run(tiles[:1], [cat]), engine.run(tiles[:1], [cat]))
    # The seed and the prompt are each the tile's own.
    reseeded = engine.run(tiles[:1], [replace(cat, seed=2)])
    assert (reseeded - together[:1]).abs().max() > 0.05
    reprompted = engine.run(tiles[:1], [replace(cat, prompt="a dog")])
    assert (reprompted - together[:1]).abs().max() > 0.01


def test_left_out_options_are_the_checkpoint_defaults(engine):
    tiles = lr_tiles(1)
    defaults = engine.config.inference
    spelled_out = GenerationOptions(
        prompt="",
        negative_prompt=defaults.negative_prompt,
        steps=defaults.steps,
        guidance_scale=defaults.guidance_scale,
        seed=defaults.seed,
        color_fix=defaults.color_fix,
    )
    plain = engine.run(tiles)
    assert torch.equal(engine.run(tiles, [spelled_out]), plain)
    for changed in ({"steps": 2}, {"guidance_scale": 1.0}, {"color_fix": "none"}):
        assert not torch.equal(engine.run(tiles, [replace(spelled_out, **changed)]), plain)


def test_tiles_of_one_call_must_share_the_sampling_loop(engine):
    tiles = lr_tiles(2)
    with pytest.raises(ValueError, match="must share steps, guidance_scale and color_fix"):
        engine.run(tiles, [GenerationOptions(steps=2), GenerationOptions(steps=3)])
    with pytest.raises(ValueError, match="1 generation options for 2 tiles"):
        engine.run(tiles, [GenerationOptions()])
    with pytest.raises(InvalidParameterError, match="unknown color_fix 'sepia'"):
        engine.run(tiles[:1], [GenerationOptions(color_fix="sepia")])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"guidance_scale": -0.5}, "guidance_scale must be a number of at least 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"seed": -1}, r"seed must be between 0 and 2\^64-1"),
    ],
)
def test_generation_options_refuse_bad_values(fields, message):
    with pytest.raises(InvalidParameterError, match=message):
        GenerationOptions(**fields)


def test_the_upscaler_gives_every_tile_the_image_options(engine, coffee):
    small_tiles = MegaSREngine(engine.checkpoint_dir, Settings(tile=32))
    small_tiles.load(torch.device("cpu"))
    rgb = coffee[100:140, 200:256].astype(np.float32) / 255
    image = DecodedImage(rgb=rgb, alpha=None, source_format="png")
    options = GenerationOptions(prompt="a cup of coffee", seed=3, steps=2)

    out = Upscaler(small_tiles).upscale(image, OutputSize(scale=4), options=options)

    tiles, layout = cut_tiles(image, small_tiles.tile_spec, fit=True)
    assert len(tiles) > 1
    accumulator = TileAccumulator(layout, 4)
    accumulator.add(0, small_tiles.run(tiles, [options] * len(tiles)))
    expected = accumulator.result().permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out.rgb, expected, atol=1e-4)


def test_engines_that_are_not_conditional_are_never_passed_options(coffee):
    # TinyEngine.run takes tiles only, like realesrgan-x4plus: options would be a TypeError.
    engine = TinyEngine(Settings())
    engine.load(torch.device("cpu"))
    image = DecodedImage(
        rgb=coffee[:20, :30].astype(np.float32) / 255, alpha=None, source_format="png"
    )
    options = GenerationOptions(prompt="ignored", steps=2, seed=1)
    with_options = Upscaler(engine).upscale(image, OutputSize(scale=2), options=options)
    assert np.array_equal(
        with_options.rgb, Upscaler(engine).upscale(image, OutputSize(scale=2)).rgb
    )
    assert torch.equal(run_tiles(engine, lr_tiles(1), [options]), engine.run(lr_tiles(1)))

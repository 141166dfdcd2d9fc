"""The ``megasr`` engine end to end on a tiny checkpoint: whole images at the requested size,
through the shared upscaler, with each request's own generation options."""

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
from megasr.model.engines.base import Cancelled, GenerationOptions, ImageTask
from megasr.model.engines.megasr_engine import MegaSREngine
from megasr.model.megasr.checkpoint import init_tiny_checkpoint
from megasr.model.megasr.pipeline import MegaSRPipeline, MegaSRPipelineOutput
from megasr.model.upscaler import Upscaler
from megasr.settings import Settings


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> MegaSREngine:
    directory = tmp_path_factory.mktemp("tiny-megasr")
    with one_thread():
        init_tiny_checkpoint(directory, seed=0)
        engine = MegaSREngine(directory, Settings())
        engine.load(torch.device("cpu"))
    return engine


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lr_image(height: int = 16, width: int = 16, seed: int = 5) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def test_the_tile_setting_is_the_latent_tile_in_output_pixels(engine):
    assert engine.defaults.latent_tile == 160 and engine.defaults.vae_tile == 160
    small = MegaSREngine(engine.checkpoint_dir, Settings(tile=100))
    # 100 px -> 12 latents, a multiple of the tiny U-Net's 4; the VAE follows.
    assert (small.defaults.latent_tile, small.defaults.vae_tile) == (12, 12)
    assert small.defaults.latent_tile_overlap == 6
    # A 256 x 384 output is 32 x 48 latents: 12-latent tiles with stride 4 (6 rounded down
    # to the multiple) -> 6 x 10.
    assert small.tiles_per_step(256, 384) == 60
    assert engine.tiles_per_step(256, 384) == 1


def test_an_image_is_restored_whole_at_the_requested_size(engine, coffee):
    rgb = coffee[100:140, 200:256].astype(np.float32) / 255  # 40 x 56, a real photo crop
    image = DecodedImage(rgb=rgb, alpha=None, source_format="png")
    steps: list[tuple[int, int]] = []
    out = Upscaler(engine).upscale(
        image, OutputSize(width=150), on_progress=lambda done, total: steps.append((done, total))
    )
    assert (out.width, out.height) == (150, 107)  # restored at 150 x 107, not x4 and resized
    assert out.rgb.dtype == np.float32 and out.rgb.min() >= 0.0 and out.rgb.max() <= 1.0
    assert steps == [(i, 4) for i in range(1, 5)]  # the tiny checkpoint samples 4 steps
    pixels = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    (again,) = engine.restore([ImageTask(pixels, (107, 150))])
    np.testing.assert_array_equal(again.permute(1, 2, 0).numpy(), out.rgb)


def test_an_unloaded_engine_or_a_missing_checkpoint_is_an_engine_error(engine, tmp_path):
    with pytest.raises(EngineError, match="not loaded"):
        MegaSREngine(engine.checkpoint_dir, Settings()).restore([ImageTask(lr_image(), (8, 8))])
    with pytest.raises(EngineError, match="not a MegaSR checkpoint"):
        MegaSREngine(tmp_path, Settings())


def test_images_with_their_own_options_share_a_call_and_equal_each_alone(engine):
    cat = GenerationOptions(prompt="a cat", seed=1, steps=2, color_fix="wavelet")
    dog = GenerationOptions(prompt="a dog", negative_prompt="fur", seed=9, steps=3)
    tasks = [ImageTask(lr_image(), (64, 64), cat), ImageTask(lr_image(24, 16, 6), (96, 64), dog)]
    passes: list[int] = []

    together = engine.restore(tasks, on_batch=passes.append)

    assert [t.shape for t in together] == [(3, 64, 64), (3, 96, 64)]
    # Tiles of different sizes run apart: a pass each per step, the second image one more.
    assert passes == [1, 1, 1, 1, 1]
    for task, result in zip(tasks, together, strict=True):
        (alone,) = engine.restore([task])
        torch.testing.assert_close(result, alone, atol=1e-4, rtol=0)
    # The seed and the prompt are each the image's own.
    (reseeded,) = engine.restore([replace(tasks[0], options=replace(cat, seed=2))])
    assert (reseeded - together[0]).abs().max() > 0.05
    (reprompted,) = engine.restore([replace(tasks[0], options=replace(cat, prompt="a dog"))])
    assert (reprompted - together[0]).abs().max() > 0.01


def test_left_out_options_are_the_checkpoint_defaults(engine):
    defaults = engine.defaults
    spelled_out = GenerationOptions(
        prompt="",
        negative_prompt=defaults.negative_prompt,
        steps=defaults.steps,
        guidance_scale=defaults.guidance_scale,
        seed=defaults.seed,
        color_fix=defaults.color_fix,
    )

    def run(options: GenerationOptions) -> torch.Tensor:
        return engine.restore([ImageTask(lr_image(), (64, 64), options)])[0]

    plain = run(GenerationOptions())
    assert torch.equal(run(spelled_out), plain)
    for changed in ({"steps": 2}, {"guidance_scale": 1.0}, {"color_fix": "none"}):
        assert not torch.equal(run(replace(spelled_out, **changed)), plain)


def test_an_unknown_colour_fix_is_refused(engine):
    with pytest.raises(InvalidParameterError, match="unknown color_fix 'sepia'"):
        engine.restore([ImageTask(lr_image(), (64, 64), GenerationOptions(color_fix="sepia"))])


def test_a_cancelled_image_comes_back_as_cancelled(engine):
    steps: list[int] = []
    task = ImageTask(
        lr_image(),
        (64, 64),
        on_progress=lambda done, total: steps.append(done),
        should_cancel=lambda: len(steps) >= 2,
    )
    (result,) = engine.restore([task])
    assert isinstance(result, Cancelled) and steps == [1, 2]


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


def test_a_tile_engine_ignores_the_generation_options(coffee):
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


def test_a_saved_pipeline_loaded_with_from_pretrained_gives_the_engines_image(engine, tmp_path):
    """The checkpoint is a diffusers pipeline: ``MegaSRPipeline.from_pretrained`` and a call in
    diffusers' conventions give what the ``megasr`` engine gives for the same seed, and
    ``save_pretrained`` of the loaded pipeline round-trips it."""
    lr = lr_image(12, 16)
    (served,) = engine.restore([ImageTask(lr, (48, 64), GenerationOptions(seed=7, steps=2))])
    pipe = MegaSRPipeline.from_pretrained(engine.checkpoint_dir)
    pipe.save_pretrained(tmp_path / "again")
    again = MegaSRPipeline.from_pretrained(tmp_path / "again")
    for loaded in (pipe, again):
        out = loaded(
            image=lr,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(7),
            output_type="pt",
        )
        assert isinstance(out, MegaSRPipelineOutput) and out.images.shape == (1, 3, 48, 64)
        torch.testing.assert_close(out.images[0], served, atol=1e-5, rtol=0)
    (pil,) = pipe(lr, num_inference_steps=1, output_type="pil", return_dict=False)[0]
    assert pil.size == (64, 48)  # x4 by default, as diffusers' upscalers
    images = pipe([lr, lr_image(8, 8)], height=None, num_inference_steps=1, output_type="np")
    assert [i.shape for i in images.images] == [(48, 64, 3), (32, 32, 3)]

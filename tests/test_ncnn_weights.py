"""The ncnn reader and converter, on tiny models written here and on the packaged x4plus."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from megasr.errors import EngineError
from megasr.model.engines.realesrgan import BIN_FILE, BIN_SHA256, PARAM_FILE, WEIGHTS_PACKAGE
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.model.nets.srvgg import SRVGGNetCompact
from megasr.model.weights.ncnn import (
    FP16_TAG,
    FP32_TAG,
    layers_to_state_dict,
    read_layers,
)


def write_ncnn(net: nn.Module, folder: Path, fp16: bool = True) -> tuple[Path, Path]:
    """Export ``net``'s convolutions and PReLUs the way ncnn stores them (written from the
    format notes).

    Convolution weights are tagged, float16 ones padded to 4 bytes; biases and PReLU slopes
    follow untagged as float32. Only the layer lines matter to the reader, so the graph's
    blobs are left unconnected.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.PReLU)]
    lines = ["7767517", f"{len(layers) + 1} {len(layers) + 1}", "Input data 0 1 data"]
    blob = bytearray()
    for i, layer in enumerate(layers):
        weight = layer.weight.detach().numpy()
        if isinstance(layer, nn.PReLU):
            lines.append(f"PReLU prelu{i} 1 1 b{i} b{i + 1} 0={weight.size}")
            blob += weight.astype("<f4").tobytes()
            continue
        k = layer.kernel_size[0]
        lines.append(
            f"Convolution conv{i} 1 1 b{i} b{i + 1} 0={weight.shape[0]} 1={k} "
            f"4={layer.padding[0]} 5=1 6={weight.size} 9=2 -23310=1,2.000000e-01"
        )
        if fp16:
            data = weight.astype("<f2").tobytes()
            blob += struct.pack("<I", FP16_TAG) + data + bytes(-len(data) % 4)
        else:
            blob += struct.pack("<I", FP32_TAG) + weight.astype("<f4").tobytes()
        blob += layer.bias.detach().numpy().astype("<f4").tobytes()
    param, weights = folder / "tiny.param", folder / "tiny.bin"
    param.write_text("\r\n".join(lines) + "\r\n")
    weights.write_bytes(bytes(blob))
    return param, weights


def halve_convolutions(net: nn.Module) -> None:
    """Round ``net``'s convolution weights to what a float16 file can hold."""
    for conv in net.modules():
        if isinstance(conv, nn.Conv2d):
            conv.weight.data = conv.weight.data.half().float()


def tiny_rrdbnet(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    # 3 features: conv_first has 81 weights, an odd count, so float16 data needs padding.
    return RRDBNet(num_feat=3, num_block=1, num_grow_ch=2)


@pytest.fixture(scope="module")
def packaged_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Copies of the packaged x4plus files, which the tests may damage."""
    import importlib.resources

    models = importlib.resources.files(WEIGHTS_PACKAGE)
    folder = tmp_path_factory.mktemp("x4plus")
    param, weights = folder / "x4plus.param", folder / "x4plus.bin"
    with importlib.resources.as_file(models / PARAM_FILE) as src:
        shutil.copyfile(src, param)
    with importlib.resources.as_file(models / BIN_FILE) as src:
        shutil.copyfile(src, weights)
    return param, weights


@pytest.mark.parametrize("fp16", [True, False])
def test_round_trip_of_a_tiny_rrdbnet(tmp_path: Path, fp16: bool) -> None:
    source = tiny_rrdbnet()
    if fp16:  # the file holds float16 weights: compare against what it can hold
        halve_convolutions(source)
    param, weights = write_ncnn(source, tmp_path, fp16=fp16)

    convolutions = read_layers(param, weights)
    target = tiny_rrdbnet(seed=1)
    target.load_state_dict(layers_to_state_dict(convolutions, target))

    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(source(x), target(x))


def test_packaged_x4plus_converts_onto_the_default_network(
    packaged_model: tuple[Path, Path],
) -> None:
    convolutions = read_layers(*packaged_model, expected_sha256=BIN_SHA256)

    assert len(convolutions) == 351  # conv_first, 23 x 3 x 5 dense convs, body, up1, up2, hr, last
    assert convolutions[0].weight.shape == (64, 3, 3, 3)
    assert convolutions[1].weight.shape == (32, 64, 3, 3)
    assert convolutions[-1].weight.shape == (3, 64, 3, 3)
    with torch.device("meta"):
        net = RRDBNet()
    state = layers_to_state_dict(convolutions, net)
    assert state.keys() == net.state_dict().keys()
    assert sum(t.numel() for t in state.values()) == 16_697_987
    assert all(torch.isfinite(t).all() for t in state.values())


def test_truncated_bin_is_refused(packaged_model: tuple[Path, Path], tmp_path: Path) -> None:
    param, weights = packaged_model
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(weights.read_bytes()[:-1000])

    with pytest.raises(EngineError, match=r"truncated.bin: truncated at layer Conv_1186"):
        read_layers(param, truncated)


def test_trailing_bytes_are_refused(packaged_model: tuple[Path, Path], tmp_path: Path) -> None:
    param, weights = packaged_model
    longer = tmp_path / "longer.bin"
    longer.write_bytes(weights.read_bytes() + bytes(8))

    with pytest.raises(EngineError, match="8 bytes left after the last layer"):
        read_layers(param, longer)


def test_wrong_checksum_is_refused_before_parsing(
    packaged_model: tuple[Path, Path], tmp_path: Path
) -> None:
    param, weights = packaged_model
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # a weight, not a tag: the parser alone would accept it
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(bytes(data))

    read_layers(param, damaged)
    with pytest.raises(EngineError, match=r"damaged\.bin: sha256 \w+ does not match"):
        read_layers(param, damaged, expected_sha256=BIN_SHA256)


def test_unknown_weight_tag_is_refused(tmp_path: Path) -> None:
    param, weights = write_ncnn(tiny_rrdbnet(), tmp_path)
    data = bytearray(weights.read_bytes())
    data[0:4] = struct.pack("<I", 0x000D4B38)  # ncnn's int8 tag
    weights.write_bytes(bytes(data))

    with pytest.raises(EngineError, match="unsupported weight tag 0x000d4b38"):
        read_layers(param, weights)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: ["7767518", *lines[1:]], "not an ncnn param file"),
        (lambda lines: [*lines, "InnerProduct fc 1 1 a b 0=10"], "declares .* layers, has"),
        (
            lambda lines: [lines[0], lines[1], "InnerProduct fc 1 1 a b 0=10", *lines[3:]],
            "layer fc of type InnerProduct is not supported",
        ),
        (lambda lines: [*lines[:3], lines[3] + " 11=5", *lines[4:]], "not square or symmetric"),
        (lambda lines: [*lines[:3], lines[3] + " 6", *lines[4:]], "malformed parameter '6'"),
    ],
)
def test_malformed_param_is_refused(tmp_path: Path, edit, message: str) -> None:
    param, weights = write_ncnn(tiny_rrdbnet(), tmp_path)
    param.write_text("\n".join(edit(param.read_text().splitlines())))

    with pytest.raises(EngineError, match=message):
        read_layers(param, weights)


def test_converter_checks_every_shape(tmp_path: Path) -> None:
    convolutions = read_layers(*write_ncnn(tiny_rrdbnet(), tmp_path))

    wider = RRDBNet(num_feat=3, num_block=1, num_grow_ch=4)
    with pytest.raises(
        EngineError, match=r"conv1 \(weight \(2, 3, 3, 3\)\) does not fit body.0.rdb1.conv1"
    ):
        layers_to_state_dict(convolutions, wider)
    deeper = RRDBNet(num_feat=3, num_block=2, num_grow_ch=2)
    with pytest.raises(EngineError, match="has 21 layers with weights, the network 36"):
        layers_to_state_dict(convolutions, deeper)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    param, _ = write_ncnn(tiny_rrdbnet(), tmp_path)
    with pytest.raises(EngineError, match=r"cannot read ncnn model file .*absent\.bin"):
        read_layers(param, tmp_path / "absent.bin", expected_sha256=BIN_SHA256)


def test_float16_values_are_read_exactly(tmp_path: Path) -> None:
    source = tiny_rrdbnet()
    param, weights = write_ncnn(source, tmp_path, fp16=True)
    first = read_layers(param, weights)[0].weight
    expected = source.conv_first.weight.detach().numpy().astype(np.float16).astype(np.float32)
    assert np.array_equal(first.numpy(), expected)


def tiny_srvgg(seed: int = 0, scale: int | None = None) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_feat=4, num_conv=2, scale=scale)
    for prelu in net.modules():  # away from PyTorch's constant 0.25, so a swap would show
        if isinstance(prelu, nn.PReLU):
            prelu.weight.data.uniform_(0.0, 0.5)
    return net


def test_round_trip_of_a_tiny_srvggnet_with_its_prelu_slopes(tmp_path: Path) -> None:
    source = tiny_srvgg()
    halve_convolutions(source)
    param, weights = write_ncnn(source, tmp_path)

    layers = read_layers(param, weights)
    target = tiny_srvgg(seed=1)
    target.load_state_dict(layers_to_state_dict(layers, target))

    assert [type(layer).__name__ for layer in layers[:3]] == [
        "ConvolutionWeights",
        "PReLUWeights",
        "ConvolutionWeights",
    ]
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(source(x), target(x))


def test_a_prelu_where_the_network_has_a_convolution_is_refused(tmp_path: Path) -> None:
    layers = read_layers(*write_ncnn(tiny_srvgg(), tmp_path))

    shifted = [layers[1], layers[0], *layers[2:]]  # a PReLU first, where conv_first stands

    with pytest.raises(EngineError, match=r"prelu1 \(PReLU, 4 slopes\) does not fit body.0"):
        layers_to_state_dict(shifted, tiny_srvgg())


def test_a_prelu_without_slopes_is_refused(tmp_path: Path) -> None:
    param, weights = write_ncnn(tiny_srvgg(), tmp_path)
    param.write_text(param.read_text().replace(" 0=4\n", " 0=0\n", 1))

    with pytest.raises(EngineError, match="layer prelu1 has no slopes"):
        read_layers(param, weights)


@pytest.mark.parametrize(("scale", "side"), [(2, 16), (3, 24), (4, 32)])
def test_srvggnet_x2_and_x3_resize_the_x4_output(scale: int, side: int) -> None:
    """The ncnn graphs of the x2 and x3 releases: the x4 network, then bicubic 1/2 or 3/4."""
    x4, scaled = tiny_srvgg(), tiny_srvgg(scale=scale)
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        out = scaled(x)
        expected = F.interpolate(x4(x), size=(side, side), mode="bicubic", align_corners=False)

    assert out.shape == (1, 3, side, side)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="between 1 and the upscale 4"):
        SRVGGNetCompact(scale=5)

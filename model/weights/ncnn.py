"""Read the weights of an ncnn model and map them onto a PyTorch network.

The Real-ESRGAN-family weights ship only as ncnn models (a text ``.param`` graph and a binary
``.bin``) inside registry packages. The graphs used here hold weights in ``Convolution`` and
``PReLU`` layers alone, so the reader walks the graph, takes each such layer's tensors from
the ``.bin`` in order, and insists that the file is consumed to the last byte: a truncated or
foreign file fails loudly instead of loading shifted weights. The converter then pairs the
layers with the network's ``Conv2d`` and ``PReLU`` modules by order and checks every shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from megasr.errors import EngineError

PARAM_MAGIC = 7767517
FP16_TAG = 0x01306B47
FP32_TAG = 0

# Layer types that carry no data in the .bin; any other type would shift every later offset.
WEIGHTLESS_LAYERS = frozenset(
    {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"}
)

# Convolution parameter ids (ncnn's operator docs): per-axis variants of these ids
# (kernel_h = 11, dilation_h = 12, stride_h = 13, pads 14-16) must equal the base value.
_NUM_OUTPUT, _KERNEL, _DILATION, _STRIDE, _PAD, _BIAS_TERM, _WEIGHT_COUNT = 0, 1, 2, 3, 4, 5, 6
_PER_AXIS = {11: _KERNEL, 12: _DILATION, 13: _STRIDE, 14: _PAD, 15: _PAD, 16: _PAD}
_INT8_SCALE_TERM, _DYNAMIC_WEIGHT = 8, 19
_NUM_SLOPE = 0  # PReLU


@dataclass(frozen=True)
class ConvolutionWeights:
    """One ncnn ``Convolution`` layer: its geometry and its tensors as float32."""

    name: str
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    weight: torch.Tensor  # (out, in, k, k)
    bias: torch.Tensor | None


@dataclass(frozen=True)
class PReLUWeights:
    """One ncnn ``PReLU`` layer: a negative slope per channel (or one for all)."""

    name: str
    weight: torch.Tensor  # (num_slope,)


LayerWeights = ConvolutionWeights | PReLUWeights


@dataclass(frozen=True)
class _PReLUParams:
    name: str
    num_slope: int


@dataclass(frozen=True)
class _ConvolutionParams:
    name: str
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    has_bias: bool
    weight_count: int


def read_layers(
    param_path: Path, bin_path: Path, expected_sha256: str | None = None
) -> list[LayerWeights]:
    """Every layer with weights (convolutions, PReLUs) of an ncnn model, in graph order.

    With ``expected_sha256`` the ``.bin`` is checked first, so a damaged or different file
    never gets as far as the parser.
    """
    data = _read_bytes(bin_path)
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise EngineError(
                f"{bin_path.name}: sha256 {actual} does not match the expected {expected_sha256}"
            )
    layers = _parse_param(_read_bytes(param_path).decode("latin-1"), param_path.name)
    reader = _BinReader(data, bin_path.name)
    weights = [_read_layer(reader, layer) for layer in layers]
    reader.expect_end()
    return weights


def _parse_param(text: str, source: str = "param") -> list[_ConvolutionParams | _PReLUParams]:
    """The layers of an ncnn ``.param`` graph that carry weights; refuses unknown ones."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise EngineError(f"{source}: not an ncnn param file (magic {PARAM_MAGIC} missing)")
    try:
        layer_count = int(lines[1][0])
    except (IndexError, ValueError):
        raise EngineError(f"{source}: missing the layer and blob counts line") from None
    if len(lines) - 2 != layer_count:
        raise EngineError(f"{source}: declares {layer_count} layers, has {len(lines) - 2}")
    layers: list[_ConvolutionParams | _PReLUParams] = []
    for tokens in lines[2:]:
        layer_type, name, params = _split_layer(tokens, source)
        if layer_type == "Convolution":
            layers.append(_convolution_params(name, params, source))
        elif layer_type == "PReLU":
            layers.append(_prelu_params(name, params, source))
        elif layer_type not in WEIGHTLESS_LAYERS:
            raise EngineError(f"{source}: layer {name} of type {layer_type} is not supported")
    return layers


def layers_to_state_dict(layers: Sequence[LayerWeights], net: nn.Module) -> dict[str, torch.Tensor]:
    """Pair ncnn layers with ``net``'s ``Conv2d`` and ``PReLU`` modules in order; check every
    kind and shape.

    The result covers the network's whole state dict, so ``load_state_dict(strict=True)``
    accepts it.
    """
    modules = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.PReLU)]
    if len(modules) != len(layers):
        raise EngineError(
            f"the ncnn model has {len(layers)} layers with weights, the network {len(modules)}"
        )
    state: dict[str, torch.Tensor] = {}
    for (name, module), layer in zip(modules, layers, strict=True):
        if isinstance(layer, PReLUWeights):
            _check_prelu(name, module, layer)
            state[f"{name}.weight"] = layer.weight
            continue
        _check_match(name, module, layer)
        state[f"{name}.weight"] = layer.weight
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise EngineError(
            f"the ncnn model leaves {len(missing)} tensors unset: {sorted(missing)[:3]}"
        )
    return state


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read ncnn model file {path}: {exc.strerror}") from None


def _split_layer(tokens: list[str], source: str) -> tuple[str, str, dict[int, str]]:
    try:
        layer_type, name = tokens[0], tokens[1]
        blob_count = int(tokens[2]) + int(tokens[3])
    except (IndexError, ValueError):
        raise EngineError(f"{source}: malformed layer line {' '.join(tokens)!r}") from None
    if len(tokens) < 4 + blob_count:
        raise EngineError(f"{source}: layer {name} lists fewer blobs than it declares")
    params: dict[int, str] = {}
    for item in tokens[4 + blob_count :]:
        key, sep, value = item.partition("=")
        if not sep or not key.lstrip("-").isdigit():
            raise EngineError(f"{source}: layer {name} has a malformed parameter {item!r}")
        params[int(key)] = value
    return layer_type, name, params


def _convolution_params(name: str, params: dict[int, str], source: str) -> _ConvolutionParams:
    def integer(key: int, default: int) -> int:
        try:
            return int(params.get(key, default))
        except ValueError:
            raise EngineError(f"{source}: layer {name} parameter {key} is not an integer") from None

    for axis_key, base_key in _PER_AXIS.items():
        if axis_key in params and integer(axis_key, 0) != integer(base_key, 0):
            raise EngineError(f"{source}: layer {name} is not square or symmetric")
    if integer(_INT8_SCALE_TERM, 0) or integer(_DYNAMIC_WEIGHT, 0):
        raise EngineError(f"{source}: layer {name} is int8-quantised or dynamic; not supported")
    if _NUM_OUTPUT not in params or _WEIGHT_COUNT not in params:
        raise EngineError(f"{source}: layer {name} lacks its output or weight count")
    conv = _ConvolutionParams(
        name=name,
        out_channels=integer(_NUM_OUTPUT, 0),
        kernel_size=integer(_KERNEL, 0),
        stride=integer(_STRIDE, 1),
        padding=integer(_PAD, 0),
        dilation=integer(_DILATION, 1),
        has_bias=bool(integer(_BIAS_TERM, 0)),
        weight_count=integer(_WEIGHT_COUNT, 0),
    )
    per_input = conv.out_channels * conv.kernel_size**2
    if min(conv.out_channels, conv.kernel_size, conv.weight_count) < 1 or conv.padding < 0:
        raise EngineError(f"{source}: layer {name} has invalid sizes")
    if conv.weight_count % per_input:
        raise EngineError(f"{source}: layer {name} weight count does not divide into OIHW")
    return conv


def _prelu_params(name: str, params: dict[int, str], source: str) -> _PReLUParams:
    try:
        num_slope = int(params.get(_NUM_SLOPE, 0))
    except ValueError:
        raise EngineError(f"{source}: layer {name} parameter 0 is not an integer") from None
    if num_slope < 1:
        raise EngineError(f"{source}: layer {name} has no slopes")
    return _PReLUParams(name, num_slope)


def _read_layer(reader: _BinReader, layer: _ConvolutionParams | _PReLUParams) -> LayerWeights:
    if isinstance(layer, _PReLUParams):  # ncnn loads slopes as raw float32, untagged
        slopes = reader.float32(layer.num_slope, layer.name)
        return PReLUWeights(layer.name, torch.from_numpy(slopes))
    return _read_convolution(reader, layer)


def _read_convolution(reader: _BinReader, conv: _ConvolutionParams) -> ConvolutionWeights:
    k = conv.kernel_size
    in_channels = conv.weight_count // (conv.out_channels * k * k)
    weight = reader.tagged(conv.weight_count, conv.name)
    bias = reader.float32(conv.out_channels, conv.name) if conv.has_bias else None
    return ConvolutionWeights(
        name=conv.name,
        kernel_size=k,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        weight=torch.from_numpy(weight).reshape(conv.out_channels, in_channels, k, k),
        bias=None if bias is None else torch.from_numpy(bias),
    )


class _BinReader:
    """Sequential reads from an ncnn ``.bin`` with ncnn's tagging and 4-byte alignment."""

    def __init__(self, data: bytes, source: str) -> None:
        self._data = memoryview(data)
        self._source = source
        self._offset = 0

    def tagged(self, count: int, layer: str) -> np.ndarray:
        """``count`` values after a 4-byte type tag, as float32."""
        (tag,) = np.frombuffer(self._take(4, layer), dtype="<u4")
        if tag == FP16_TAG:
            values = np.frombuffer(self._take(count * 2, layer), dtype="<f2")
            self._take(-(count * 2) % 4, layer)
            return values.astype(np.float32)
        if tag == FP32_TAG:
            return self.float32(count, layer)
        raise EngineError(f"{self._source}: layer {layer} has unsupported weight tag {tag:#010x}")

    def float32(self, count: int, layer: str) -> np.ndarray:
        """``count`` untagged little-endian float32 values."""
        return np.frombuffer(self._take(count * 4, layer), dtype="<f4").astype(np.float32)

    def expect_end(self) -> None:
        extra = len(self._data) - self._offset
        if extra:
            raise EngineError(
                f"{self._source}: {extra} bytes left after the last layer; "
                "the file does not belong to this param file"
            )

    def _take(self, size: int, layer: str) -> memoryview:
        end = self._offset + size
        if end > len(self._data):
            raise EngineError(
                f"{self._source}: truncated at layer {layer}: needs {end} bytes, "
                f"the file has {len(self._data)}"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk


def _check_prelu(name: str, module: nn.Module, prelu: PReLUWeights) -> None:
    if not isinstance(module, nn.PReLU) or module.weight.shape != prelu.weight.shape:
        raise EngineError(
            f"ncnn layer {prelu.name} (PReLU, {len(prelu.weight)} slopes) does not fit {name}"
        )


def _check_match(name: str, module: nn.Module, conv: ConvolutionWeights) -> None:
    if not isinstance(module, nn.Conv2d):
        raise EngineError(f"ncnn layer {conv.name} (a convolution) does not fit {name}")
    geometry = (module.kernel_size, module.stride, module.padding, module.dilation)
    expected = (
        (conv.kernel_size,) * 2,
        (conv.stride,) * 2,
        (conv.padding,) * 2,
        (conv.dilation,) * 2,
    )
    if tuple(conv.weight.shape) != tuple(module.weight.shape) or geometry != expected:
        raise EngineError(
            f"ncnn layer {conv.name} (weight {tuple(conv.weight.shape)}) does not fit "
            f"{name} (weight {tuple(module.weight.shape)})"
        )
    if (conv.bias is None) != (module.bias is None):
        raise EngineError(f"ncnn layer {conv.name} and {name} disagree on having a bias")

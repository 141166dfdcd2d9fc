"""TensorBoard logs of a training run: scalars (losses, learning rate) and sample images.

Only the main process of a multi-GPU run writes. TensorBoard is an optional dependency (the
``train`` extra): a run asked to log without it fails at start with one line, not after
hours of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from megasr.errors import InvalidParameterError


class TrainingLog:
    """A TensorBoard event writer, or nothing when logging is off or on another process."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise InvalidParameterError(
                "TensorBoard logging needs the tensorboard package: pip install "
                "'megasr[train]' (or set logging.tensorboard = false)"
            ) from error
        self._writer = SummaryWriter(log_dir=str(directory))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def image(self, name: str, image: Tensor, step: int) -> None:
        """``image`` (3, H, W) in [0, 1]."""
        if self._writer is not None:
            self._writer.add_image(name, image.clamp(0.0, 1.0), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

"""Output-size rules shared by the CLI, the gateway and the engines.

A request names either a ``scale`` (1 to 8, fractional allowed) or a target ``width`` and/or
``height``. With one side given the other follows the input's aspect ratio; with both the
output has exactly that size. Sides are rounded to the nearest pixel, never below one.
"""

from __future__ import annotations

from dataclasses import dataclass

from megasr.errors import ImageTooLargeError, InvalidParameterError

MIN_SCALE = 1.0
MAX_SCALE = 8.0
DEFAULT_SCALE = 4.0


@dataclass(frozen=True)
class OutputSize:
    """What the user asked for: a scale, or a width and/or height."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise InvalidParameterError("give either scale or width/height, not both")
        if self.scale is not None and not MIN_SCALE <= self.scale <= MAX_SCALE:
            raise InvalidParameterError(
                f"scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}, got {self.scale:g}"
            )
        for name, side in (("width", self.width), ("height", self.height)):
            if side is not None and side < 1:
                raise InvalidParameterError(f"{name} must be a positive number of pixels")

    def resolve(self, width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
        """The exact (width, height) of the output for an input of ``width`` x ``height``."""
        if self.width is not None and self.height is not None:
            size = (self.width, self.height)
        elif self.width is not None:
            size = (self.width, _round_side(height * self.width / width))
        elif self.height is not None:
            size = (_round_side(width * self.height / height), self.height)
        else:
            scale = DEFAULT_SCALE if self.scale is None else self.scale
            size = (_round_side(width * scale), _round_side(height * scale))
        if max_pixels is not None and size[0] * size[1] > max_pixels:
            raise ImageTooLargeError(
                f"output of {size[0]}x{size[1]} pixels is over the limit of {max_pixels} pixels"
            )
        return size

    def factor(self, width: int, height: int, max_pixels: int | None = None) -> float:
        """How much an input of ``width`` x ``height`` is enlarged: the larger of the two
        sides' factors, less the half pixel that rounding may have added (so a x2 request
        of an odd side counts as x2, not a little more)."""
        out_width, out_height = self.resolve(width, height, max_pixels)
        return max((out_width - 0.5) / width, (out_height - 0.5) / height)


def _round_side(value: float) -> int:
    """Round half up (not to even), so 2.5 px gives 3 px on every platform."""
    return max(1, int(value + 0.5))

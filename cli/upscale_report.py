"""What ``megasr upscale`` shows while it works and says when it is done.

One progress display of the project's own, on a terminal only and not with ``--quiet``: a
single bar at a time (loading the engine, then each image's tiles or denoising steps), so
the output is never a stack of bars; the libraries' own loading bars are switched off
(:func:`megasr.model.loading_bars.hide_loading_bars`). Each file written is one line on
stdout (not with ``--quiet``), a refused input one ``megasr: error:`` line on stderr, and a
run of several inputs ends with a count of what it wrote and what it skipped, and why.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from megasr.errors import MegaSRError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tqdm import tqdm


class UpscaleReport:
    """Counts, prints and draws for one run."""

    def __init__(self, quiet: bool, inputs: int) -> None:
        self.quiet = quiet
        self.inputs = inputs
        self.written = 0
        self.skipped: Counter[str] = Counter()
        self.bar_shown = not quiet and sys.stderr.isatty()
        self._bar: tqdm | None = None

    @property
    def failed(self) -> bool:
        """Whether an input was refused or failed (a folder's non-images do not count)."""
        return any(reason != NOT_AN_IMAGE_NAME for reason in self.skipped)

    def not_images(self, paths: list[Path]) -> None:
        """Folder entries left alone because their names are not images'."""
        self.skipped[NOT_AN_IMAGE_NAME] += len(paths)

    def refused(self, source: Path, error: MegaSRError) -> None:
        self.skipped[error.title.lower()] += 1
        self._write(f"megasr: error: {source}: {error.detail}", sys.stderr)

    def wrote(self, target: Path, size: tuple[int, int], engine: str, seconds: float) -> None:
        self.written += 1
        if not self.quiet:
            width, height = size
            self._write(f"wrote {target} ({width}x{height}, {engine}, {seconds:.1f} s)", sys.stdout)

    def summary(self) -> None:
        """After a run of several inputs (or one that skipped anything): what it did."""
        if self.quiet or (self.inputs == 1 and not self.skipped[NOT_AN_IMAGE_NAME]):
            return
        parts = [f"{count} {reason}" for reason, count in sorted(self.skipped.items())]
        skipped = f", {sum(self.skipped.values())} skipped ({'; '.join(parts)})" if parts else ""
        print(f"megasr: {self.written} written{skipped}", file=sys.stderr, flush=True)

    @contextmanager
    def bar(self, description: str, unit: str) -> Iterator[tqdm | None]:
        """The one progress bar, for a step whose total may be learned on the way."""
        with self._display(desc=description, unit=f" {unit}") as bar:
            yield bar

    @contextmanager
    def status(self, description: str) -> Iterator[None]:
        """The display as a line of text, for a step with no count (loading an engine)."""
        with self._display(desc=description, bar_format="{desc}..."):
            yield

    @contextmanager
    def _display(self, **options: str) -> Iterator[tqdm | None]:
        if not self.bar_shown:
            yield None
            return
        from tqdm import tqdm

        with tqdm(leave=False, file=sys.stderr, **options) as bar:
            self._bar = bar
            try:
                yield bar
            finally:
                self._bar = None

    def _write(self, line: str, stream) -> None:
        if self._bar is not None:
            self._bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)


NOT_AN_IMAGE_NAME = "without an image suffix"


def advance(bar: tqdm | None, done: int, total: int) -> None:
    """Move ``bar`` to ``done`` of ``total`` (an engine's progress callback)."""
    if bar is not None:
        bar.total = total
        bar.update(done - bar.n)

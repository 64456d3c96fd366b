"""Progress bars: `solve(..., progress=True)` or `progress=opf.ProgressBar(...)`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import InvalidProblemError, OptiframeError


@dataclasses.dataclass(frozen=True)
class ProgressBar:
    """A tqdm bar showing the iteration and the loss.

    Args:
        every: refresh every this many iterations (default: about 100 refreshes a run).
        desc: the bar's label.
    """

    every: int | None = None
    desc: str = "optiframe"

    def open(self, total: int | None) -> Any:
        """A new tqdm bar over `total` iterations."""
        try:
            from tqdm.auto import tqdm
        except ImportError as err:
            raise OptiframeError(
                "progress=True needs tqdm: pip install 'optiframe[progress]'."
            ) from err
        return tqdm(total=total, desc=self.desc, unit="it", dynamic_ncols=True)

    def interval(self, total: int | None) -> int:
        """Iterations between refreshes."""
        if self.every is not None:
            return max(1, int(self.every))
        return max(1, (total or 100) // 100)


def as_progress(progress: Any) -> ProgressBar | None:
    """`progress=` as a `ProgressBar`, or None for no bar."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return ProgressBar()
    if isinstance(progress, ProgressBar):
        return progress
    raise InvalidProblemError(
        f"`solve(progress={progress!r})` must be True, False or an opf.ProgressBar."
    )


def advance(bar: Any, iteration: int, loss: float) -> None:
    """Move `bar` to `iteration` and show `loss`."""
    bar.update(int(iteration) - bar.n)
    bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

"""What every run shares, on the device or on the host: the clock of `maxtime`, the
progress bar, the callback's verdict, Ctrl-C, and the cache of compiled programs.

A run raises `Halt` from wherever it notices a stop (the clock, the callback) and catches
it, with `KeyboardInterrupt`, in one place (`stopped`).
"""

from __future__ import annotations

import collections
import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from .._checks import did_you_mean
from ..errors import InvalidProblemError
from ..problem import OptimizationFunction
from ..progress import ProgressBar, advance
from ..solution import OptimizationState, ReturnCode
from .base import SolveOptions

_CACHE_SIZE = 8  # compiled programs kept per function and kind


class Halt(Exception):
    """Ends a run with a return code, from wherever the stop is noticed."""

    def __init__(self, retcode: ReturnCode, message: str) -> None:
        super().__init__(message)
        self.retcode, self.message = retcode, message


class Stop:
    """Why a run stopped, once it has: `retcode` and `message`, or None while running."""

    def __init__(self) -> None:
        self.retcode: ReturnCode | None = None
        self.message = ""
        self.interrupted = False


@contextlib.contextmanager
def stopped(stop: Stop, answer: Callable[[], str]) -> Iterator[None]:
    """Record a `Halt` or a Ctrl-C raised inside the block in `stop`, warning that the run
    returns `answer()` (e.g. "the best iterate so far")."""
    try:
        yield
    except Halt as halt:
        stop.retcode, stop.message = halt.retcode, halt.message
    except KeyboardInterrupt:
        warnings.warn(f"solve() interrupted: returning {answer()} (Terminated).", stacklevel=5)
        stop.retcode, stop.message = ReturnCode.Terminated, "interrupted by KeyboardInterrupt"
        stop.interrupted = True


class Clock:
    """Wall time since the run started, against `maxtime` (seconds, or None)."""

    def __init__(self, maxtime: float | None) -> None:
        self.start, self.maxtime = time.perf_counter(), maxtime

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        """Seconds left (inf without `maxtime`)."""
        return float("inf") if self.maxtime is None else self.maxtime - self.elapsed()

    def check(self) -> None:
        """Raise `Halt(MaxTime)` once `maxtime` is spent."""
        if self.maxtime is not None and self.remaining() <= 0:
            raise Halt(ReturnCode.MaxTime, f"maxtime={self.maxtime} s reached")


class Progress:
    """The tqdm bar of `solve(progress=...)`, refreshed every `interval` iterations; does
    nothing without one.

    Args:
        bar: the `ProgressBar` of the options, or None.
        total: iterations (or evaluations) the bar counts to.
    """

    def __init__(self, bar: ProgressBar | None, total: int | None) -> None:
        self.every = bar.interval(total) if bar is not None else 0
        self.bar = bar.open(total) if bar is not None else None
        self.shown = 0

    def show(self, done: int, loss: float) -> None:
        if self.bar is not None and done - self.shown >= self.every:
            advance(self.bar, done, loss)
            self.shown = done

    def close(self, done: int, loss: float) -> None:
        if self.bar is not None:
            if done > self.shown:
                advance(self.bar, done, loss)
            self.bar.close()


def call_back(callback: Callable[..., Any] | None, state: OptimizationState) -> None:
    """Show `state` to the user's callback; raise `Halt(Terminated)` if it returns True."""
    if callback is not None and callback(state, state.objective):
        raise Halt(ReturnCode.Terminated, f"callback returned True at iteration {state.iter}")


def check_options(given: Any, known: Any, where: str, fix: str = "") -> None:
    """Refuse options that are not in `known`, naming the close matches.

    Raises:
        InvalidProblemError: "`where`: unknown option(s) 'lr'; ..." with `fix` appended.
    """
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    hints = ", ".join(f"{name!r}{did_you_mean(name, known)}" for name in unknown)
    takes = f"it takes {', '.join(known)}" if known else "it takes none"
    raise InvalidProblemError(
        f"`{where}`: unknown option(s) {hints}; {takes}." + (f" {fix}" if fix else "")
    )


def budget_message(options: SolveOptions, unit: str = "iterations") -> tuple[ReturnCode, str]:
    """The verdict of a run that spent its budget: `maxiters`, or the epochs of a data
    iterator."""
    if options.maxiters is None:
        return ReturnCode.MaxIters, f"epochs={options.epochs} done"
    return ReturnCode.MaxIters, f"maxiters={options.maxiters} {unit} done"


def cached(f: OptimizationFunction, kind: str, key: Any, build: Callable[[], Any]) -> Any:
    """The program `build()` makes for `key`, built once per user function: kept in the
    function's cache under `kind`, least recently used dropped past `_CACHE_SIZE`."""
    programs = f._cache.setdefault(kind, collections.OrderedDict())
    if key in programs:
        programs.move_to_end(key)
    else:
        programs[key] = build()
        if len(programs) > _CACHE_SIZE:
            programs.popitem(last=False)
    return programs[key]

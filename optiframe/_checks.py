"""The small validators every constructor and `solve` share: counts, numbers, seeds, and
names looked up with "did you mean". Each raises `InvalidProblemError` naming the call."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import InvalidProblemError

T = TypeVar("T")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def count(call: str, name: str, value: Any, *, optional: bool = False) -> int | None:
    """`value` as a positive integer (an integer-valued float too); None if `optional`."""
    if value is None and optional:
        return None
    if not _is_number(value) or not float(value).is_integer() or value < 1:
        either = "None or " if optional else ""
        raise InvalidProblemError(
            f"`{call}({name}={value!r})` must be {either}a positive integer."
        )
    return int(value)


def number(
    call: str, name: str, value: Any, *, positive: bool = False, optional: bool = False
) -> float | None:
    """`value` as a finite number >= 0 (> 0 if `positive`); None if `optional`."""
    if value is None and optional:
        return None
    if not _is_number(value) or not math.isfinite(value) or not (
        value > 0 if positive else value >= 0
    ):
        either, bound = ("None or " if optional else ""), (">" if positive else ">=")
        raise InvalidProblemError(
            f"`{call}({name}={value!r})` must be {either}a finite number {bound} 0."
        )
    return float(value)


def seed(call: str, value: Any, *, optional: bool = False) -> int | None:
    """`value` as a seed: an integer in [0, 2**32); None if `optional`."""
    if value is None and optional:
        return None
    if not _is_number(value) or not float(value).is_integer() or not 0 <= value < 2**32:
        either = "None or " if optional else ""
        raise InvalidProblemError(
            f"`{call}(seed={value!r})` must be {either}an integer in [0, 2**32)."
        )
    return int(value)


def did_you_mean(name: str, known: Iterable[str], n: int = 1) -> str:
    """' (did you mean 'x'?)' for the close matches of `name` among `known`, or ''."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def lookup(call: str, name: str, registry: Mapping[str, T], listing: str) -> tuple[T, str]:
    """(entry, key) of `name` in `registry`: the exact key, or its unique case-insensitive
    match. Anything else raises, naming the close matches and where the names are
    (`listing`)."""
    if name in registry:
        return registry[name], name
    folded = [key for key in registry if key.lower() == name.lower()]
    if len({id(registry[key]) for key in folded}) == 1:
        return registry[folded[0]], folded[0]
    lower = {key.lower(): key for key in registry}
    close = [lower[k] for k in difflib.get_close_matches(name.lower(), list(lower), 6, 0.6)]
    close += [k for k in registry if k.lower().startswith(name.lower()[:3]) and k not in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close[:8])}?" if close else ""
    raise InvalidProblemError(f"`{call}`: no {name!r} among {listing}.{hint}")

"""The error hierarchy: every error optiframe raises derives from `OptiframeError`."""

from __future__ import annotations


class OptiframeError(Exception):
    """Base class of every error optiframe raises on purpose."""


class InvalidProblemError(OptiframeError, ValueError):
    """A problem, function or solve argument is malformed (shapes, bounds, values)."""


class UnsupportedFeatureError(OptiframeError):
    """The chosen algorithm cannot handle a feature of the problem or a keyword."""


class ObjectiveError(OptiframeError):
    """The objective is not scalar, cannot be traced with the chosen `ad`, or is not
    finite at `u0`."""

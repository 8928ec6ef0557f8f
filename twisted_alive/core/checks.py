"""
The checks of numeric settings, with one wording for every error: "NAME
must be at least LEAST, got VALUE" and "NAME must be positive, got VALUE".
"""

from __future__ import annotations


def atLeast(name: str, value: float, least: float) -> None:
    """
    :raises ValueError: unless ``value >= least`` (NaN is refused too).
    """
    if not value >= least:
        raise ValueError(f"{name} must be at least {least}, got {value!r}")


def positive(name: str, value: float) -> None:
    """
    :raises ValueError: unless ``value > 0`` (NaN is refused too).
    """
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


__all__ = ["atLeast", "positive"]

"""Least-squares polynomial approximations of the sigmoid and their placement on the field."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error

_GRID_POINTS = 4001


def sigmoid(z: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The logistic function 1 / (1 + e^-z), computed without overflow."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@functools.lru_cache(maxsize=64)
def fit_sigmoid(degree: int, interval: float = 8.0) -> tuple[float, ...]:
    """Coefficients c_0..c_r (lowest first) of the least-squares degree-r fit of the sigmoid on [-a, a]."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise argument_error("degree", "be a positive integer", degree)
    if not interval > 0:
        raise argument_error("interval", "be positive", interval)
    grid = np.linspace(-interval, interval, _GRID_POINTS)
    coefficients = np.polynomial.polynomial.polyfit(grid, sigmoid(grid), degree)
    return tuple(float(c) for c in coefficients)


def model_coefficients(model: str, r: int, interval: float) -> tuple[float, ...]:
    """The real polynomial s_hat the workers evaluate: the sigmoid fit, the identity (linear), none for r = 0."""
    if model == "linear":
        return (0.0, 1.0)
    return fit_sigmoid(r, interval) if r else ()


def scaled_coefficients(coefficients: tuple[float, ...], lx: int, lw: int, lc: int) -> npt.NDArray[np.object_]:
    """Round c_i * 2^(lc + (r-i)(lx+lw)) (exact Python ints) so every term of s-bar has scale 2^(lc + r(lx+lw))."""
    r = len(coefficients) - 1
    # Fraction.__round__ would round halves to even; floor(v + 1/2) of the exact binary value rounds them up.
    scaled = [
        math.floor(Fraction(c) * Fraction(2) ** (lc + (r - i) * (lx + lw)) + Fraction(1, 2))
        for i, c in enumerate(coefficients)
    ]
    return np.array(scaled, dtype=object)


def polynomial_slope(coefficients: tuple[float, ...], interval: float) -> float:
    """The largest derivative of s_hat on [-a, a]: the curvature factor of the loss the run minimises."""
    if not coefficients:  # no polynomial: the true sigmoid, whose slope is at most 1/4
        return 0.25
    if len(coefficients) <= 2:
        return abs(coefficients[-1]) if len(coefficients) == 2 else 0.0
    derivative = np.polynomial.polynomial.polyder(np.asarray(coefficients, dtype=np.float64))
    grid = np.linspace(-interval, interval, _GRID_POINTS)
    return float(np.abs(np.polynomial.polynomial.polyval(grid, derivative)).max())

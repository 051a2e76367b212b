"""Least-squares polynomial approximations of the sigmoid and their placement on the field."""

from __future__ import annotations

import functools

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
    """The real polynomial s_hat the workers evaluate: the sigmoid fit, or the identity for linear models."""
    if model == "linear":
        return (0.0, 1.0)
    return fit_sigmoid(r, interval)


def scaled_coefficients(coefficients: tuple[float, ...], lx: int, lw: int, lc: int) -> npt.NDArray[np.int64]:
    """Round c_i * 2^(lc + (r-i)(lx+lw)) so every term of s-bar carries the scale 2^(lc + r(lx+lw))."""
    r = len(coefficients) - 1
    scaled = [int(np.floor(np.ldexp(c, lc + (r - i) * (lx + lw)) + 0.5)) for i, c in enumerate(coefficients)]
    if any(abs(v) >= 2**62 for v in scaled):
        raise OverflowError(
            f"Sigmoid coefficients scaled by 2^{lc + r * (lx + lw)} do not fit 62 bits; lower l_x, l_w or l_c."
        )
    return np.array(scaled, dtype=np.int64)


def polynomial_sigmoid(z: npt.ArrayLike, coefficients: tuple[float, ...]) -> npt.NDArray[np.float64]:
    """Evaluate s_hat(z) = sum c_i z^i."""
    return np.polynomial.polynomial.polyval(np.asarray(z, dtype=np.float64), coefficients)

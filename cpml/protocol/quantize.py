"""Quantization between the reals and F_p (paper eqs. 3-8 and 23)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error

ROWS_AT_ONCE = 1 << 14  # rows quantized at a time: the float temporaries stay small


def round_half_up(x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Round to the nearest integer, halves upward (paper eq. 3)."""
    return np.floor(x + 0.5).astype(np.int64)


def quantize_data(x: npt.ArrayLike, lx: int) -> npt.NDArray[np.int64]:
    """Return Round(2^lx * X) as signed integers (phi is applied when the values enter the field)."""
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise argument_error("x", "hold only finite values", "NaN or infinity")
    out = np.empty(arr.shape, dtype=np.int64)
    for lo in range(0, len(arr), ROWS_AT_ONCE):
        out[lo : lo + ROWS_AT_ONCE] = round_half_up(np.ldexp(arr[lo : lo + ROWS_AT_ONCE], lx))
    return out


def stochastic_round(x: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Round down or up with probabilities that make the result unbiased (E[round(x)] = x)."""
    low = np.floor(x)
    return (low + (rng.random(x.shape) < (x - low))).astype(np.int64)


def quantize_weights(w: npt.ArrayLike, lw: int, r: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Return r independent stochastic quantizations Round_stoc(2^lw * w): d x r, or d x Cr for a d x C matrix."""
    # class c's quantizations land in columns c r to c r + r - 1
    arr = np.asarray(w, dtype=np.float64)
    if arr.ndim not in (1, 2) or not np.all(np.isfinite(arr)):
        raise argument_error("w", "be a finite vector or d x C matrix", arr.shape)
    scaled = np.ldexp(arr, lw)
    stacked = np.stack([stochastic_round(scaled, rng) for _ in range(r)], axis=-1)
    return stacked.reshape(arr.shape[0], -1)

"""Randomness extraction for the BH08 offline phase: a hyper-invertible matrix turns n sharings into n-T."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField, interpolation_matrix, matmul_mod_centred


def hyper_invertible_matrix(field: PrimeField, n: int) -> Elements:
    """The n x n map from values at 1..n to values at n+1..2n; every square submatrix is invertible."""
    if n < 1 or 2 * n >= field.p:
        raise argument_error("n", f"be between 1 and {(field.p - 1) // 2}", n)
    return interpolation_matrix(field, tuple(range(1, n + 1)), tuple(range(n + 1, 2 * n + 1)))


def extract(field: PrimeField, t: int, contributions: npt.NDArray[np.uint32]) -> Elements:
    """Map n parties' contributions (n, ...) to n-T outputs that are uniform to anyone who knows T of them."""
    n = contributions.shape[0]
    if not 0 <= t < n:
        raise argument_error("t", f"be between 0 and {n - 1}", t)
    matrix = field.centred(hyper_invertible_matrix(field, n)[: n - t])
    flat = field.centred(contributions.reshape(n, -1))
    return matmul_mod_centred(field, matrix, flat).reshape((n - t, *contributions.shape[1:]))

"""The worker's computation f(X̃, W̃) = X̃ᵀ s̄(X̃, W̃) over F_p (paper eqs. 15 and 18)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField, matmul_mod_centred


def worker_compute(
    field: PrimeField,
    x_share: npt.NDArray[np.uint32],
    w_share: npt.NDArray[np.uint32],
    coefficients: npt.NDArray[np.uint32],
) -> Elements:
    """Evaluate f on one worker's shares: a degree-(2r+1) polynomial in the encoded data and weights."""
    if x_share.ndim != 2 or w_share.ndim != 2 or x_share.shape[1] != w_share.shape[0]:
        raise argument_error("w_share", f"have shape ({x_share.shape[-1]}, r)", w_share.shape)
    r = w_share.shape[1]
    if len(coefficients) != r + 1:
        raise argument_error("coefficients", f"hold r+1 = {r + 1} values", len(coefficients))
    x = field.centred(x_share)
    z = matmul_mod_centred(field, x, field.centred(w_share))  # rows x r: each x̃ · w̃_j
    p = np.uint64(field.p)
    s = np.full(x_share.shape[0], int(coefficients[0]) % field.p, dtype=np.uint64)
    running = np.ones(x_share.shape[0], dtype=np.uint64)
    for i in range(1, r + 1):
        running = running * z[:, i - 1].astype(np.uint64) % p
        s = (s + running * np.uint64(int(coefficients[i]) % field.p)) % p
    return matmul_mod_centred(field, x.T, field.centred(s.astype(np.uint32)))

"""The worker's computation f(X̃, W̃) = X̃ᵀ s̄(X̃, W̃) over F_p (paper eqs. 15 and 18)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField, matmul_mod_centred


def prepare_share(field: PrimeField, x_share: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
    """Convert a share to centred float64 once, so that rounds skip the conversion (8 bytes per element)."""
    return field.centred(field.check_elements(x_share, "x_share"))


def worker_compute(
    field: PrimeField,
    x_share: npt.NDArray[np.uint32] | npt.NDArray[np.float64],
    w_share: npt.NDArray[np.uint32],
    coefficients: npt.NDArray[np.uint32],
) -> Elements:
    """Evaluate f on one worker's shares (uint32, or float64 from prepare_share): degree 2r+1 in them."""
    if x_share.ndim != 2 or w_share.ndim != 2 or x_share.shape[1] != w_share.shape[0]:
        raise argument_error("w_share", f"have shape ({x_share.shape[-1]}, r)", w_share.shape)
    r = w_share.shape[1]
    if len(coefficients) != r + 1:
        raise argument_error("coefficients", f"hold r+1 = {r + 1} values", len(coefficients))
    x = x_share if x_share.dtype == np.float64 else field.centred(x_share)
    z = matmul_mod_centred(field, x, field.centred(w_share))  # rows x r: each x̃ · w̃_j
    p = np.uint64(field.p)
    s = np.full(x_share.shape[0], int(coefficients[0]) % field.p, dtype=np.uint64)
    running = np.ones(x_share.shape[0], dtype=np.uint64)
    for i in range(1, r + 1):
        running = running * z[:, i - 1].astype(np.uint64) % p
        s = (s + running * np.uint64(int(coefficients[i]) % field.p)) % p
    return matmul_mod_centred(field, x.T, field.centred(s.astype(np.uint32)))

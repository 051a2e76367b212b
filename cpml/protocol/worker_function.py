"""The worker's computation f(X̃, W̃) = X̃ᵀ s̄(X̃, W̃) over F_p (paper eqs. 15 and 18), in every residue field."""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField, ResidueBasis, matmul_mod_centred
from cpml.protocol.fused_step import fused_available, fused_compute, fused_products, fused_transposed

Share = npt.NDArray[np.uint32] | npt.NDArray[np.int32] | npt.NDArray[np.float64]


def prepare_share(
    basis: ResidueBasis, x_share: npt.NDArray[np.uint32] | npt.NDArray[np.int32]
) -> npt.NDArray[np.int32 | np.float64]:
    """A share (residues x rows x d: elements, or centred int32 as a worker stores it) as the rounds compute on it."""
    # the fused step computes on centred int32, the float64 kernels on centred float64
    if x_share.ndim != 3 or x_share.shape[0] != len(basis.moduli):
        raise argument_error("x_share", f"have shape ({len(basis.moduli)}, rows, d)", x_share.shape)
    if x_share.dtype == np.int32:  # centred already: the fused form as it is
        centred = cast(npt.NDArray[np.int32], x_share)
        for f, x in zip(basis.fields, centred):
            if x.size and max(-int(x.min()), int(x.max())) > (f.p - 1) // 2:
                raise argument_error("x_share", f"be centred in [-(p-1)/2, (p-1)/2] for p = {f.p} as int32", x.max())
    else:
        centred = np.empty(x_share.shape, dtype=np.int32)
        for f, x, out in zip(basis.fields, x_share, centred):
            f.centred(f.check_elements(x, "x_share"), np.int32, out=out)
    return centred if all(fused_available(p) for p in basis.moduli) else centred.astype(np.float64)


def worker_step(
    basis: ResidueBasis,
    x_share: Share,
    values: npt.NDArray[np.uint32],
    coefficients: npt.NDArray[np.uint32],
    stage: int,
) -> Elements:
    """One exchange's result in every residue field: f (a polynomial), else X̃W̃ (stage 0) or X̃ᵀẼ (stage 1)."""
    # The exact sigmoid (r = 0) declares no coefficients: the master applies the sigmoid between the two stages.
    if coefficients.ndim == 2 and coefficients.shape[1]:
        if stage != 0:
            raise argument_error("stage", "be 0 for a job whose workers evaluate the sigmoid polynomial", stage)
        return worker_compute(basis, x_share, values, coefficients)
    residues = len(basis.moduli)
    if x_share.ndim != 3 or x_share.shape[0] != residues:
        raise argument_error("x_share", f"have shape ({residues}, rows, d)", x_share.shape)
    if stage not in (0, 1):
        raise argument_error("stage", "be 0 (the products X̃W̃) or 1 (X̃ᵀẼ)", stage)
    expected = x_share.shape[2] if stage == 0 else x_share.shape[1]
    if values.ndim != 3 or values.shape[:2] != (residues, expected):
        raise argument_error("values", f"have shape ({residues}, {expected}, C)", values.shape)
    step = field_products if stage == 0 else field_transposed
    return np.stack([step(f, x, v) for f, x, v in zip(basis.fields, x_share, values)])


def field_products(field: PrimeField, x_share: Share, w_share: npt.NDArray[np.uint32]) -> Elements:
    """X̃W̃ in one field (rows x C, flattened row-major): the products the master lifts to apply the sigmoid."""
    if x_share.dtype == np.int32 and fused_available(field.p):
        return fused_products(field, cast("npt.NDArray[np.int32]", x_share), w_share)
    return matmul_mod_centred(field, _centred(field, x_share), field.centred(w_share)).reshape(-1)


def field_transposed(field: PrimeField, x_share: Share, e_share: npt.NDArray[np.uint32]) -> Elements:
    """X̃ᵀẼ in one field (d x C, flattened row-major): the gradient's share from the encoded sigmoid values."""
    if x_share.dtype == np.int32 and fused_available(field.p):
        return fused_transposed(field, cast("npt.NDArray[np.int32]", x_share), e_share)
    return matmul_mod_centred(field, _centred(field, x_share).T, field.centred(e_share)).reshape(-1)


def _centred(field: PrimeField, x_share: Share) -> npt.NDArray[np.float64] | npt.NDArray[np.int32]:
    return cast(
        "npt.NDArray[np.float64] | npt.NDArray[np.int32]",
        x_share if x_share.dtype == np.float64 else field.centred(x_share),
    )


def worker_compute(
    basis: ResidueBasis,
    x_share: npt.NDArray[np.uint32] | npt.NDArray[np.int32] | npt.NDArray[np.float64],
    w_share: npt.NDArray[np.uint32],
    coefficients: npt.NDArray[np.uint32],
) -> Elements:
    """f in every residue field: shares (residues x rows x d), weights (residues x d x Cr) -> residues x dC."""
    residues = len(basis.moduli)
    if x_share.ndim != 3 or x_share.shape[0] != residues:
        raise argument_error("x_share", f"have shape ({residues}, rows, d)", x_share.shape)
    if w_share.ndim != 3 or w_share.shape[0] != residues:
        raise argument_error("w_share", f"have shape ({residues}, d, C r)", w_share.shape)
    if coefficients.ndim != 2 or coefficients.shape[0] != residues:
        raise argument_error("coefficients", f"have shape ({residues}, r+1)", coefficients.shape)
    return np.stack([field_compute(f, x, w, c) for f, x, w, c in zip(basis.fields, x_share, w_share, coefficients)])


def field_compute(
    field: PrimeField,
    x_share: npt.NDArray[np.uint32] | npt.NDArray[np.int32] | npt.NDArray[np.float64],
    w_share: npt.NDArray[np.uint32],
    coefficients: npt.NDArray[np.uint32],
) -> Elements:
    """Evaluate f on one worker's shares (uint32, or centred int32/float64 from prepare_share): degree 2r+1."""
    # The weights hold r quantizations of each of C models (d x Cr, class-major); the result is the d x C matrix
    # X̃ᵀ s̄ of all C gradients, flattened row-major (d values for C = 1), from one pass over the share.
    r = len(coefficients) - 1
    if x_share.ndim != 2 or w_share.ndim != 2 or x_share.shape[1] != w_share.shape[0] or r < 1 or w_share.shape[1] % r:
        raise argument_error("w_share", f"have shape ({x_share.shape[-1]}, C x r) with r = {r}", w_share.shape)
    classes = w_share.shape[1] // r
    if x_share.dtype == np.int32 and fused_available(field.p):  # centred: one pass over the share
        return fused_compute(field, cast("npt.NDArray[np.int32]", x_share), w_share, coefficients)
    x = _centred(field, x_share)
    z = matmul_mod_centred(field, x, field.centred(w_share)).reshape(-1, classes, r)  # each x̃ · w̃_cj
    p = np.uint64(field.p)
    s = np.full((x_share.shape[0], classes), int(coefficients[0]) % field.p, dtype=np.uint64)
    running = np.ones((x_share.shape[0], classes), dtype=np.uint64)
    for i in range(1, r + 1):
        running = running * z[:, :, i - 1].astype(np.uint64) % p
        s = (s + running * np.uint64(int(coefficients[i]) % field.p)) % p
    return matmul_mod_centred(field, x.T, field.centred(s.astype(np.uint32))).reshape(-1)

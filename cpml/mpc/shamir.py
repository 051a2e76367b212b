"""Shamir secret sharing over F_p: share with a degree-T polynomial, reconstruct from any degree+1 shares.

The baselines carry every value in several residue fields at once (cpml.field.rns), as CodedPrivateML
does: an array of residues has a leading axis, one slice per modulus, and the `*_residues` helpers run
the single-field operation in each field (with independent CSPRNG coefficients per field).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField, ResidueBasis, interpolation_matrix, matmul_mod_centred
from cpml.field.sampling import uniform
from cpml.protocol.coding import MaskSource


def party_points(n: int) -> tuple[int, ...]:
    """The public evaluation points of a group of n parties: 1..n (0 is where the secret lives)."""
    if n < 1:
        raise argument_error("n", "be positive", n)
    return tuple(range(1, n + 1))


def share(
    field: PrimeField,
    secret: npt.NDArray[np.uint32],
    degree: int,
    points: tuple[int, ...],
    coefficient_source: MaskSource = uniform,
) -> Elements:
    """Evaluate P(z) = secret + z Z_1 + ... + z^degree Z_degree (Z_j uniform) at every point: (n, *shape)."""
    if degree < 0 or degree >= len(points):
        raise argument_error("degree", f"be between 0 and {len(points) - 1} for {len(points)} points", degree)
    flat = field.centred(field.check_elements(secret, "secret")).reshape(1, -1)
    masks = field.centred(coefficient_source(field, (degree, flat.shape[1])))
    values = matmul_mod_centred(field, _vandermonde(field, points, degree), np.concatenate([flat, masks]))
    return values.reshape((len(points), *np.shape(secret)))


def reconstruct(field: PrimeField, shares: Mapping[int, npt.NDArray[np.uint32]], degree: int) -> Elements:
    """Interpolate P(0) from the first degree+1 shares (evaluation point -> share)."""
    if len(shares) < degree + 1:
        raise argument_error("shares", f"hold at least degree+1 = {degree + 1} shares", len(shares))
    points = tuple(list(shares)[: degree + 1])
    stacked = np.stack([field.check_elements(shares[x], "share") for x in points])
    return combine(field, recombination_vector(field, points), stacked)


def recombination_vector(field: PrimeField, points: tuple[int, ...]) -> Elements:
    """Lagrange coefficients lambda_i with P(0) = sum_i lambda_i P(points_i) for deg P < len(points)."""
    return interpolation_matrix(field, points, (0,))[0]


def combine(field: PrimeField, weights: npt.NDArray[np.uint32], stacked: npt.NDArray[np.uint32]) -> Elements:
    """Return sum_i weights_i * stacked_i mod p for stacked arrays of any shape."""
    if stacked.shape[0] != weights.shape[0]:
        raise argument_error("stacked", f"hold {weights.shape[0]} arrays", stacked.shape[0])
    flat = field.centred(stacked.reshape(stacked.shape[0], -1))
    return matmul_mod_centred(field, field.centred(weights)[None, :], flat)[0].reshape(stacked.shape[1:])


def check_residues(basis: ResidueBasis, values: npt.NDArray[np.uint32], name: str) -> Elements:
    """Refuse an array (residues, ...) whose slice j is not made of elements of F_(p_j)."""
    if values.ndim < 1 or values.shape[0] != len(basis.moduli):
        raise argument_error(name, f"have a leading axis of {len(basis.moduli)} residues", values.shape)
    for field, part in zip(basis.fields, values):
        field.check_elements(part, name)
    return values


def share_residues(
    basis: ResidueBasis,
    secret: npt.NDArray[np.uint32],
    degree: int,
    points: tuple[int, ...],
    coefficient_source: MaskSource = uniform,
) -> Elements:
    """Shamir-share residues (residues, *shape) in every field, fresh coefficients per field: (n, residues, *shape)."""
    check_residues(basis, secret, "secret")
    per_field = [share(field, part, degree, points, coefficient_source) for field, part in zip(basis.fields, secret)]
    return np.stack(per_field, axis=1)


def reconstruct_residues(basis: ResidueBasis, shares: Mapping[int, npt.NDArray[np.uint32]], degree: int) -> Elements:
    """Interpolate P(0) in every field from the first degree+1 shares (point -> (residues, ...)): (residues, ...)."""
    return np.stack(
        [
            reconstruct(field, {x: check_residues(basis, s, "share")[j] for x, s in shares.items()}, degree)
            for j, field in enumerate(basis.fields)
        ]
    )


def _vandermonde(field: PrimeField, points: tuple[int, ...], degree: int) -> npt.NDArray[np.float64]:
    return _vandermonde_cached(field.p, tuple(map(int, points)), degree)


@functools.lru_cache(maxsize=128)
def _vandermonde_cached(p: int, points: tuple[int, ...], degree: int) -> npt.NDArray[np.float64]:
    if len(set(points)) != len(points) or any(not 0 < x < p for x in points):
        raise argument_error("points", f"be distinct non-zero elements of F_{p}", points)
    half = (p - 1) // 2
    rows = [[pow(x, j, p) for j in range(degree + 1)] for x in points]
    matrix = np.array([[v - p if v > half else v for v in row] for row in rows], dtype=np.float64)
    matrix.setflags(write=False)
    return matrix

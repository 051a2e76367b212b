"""Lagrange coding over F_p: evaluation points and interpolation matrices, cached on the point tuples."""

from __future__ import annotations

import functools

import numpy as np

from cpml.errors import argument_error
from cpml.field.prime_field import Elements, PrimeField


def evaluation_points(field: PrimeField, n_alpha: int, n_beta: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return distinct public points: betas 1..n_beta (data and masks) and alphas after them (workers)."""
    if n_alpha < 1 or n_beta < 1:
        raise argument_error("n_alpha, n_beta", "be positive", (n_alpha, n_beta))
    if n_alpha + n_beta >= field.p:
        raise argument_error("n_alpha + n_beta", f"be below p = {field.p}", n_alpha + n_beta)
    betas = tuple(range(1, n_beta + 1))
    alphas = tuple(range(n_beta + 1, n_beta + n_alpha + 1))
    return alphas, betas


def interpolation_matrix(field: PrimeField, from_points: tuple[int, ...], to_points: tuple[int, ...]) -> Elements:
    """Return M with M[j, i] = L_i(to_j): the values at to_points of the polynomial through from_points."""
    return _interpolation_matrix(field.p, tuple(map(int, from_points)), tuple(map(int, to_points))).copy()


def encoding_matrix(field: PrimeField, betas: tuple[int, ...], alphas: tuple[int, ...]) -> Elements:
    """Return U of shape (len(betas), len(alphas)), u_ij = prod_{l != i} (alpha_j - beta_l) / (beta_i - beta_l)."""
    return interpolation_matrix(field, betas, alphas).T.copy()


@functools.lru_cache(maxsize=256)
def _interpolation_matrix(p: int, xs: tuple[int, ...], targets: tuple[int, ...]) -> Elements:
    if len(set(xs)) != len(xs):
        raise argument_error("from_points", "be distinct", xs)
    if any(not 0 <= x < p for x in xs + targets):
        raise argument_error("points", f"be elements of F_{p}", xs + targets)
    n = len(xs)
    # Barycentric weights w_i = 1 / prod_{j != i} (x_i - x_j), computed with Python ints (n <= a few hundred).
    denominators = []
    for i, xi in enumerate(xs):
        d = 1
        for j, xj in enumerate(xs):
            if j != i:
                d = d * (xi - xj) % p
        denominators.append(d)
    weights = _invert_all(denominators, p)
    rows = []
    for t in targets:
        if t in xs:
            row = [0] * n
            row[xs.index(t)] = 1
        else:
            ell = 1
            for x in xs:
                ell = ell * (t - x) % p
            inverse_gaps = _invert_all([(t - x) % p for x in xs], p)
            row = [ell * w % p * g % p for w, g in zip(weights, inverse_gaps)]
        rows.append(row)
    matrix = np.array(rows, dtype=np.uint32).reshape(len(targets), n)
    matrix.setflags(write=False)
    return matrix


def _invert_all(values: list[int], p: int) -> list[int]:
    """Invert non-zero residues with one modular exponentiation (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % p)
    acc = pow(prefix[-1], p - 2, p)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = acc * prefix[i] % p
        acc = acc * values[i] % p
    return out

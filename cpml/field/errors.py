"""Finding wrong evaluations of a low-degree polynomial: Reed–Solomon error location by Berlekamp–Welch.

The workers' replies of one round are evaluations y_i = h(alpha_i) of one polynomial h of known degree D (a
vector of them, one per coordinate). With n = D + 1 + 2A replies, up to A wrong ones can be located: every
wrong worker is wrong in some coordinate, so the locator is found once on a random linear combination of the
coordinates (a wrong worker's error survives it unless it is orthogonal to the random weights, probability
1/p). The caller checks consistency cheaply first and runs this only when some reply disagrees.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from cpml.errors import CpmlError
from cpml.field.lagrange import interpolation_matrix
from cpml.field.matmul import matmul_mod
from cpml.field.prime_field import PrimeField, field_for


class TooManyErrors(CpmlError):
    """More replies are wrong than the redundancy can correct (or even locate)."""


def locate_errors(
    field: PrimeField, points: Sequence[int], values: npt.NDArray[np.uint32], degree: int, max_errors: int
) -> list[int]:
    """Indices (into `points`) of the rows of `values` (n x d) that are not evaluations of one degree-D polynomial."""
    n = len(points)
    if n < degree + 1 + 2 * max_errors:
        raise ValueError(
            f"Argument 'points' must hold at least D + 1 + 2A = {degree + 1 + 2 * max_errors} replies, not {n}."
        )
    p = field.p
    elements = field.check_elements(np.asarray(values).reshape(n, -1), "values")
    suspects: set[int] = set()
    # A wrong worker hides in the combination only if its error is orthogonal to the random weights: 1/p.
    weights = np.array([secrets.randbelow(p - 1) + 1 for _ in range(elements.shape[1])], dtype=np.uint32)
    combined = [int(v) for v in matmul_mod(field, elements, weights)]
    suspects |= set(_berlekamp_welch(points, combined, degree, max_errors, p))
    if max_errors == 0 and suspects:
        raise TooManyErrors(
            "the replies are not evaluations of one polynomial of the expected degree: some worker "
            "returned a wrong result"
        )
    if len(suspects) > max_errors:
        raise TooManyErrors(f"{len(suspects)} replies disagree, more than the {max_errors} the redundancy corrects")
    return sorted(suspects)


def _berlekamp_welch(points: Sequence[int], ys: list[int], degree: int, errors: int, p: int) -> list[int]:
    """The positions where ys differs from the unique degree-D polynomial within `errors` of it."""
    n = len(points)
    if errors == 0:
        return [] if _fits(points, ys, degree, p) else list(range(n))  # detection only: all suspect
    # Q(x) = h(x) E(x), deg Q <= D + A, E monic of degree A: Q(a_i) - y_i E'(a_i) = y_i a_i^A for each i.
    q_terms, e_terms = degree + errors + 1, errors
    matrix, rhs = [], []
    for a, y in zip(points, ys):
        powers = [pow(a, j, p) for j in range(q_terms)]
        matrix.append(powers + [(-y * powers[j]) % p for j in range(e_terms)])
        rhs.append(y * pow(a, errors, p) % p)
    solution = _solve(matrix, rhs, p)
    if solution is None:
        raise TooManyErrors(f"the replies fit no polynomial of degree {degree} with at most {errors} errors")
    q, e = solution[:q_terms], solution[q_terms:] + [1]
    h, remainder = _divide(q, e, p)
    if any(remainder):
        raise TooManyErrors(f"the replies fit no polynomial of degree {degree} with at most {errors} errors")
    return [i for i, (a, y) in enumerate(zip(points, ys)) if _evaluate(h, a, p) != y]


def _fits(points: Sequence[int], ys: list[int], degree: int, p: int) -> bool:
    """Whether the points beyond the first D+1 agree with the polynomial through those D+1."""
    extend = interpolation_matrix(field_for(p), tuple(points[: degree + 1]), tuple(points[degree + 1 :]))
    predicted = [sum(int(c) * y for c, y in zip(row, ys[: degree + 1])) % p for row in extend]
    return predicted == list(ys[degree + 1 :])


def _solve(matrix: list[list[int]], rhs: list[int], p: int) -> list[int] | None:
    """One solution of matrix @ x = rhs mod p (free variables 0), or None if there is none (p < 2^31: int64 rows)."""
    a = np.array([row + [b] for row, b in zip(matrix, rhs)], dtype=np.int64) % p
    rows, cols = a.shape[0], a.shape[1] - 1
    pivots, r = [], 0
    for c in range(cols):
        nonzero = np.flatnonzero(a[r:, c])
        if nonzero.size == 0:
            continue
        pivot = r + int(nonzero[0])
        a[[r, pivot]] = a[[pivot, r]]
        a[r] = a[r] * pow(int(a[r, c]), -1, p) % p
        factors = a[:, c].copy()
        factors[r] = 0
        a = (a - np.outer(factors, a[r]) % p) % p  # each product < 2^62: exact in int64
        pivots.append(c)
        r += 1
        if r == rows:
            break
    if a[r:, cols].any():
        return None
    x = [0] * cols
    for i, c in enumerate(pivots):
        x[c] = int(a[i, cols])
    return x


def _divide(numerator: list[int], denominator: list[int], p: int) -> tuple[list[int], list[int]]:
    """Polynomial division mod p (coefficients lowest first; the denominator is monic): quotient, remainder."""
    rest = numerator[:]
    d = len(denominator) - 1
    quotient = [0] * max(len(rest) - d, 1)
    for k in range(len(rest) - 1, d - 1, -1):
        coefficient = rest[k]
        if coefficient:
            quotient[k - d] = coefficient
            for j, v in enumerate(denominator):
                rest[k - d + j] = (rest[k - d + j] - coefficient * v) % p
    return quotient, rest[:d]


def _evaluate(coefficients: list[int], at: int, p: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * at + c) % p
    return value

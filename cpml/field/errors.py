"""Finding wrong evaluations of a low-degree polynomial: Reed–Solomon error location by Berlekamp–Welch.

The workers' replies of one round are evaluations y_i = h(alpha_i) of one polynomial h of known degree D (a
vector of them, one per coordinate). With n = D + 1 + 2A replies, up to A wrong ones can be located: every
wrong worker is wrong in some coordinate, so the locator is found once on a random linear combination of the
coordinates (a wrong coordinate survives it unless the combination's coefficient vanishes, probability 1/p
per trial, so a second trial with fresh coefficients must agree) and then checked against every coordinate.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from cpml.field.prime_field import PrimeField


class TooManyErrors(Exception):
    """More replies are wrong than the redundancy can correct (or even locate)."""


def locate_errors(
    field: PrimeField, points: Sequence[int], values: npt.NDArray[np.uint32], degree: int, max_errors: int
) -> list[int]:
    """Indices (into `points`) of the rows of `values` (n x d) that are not evaluations of one degree-D polynomial."""
    n = len(points)
    if n < degree + 1 + 2 * max_errors:
        raise ValueError(f"Argument 'points' must hold at least D + 1 + 2A = {degree + 1 + 2 * max_errors} "
                         f"replies, not {n}.")
    p = field.p
    rows = [[int(v) for v in row] for row in np.asarray(values, dtype=np.uint64)]
    suspects: set[int] = set()
    for _ in range(2):  # two independent combinations: a wrong worker hides from one with probability 1/p
        weights = [secrets.randbelow(p - 1) + 1 for _ in range(len(rows[0]) if rows else 0)]
        combined = [sum(w * v for w, v in zip(weights, row)) % p for row in rows]
        suspects |= set(_berlekamp_welch(points, combined, degree, max_errors, p))
    if max_errors == 0 and suspects:
        raise TooManyErrors("the replies are not evaluations of one polynomial of the expected degree: some worker "
                            "returned a wrong result")
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
    base = list(points[: degree + 1])
    for a, y in zip(points[degree + 1:], ys[degree + 1:]):
        if _lagrange_at(base, ys[: degree + 1], a, p) != y:
            return False
    return True


def _lagrange_at(xs: list[int], ys: list[int], at: int, p: int) -> int:
    total = 0
    for j, (xj, yj) in enumerate(zip(xs, ys)):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (at - xm) % p
                den = den * (xj - xm) % p
        total = (total + yj * num * pow(den, -1, p)) % p
    return total


def _solve(matrix: list[list[int]], rhs: list[int], p: int) -> list[int] | None:
    """One solution of matrix @ x = rhs mod p (free variables 0), or None if there is none."""
    rows, cols = len(matrix), len(matrix[0])
    a = [row[:] + [b] for row, b in zip(matrix, rhs)]
    pivots, r = [], 0
    for c in range(cols):
        pivot = next((i for i in range(r, rows) if a[i][c]), None)
        if pivot is None:
            continue
        a[r], a[pivot] = a[pivot], a[r]
        inverse = pow(a[r][c], -1, p)
        a[r] = [v * inverse % p for v in a[r]]
        for i in range(rows):
            if i != r and a[i][c]:
                factor = a[i][c]
                a[i] = [(v - factor * w) % p for v, w in zip(a[i], a[r])]
        pivots.append(c)
        r += 1
        if r == rows:
            break
    if any(a[i][cols] for i in range(r, rows)):
        return None
    x = [0] * cols
    for i, c in enumerate(pivots):
        x[c] = a[i][cols]
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

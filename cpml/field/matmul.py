"""Exact modular matrix products on float64 BLAS.

Operands are taken as centred representatives (|v| <= (p-1)/2 < 2^30) and the smaller operand is split
into signed limbs of s bits, so that every partial dot product over an inner chunk of length kc obeys
kc * (p-1)/2 * 2^(s-1) <= 2^53 - 2^32 and is therefore exact in float64. Each limb product is reduced mod p
once and the limbs are recombined with integer arithmetic. For p < 2^25 and short inner dimensions
(the Lagrange encoding, K+T <= 31) no split is needed and the product is a single GEMM.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field.prime_field import Elements, PrimeField

_EXACT = 2.0**53 - 2.0**32  # a margin of 2p keeps q*p in the reduction exact as well
_MAX_INNER_CHUNK = 1 << 20
_OUTPUT_CHUNK_BYTES = 8 << 20  # float64 scratch per GEMM call; keeps the reduction in cache


def matmul_mod(field: PrimeField, a: npt.ArrayLike, b: npt.ArrayLike) -> Elements:
    """Return (a @ b) mod p exactly for field-element matrices (or a vector b)."""
    a_el = field.check_elements(a, "a")
    b_el = field.check_elements(b, "b")
    return matmul_mod_centred(field, field.centred(a_el), field.centred(b_el))


def matmul_mod_centred(
    field: PrimeField, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> Elements:
    """Return (a @ b) mod p for float64 operands holding integers with |v| <= (p-1)/2."""
    vector = b.ndim == 1
    b2 = b[:, None] if vector else b
    if a.ndim != 2 or a.shape[1] != b2.shape[0]:
        raise argument_error("b", f"have {a.shape[1] if a.ndim == 2 else '?'} rows to match 'a'", b.shape)
    n, k = a.shape
    m = b2.shape[1]
    out = np.zeros((n, m), dtype=np.uint64)
    if k == 0 or n == 0 or m == 0:
        result = out.astype(np.uint32)
        return result[:, 0] if vector else result
    half = (field.p - 1) // 2
    kc = min(k, _MAX_INNER_CHUNK)
    # Split whichever operand is smaller; the other keeps its full centred magnitude.
    split_b = b2.size <= a.size
    s = _limb_bits(half, kc)
    limbs = _limb_count(half, s)
    inner_chunks = [(i, min(i + kc, k)) for i in range(0, k, kc)]
    if limbs == 1 and len(inner_chunks) == 1:
        result = _single_gemm(field, a, b2)
        return result[:, 0] if vector else result
    for lo, hi in inner_chunks:
        a_part, b_part = a[:, lo:hi], b2[lo:hi]
        parts = _split(b_part if split_b else a_part, s, limbs)
        for index, limb in enumerate(parts):
            product = a_part @ limb if split_b else limb @ b_part
            reduced = _reduce(product, field.p).astype(np.uint64)
            weight = pow(2, s * index, field.p)
            out = (out + reduced * np.uint64(weight)) % np.uint64(field.p)
    result = out.astype(np.uint32)
    return result[:, 0] if vector else result


def _single_gemm(field: PrimeField, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> Elements:
    """One exact GEMM, computed in column blocks so the mod-p reduction runs on cache-resident data."""
    n, m = a.shape[0], b.shape[1]
    out = np.empty((n, m), dtype=np.uint32)
    step = max(1024, _OUTPUT_CHUNK_BYTES // (8 * max(n, 1)))
    for lo in range(0, m, step):
        hi = min(lo + step, m)
        out[:, lo:hi] = _reduce(a @ b[:, lo:hi], field.p)
    return out


def _limb_bits(half: int, inner: int) -> int:
    """The widest signed limb s with inner * half * 2^(s-1) <= 2^53 - 2^32."""
    s = 1
    while inner * half * 2.0 ** s <= _EXACT and s < 31:
        s += 1
    if inner * half * 2.0 ** (s - 1) > _EXACT:
        raise argument_error("inner dimension", "be small enough for exact float64 products", inner)
    return s


def _limb_count(half: int, s: int) -> int:
    """How many signed s-bit limbs _split needs so that its top limb also stays within 2^(s-1)."""
    count, bound = 1, float(half)
    while bound > 2 ** (s - 1):
        bound = (bound + 2 ** (s - 1)) / 2**s
        count += 1
    return count


def _split(x: npt.NDArray[np.float64], s: int, limbs: int) -> list[npt.NDArray[np.float64]]:
    """Split integers into signed base-2^s digits in [-2^(s-1), 2^(s-1)), least significant first."""
    if limbs == 1:
        return [x]
    base, offset = float(2**s), float(2 ** (s - 1))
    rest = x.copy()
    parts = []
    for _ in range(limbs - 1):
        digit = np.mod(rest + offset, base) - offset
        parts.append(digit)
        rest = (rest - digit) / base
    parts.append(rest)
    return parts


def _reduce(x: npt.NDArray[np.float64], p: int) -> Elements:
    """Reduce exact float64 integers (|x| <= 2^53 - 2^32) to [0, p) as uint32."""
    q = np.floor(x * (1.0 / p))
    r = x - q * p  # exact: q is off by at most one, so q*p stays below 2^53
    r[r < 0] += p
    r[r >= p] -= p
    return r.astype(np.uint32)

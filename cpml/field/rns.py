"""A residue number system: one integer carried as its residues modulo several primes, rebuilt by CRT.

CodedPrivateML decodes values that need more bits than one prime below 2^31 holds. Running the same
computation in several fields F_p1 ... F_pk (independent masks in each) and combining the decoded residues
by the Chinese remainder theorem recovers every integer of magnitude at most (P-3)/2, P = p1 ... pk, while
every kernel stays on fast 25-31-bit arithmetic. Shares of T workers stay jointly uniform: the residues of
independent uniforms are independent and uniform, and CRT is a bijection from their product to Z_P.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field.prime_field import PrimeField, field_for
from cpml.field.primes import is_prime

MAX_RESIDUES = 8


@functools.lru_cache(maxsize=64)
def residue_primes(top: int, count: int) -> tuple[int, ...]:
    """The `count` largest primes <= top, largest first."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RESIDUES:
        raise argument_error("residues", f"be an integer from 1 to {MAX_RESIDUES}", count)
    primes: list[int] = []
    candidate = top
    while len(primes) < count and candidate >= 3:
        if is_prime(candidate):
            primes.append(candidate)
        candidate -= 1
    if len(primes) < count:
        raise argument_error("prime", f"leave {count} primes at or below it", top)
    return tuple(primes)


@dataclass(frozen=True)
class ResidueBasis:
    """Distinct primes p_1..p_k below 2^31; an integer v with |v| <= (P-3)/2 travels as (v mod p_j)_j."""

    moduli: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.moduli) <= MAX_RESIDUES:
            raise argument_error("moduli", f"hold 1 to {MAX_RESIDUES} primes", len(self.moduli))
        if len(set(self.moduli)) != len(self.moduli):
            raise argument_error("moduli", "be distinct", self.moduli)
        for p in self.moduli:
            field_for(int(p))  # refuses composites and moduli the kernels cannot take

    @functools.cached_property
    def fields(self) -> tuple[PrimeField, ...]:
        """One field per residue."""
        return tuple(field_for(int(p)) for p in self.moduli)

    @property
    def product(self) -> int:
        """P, the product of the moduli."""
        return math.prod(self.moduli)

    @property
    def max_signed(self) -> int:
        """The largest magnitude CRT lifts back without ambiguity: (P-3)/2."""
        return (self.product - 3) // 2

    @property
    def bits(self) -> float:
        """log2 P: the bits of modulus the basis gives a decoded value."""
        return math.log2(self.product)

    def residues(self, values: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        """The residues of signed int64 integers (or Python ints), shape (k, *values.shape)."""
        a = np.asarray(values)
        if a.dtype == object:
            return np.stack([np.array((a % p).tolist(), dtype=np.uint32) for p in self.moduli])
        if a.dtype.kind not in "iu":
            raise argument_error("values", "be an integer array", a.dtype)
        a = a.astype(np.int64, copy=False)
        return np.stack([np.mod(a, p).astype(np.uint32) for p in self.moduli])

    @functools.cached_property
    def _crt_terms(self) -> tuple[tuple[int, int], ...]:
        """Per modulus: (inverse of P/p_j mod p_j, P/p_j)."""
        product = self.product
        return tuple((pow(product // p, -1, p), product // p) for p in self.moduli)

    def combine(self, residues: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64 | np.object_]:
        """The signed integers (|v| <= (P-1)/2) whose residues these are: CRT and lift; int64 while P < 2^63."""
        if residues.ndim < 1 or residues.shape[0] != len(self.moduli):
            raise argument_error("residues", f"have {len(self.moduli)} rows (one per modulus)", residues.shape)
        product = self.product
        terms = [  # v = sum of digit_j * P/p_j mod P, each term below P
            (field.check_elements(values, "residues").astype(np.uint64) * np.uint64(inverse) % np.uint64(field.p), c)
            for (inverse, c), field, values in zip(self._crt_terms, self.fields, residues)
        ]
        if product < 2**63 and len(terms) * product < 2**64:  # the sum is exact in uint64: no Python ints (1 us each)
            total = sum((digits * np.uint64(c) for digits, c in terms), np.zeros(residues.shape[1:], np.uint64))
            signed = (total % np.uint64(product)).astype(np.int64)
        else:
            signed = sum((digits.astype(object) * c for digits, c in terms), np.zeros(residues.shape[1:], object))
            signed = signed % product
        return np.where(signed > product // 2, signed - product, signed)

    def lift_to_float(self, residues: npt.NDArray[np.uint32], scale_bits: int) -> npt.NDArray[np.float64]:
        """2^-scale_bits * v for the signed v (|v| <= (P-1)/2) with these residues, vectorized for many values."""
        # combine() builds Python ints, about a microsecond a value: too slow for the m products X̄w̄ of a
        # round. Garner's mixed-radix digits stay below 2^31, so they are exact in uint64; comparing the digits
        # of v and of P - v decides the sign exactly, and Horner's rule in float64 errs by a few ulp at most.
        if residues.ndim < 1 or residues.shape[0] != len(self.moduli):
            raise argument_error("residues", f"have {len(self.moduli)} rows (one per modulus)", residues.shape)
        checked = np.stack([f.check_elements(v, "residues") for f, v in zip(self.fields, residues)]).astype(np.uint64)
        moduli = np.array(self.moduli, dtype=np.uint64).reshape((-1,) + (1,) * (residues.ndim - 1))
        negated = (moduli - checked) % moduli
        up, down = self._mixed_radix(checked), self._mixed_radix(negated)
        negative = np.zeros(residues.shape[1:], dtype=bool)
        decided = np.zeros(residues.shape[1:], dtype=bool)
        for high, low in zip(reversed(down), reversed(up)):  # P - v < v, compared from the top digit
            negative |= ~decided & (high < low)
            decided |= high != low
        magnitude = np.where(negative, self._horner(down), self._horner(up))
        return np.ldexp(np.where(negative, -magnitude, magnitude), -scale_bits)

    def _mixed_radix(self, residues: npt.NDArray[np.uint64]) -> list[npt.NDArray[np.uint64]]:
        """Garner's digits t_j < p_j with v = t_1 + p_1 (t_2 + p_2 (t_3 + ...))."""
        digits: list[npt.NDArray[np.uint64]] = []
        for i, p in enumerate(self.moduli):
            modulus = np.uint64(p)
            x = residues[i]
            for j, t in enumerate(digits):
                x = (x + modulus - t % modulus) % modulus * np.uint64(pow(self.moduli[j], -1, p)) % modulus
            digits.append(x)
        return digits

    def _horner(self, digits: list[npt.NDArray[np.uint64]]) -> npt.NDArray[np.float64]:
        value = digits[-1].astype(np.float64)
        for t, p in zip(reversed(digits[:-1]), reversed(self.moduli[:-1])):
            value = value * float(p) + t.astype(np.float64)
        return value


@functools.lru_cache(maxsize=64)
def basis_for(moduli: tuple[int, ...]) -> ResidueBasis:
    """The (cached) basis of these moduli: its fields and CRT terms are computed once, not every round."""
    return ResidueBasis(tuple(int(m) for m in moduli))


def to_float(values: npt.NDArray[np.int64 | np.object_], scale_bits: int) -> npt.NDArray[np.float64]:
    """2^-scale_bits * v for exact integers, each rounded once to the nearest float64."""
    if values.dtype != object:  # int64 to float64 rounds to nearest, as float() of a Python int does
        return np.ldexp(values.astype(np.float64), -scale_bits)
    flat = [math.ldexp(float(v), -scale_bits) for v in values.ravel().tolist()]
    return np.array(flat, dtype=np.float64).reshape(values.shape)

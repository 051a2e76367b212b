"""Uniform field elements from the operating system's CSPRNG: the masks that carry the privacy guarantee."""

from __future__ import annotations

import math
import os

import numpy as np

from cpml.errors import argument_error
from cpml.field.prime_field import Elements, PrimeField


def uniform(field: PrimeField, shape: int | tuple[int, ...]) -> Elements:
    """Draw i.i.d. uniform elements of F_p from os.urandom, rejecting draws >= p (no modulo bias)."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(int(s) < 0 for s in dims):
        raise argument_error("shape", "have non-negative sizes", shape)
    count = math.prod(int(s) for s in dims)
    mask = np.uint32((1 << field.bits) - 1)
    out = np.empty(count, dtype=np.uint32)
    filled = 0
    while filled < count:
        need = count - filled
        # Acceptance is p / 2^bits >= 1/2; draw a little extra to finish in one pass almost always.
        draw = need + need // 16 + 64 if field.p > (3 << (field.bits - 2)) else 2 * need + 64
        words = np.frombuffer(os.urandom(4 * draw), dtype=np.uint32) & mask
        accepted = words[words < field.p][:need]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
    return out.reshape(dims)

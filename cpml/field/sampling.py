"""Uniform field elements from a CSPRNG: the masks that carry the privacy guarantee.

The words are a ChaCha20 keystream (OpenSSL, through the `cryptography` package) under a fresh 256-bit
key from os.urandom for every call and every GiB: the construction the operating system's own generator
uses, about fifteen times faster than reading os.urandom itself. Words are masked to the bit length of p
and draws >= p are rejected, so there is no modulo bias.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cpml.errors import argument_error
from cpml.field.prime_field import Elements, PrimeField

_BLOCK_BYTES = 1 << 20  # keystream per OpenSSL call; the zero plaintext it encrypts stays in cache
_BYTES_PER_KEY = 1 << 30  # far inside ChaCha20's 2^32 blocks (256 GiB) per key and nonce


def uniform(field: PrimeField, shape: int | tuple[int, ...]) -> Elements:
    """Draw i.i.d. uniform elements of F_p from a CSPRNG, rejecting draws >= p (no modulo bias)."""
    return _rejection_sample(field, shape, _fill_random)


def keyed_uniform(field: PrimeField, shape: int | tuple[int, ...], key: bytes, label: bytes) -> Elements:
    """uniform(), but from the ChaCha20 keystream of a secret 256-bit key and a public label."""
    # The same again for the same (key, label), so a share can be rebuilt for a worker that restarts
    # without storing masks.
    if len(key) != 32:
        raise argument_error("key", "be 32 bytes", len(key))
    nonce = hashlib.sha256(label).digest()[:12]
    stream = Cipher(algorithms.ChaCha20(key, bytes(4) + nonce), mode=None).encryptor()

    def fill(out: npt.NDArray[np.uint32]) -> None:
        view = out.view(np.uint8).data  # 1-D bytes: the keystream lands in place
        zeros = memoryview(_zeros())
        for lo in range(0, view.nbytes, _BLOCK_BYTES):
            hi = min(lo + _BLOCK_BYTES, view.nbytes)
            stream.update_into(zeros[: hi - lo], view[lo:hi])

    if math.prod(int(s) for s in ((shape,) if isinstance(shape, (int, np.integer)) else shape)) * 4 > _BYTES_PER_KEY:
        raise argument_error("shape", f"need at most {_BYTES_PER_KEY} bytes of keystream per label", shape)
    return _rejection_sample(field, shape, fill)


def _rejection_sample(
    field: PrimeField, shape: int | tuple[int, ...], fill: Callable[[npt.NDArray[np.uint32]], None]
) -> Elements:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(int(s) < 0 for s in dims):
        raise argument_error("shape", "have non-negative sizes", shape)
    out = np.empty(math.prod(int(s) for s in dims), dtype=np.uint32)
    mask = np.uint32((1 << field.bits) - 1)
    fill(out)
    out &= mask
    # Redraw each rejected position until it is accepted: every position runs its own rejection
    # sampler on fresh independent words, so the elements are i.i.d. uniform on [0, p).
    rejected = np.flatnonzero(out >= field.p)
    while rejected.size:
        fresh = np.empty(rejected.size, dtype=np.uint32)
        fill(fresh)
        fresh &= mask
        out[rejected] = fresh
        rejected = rejected[fresh >= field.p]
    return out.reshape(dims)


def _fill_random(out: npt.NDArray[np.uint32]) -> None:
    """Overwrite a 1-D array with a ChaCha20 keystream under fresh keys from os.urandom."""
    view = out.view(np.uint8).data  # 1-D bytes: the keystream lands in place
    zeros = memoryview(_zeros())
    for start in range(0, view.nbytes, _BYTES_PER_KEY):
        nonce = bytes(4) + os.urandom(12)  # a 32-bit block counter from 0, then a 96-bit nonce
        stream = Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None).encryptor()
        stop = min(start + _BYTES_PER_KEY, view.nbytes)
        for lo in range(start, stop, _BLOCK_BYTES):
            hi = min(lo + _BLOCK_BYTES, stop)
            stream.update_into(zeros[: hi - lo], view[lo:hi])


@functools.cache
def _zeros() -> bytes:
    """The all-zero plaintext whose encryption is the keystream."""
    return bytes(_BLOCK_BYTES)

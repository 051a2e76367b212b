"""Gaussian noise for privacy, drawn from the operating system's CSPRNG.

Privacy noise must be unpredictable to whoever sees the result: numpy's PCG64 is not a
CSPRNG (its state can be recovered from outputs), so `SecureGaussian` turns `os.urandom`
bytes into uniforms with 53 random bits each and applies the Box-Muller transform; the
Poisson sampling of batches uses the same uniforms, since which records were sampled is secret too.
`SeededGaussian` exists only so tests and benchmarks can be reproduced; it protects nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cpml.errors import argument_error

_TWO_POW_MINUS_53 = 2.0**-53


class NoiseSource(Protocol):
    """Where privacy randomness comes from: standard normals and uniforms on [0, 1)."""

    @property
    def secure(self) -> bool:
        """Whether the draws come from a cryptographically secure source."""
        ...

    def standard_normal(self, size: int) -> np.ndarray:
        """Draw `size` independent N(0, 1) values."""
        ...

    def uniform(self, size: int) -> np.ndarray:
        """Draw `size` independent uniforms on [0, 1)."""
        ...


def _secure_uniforms(size: int) -> np.ndarray:
    """Uniforms on [0, 1) with 53 random bits each, from os.urandom."""
    words = np.frombuffer(os.urandom(8 * size), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53


@dataclass(frozen=True)
class SecureGaussian:
    """Standard normals by Box-Muller on os.urandom uniforms (the default for privacy noise)."""

    secure: bool = True

    def standard_normal(self, size: int) -> np.ndarray:
        """Draw `size` i.i.d. N(0, 1) values from the OS CSPRNG."""
        if size < 0:
            raise argument_error("size", "be non-negative", size)
        pairs = (size + 1) // 2
        u = _secure_uniforms(2 * pairs)
        # 1 - u lies in (0, 1], so the logarithm is finite.
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))
        angle = 2.0 * np.pi * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]

    def uniform(self, size: int) -> np.ndarray:
        """Draw `size` i.i.d. uniforms on [0, 1) from the OS CSPRNG."""
        if size < 0:
            raise argument_error("size", "be non-negative", size)
        return _secure_uniforms(size)


@dataclass(frozen=True)
class SeededGaussian:
    """Reproducible standard normals from numpy's PCG64: for tests and benchmarks only."""

    seed: int
    secure: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def standard_normal(self, size: int) -> np.ndarray:
        """Draw `size` i.i.d. N(0, 1) values from the seeded generator."""
        return self._rng.standard_normal(size)  # type: ignore[attr-defined]

    def uniform(self, size: int) -> np.ndarray:
        """Draw `size` i.i.d. uniforms on [0, 1) from the seeded generator."""
        return self._rng.random(size)  # type: ignore[attr-defined]


def gaussian_noise(source: NoiseSource, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Noise of the given shape with i.i.d. N(0, std^2) entries."""
    if not np.isfinite(std) or std < 0:
        raise argument_error("std", "be a finite non-negative number", std)
    size = int(np.prod(shape, dtype=np.int64))
    return (std * source.standard_normal(size)).reshape(shape)

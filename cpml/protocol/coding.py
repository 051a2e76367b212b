"""Lagrange encoding of K partitions plus T masks into N shares, and decoding from any R replies."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import (
    Elements,
    PrimeField,
    evaluation_points,
    interpolation_matrix,
    matmul_mod_centred,
)
from cpml.field.errors import locate_errors
from cpml.field.sampling import uniform

MaskSource = Callable[[PrimeField, tuple[int, ...]], Elements]


@dataclass(frozen=True)
class CodingScheme:
    """The public points of a job: betas for the K partitions and T masks, alphas for the N workers."""

    field: PrimeField
    n: int
    k: int
    t: int

    @functools.cached_property
    def points(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(alphas, betas)."""
        return evaluation_points(self.field, self.n, self.k + self.t)

    @functools.cached_property
    def encoder(self) -> npt.NDArray[np.float64]:
        """U transposed, N x (K+T), as centred float64: share_i = sum_j U[j, i] * block_j."""
        alphas, betas = self.points
        return self.field.centred(interpolation_matrix(self.field, betas, alphas))

    def encode(
        self,
        secrets: npt.NDArray[np.float64] | npt.NDArray[np.int32],
        mask_source: MaskSource = uniform,
        workers: Sequence[int] | None = None,
    ) -> Elements:
        """Encode K secret blocks (rows of `secrets`, signed ints as float64 or int32) with T masks into N shares."""
        # With `workers`, only those workers' shares, in that order.
        if secrets.ndim != 2 or secrets.shape[0] != self.k:
            raise argument_error("secrets", f"have {self.k} rows (one per partition)", secrets.shape)
        # int32 holds every centred value exactly and halves the bytes the encoding GEMM reads.
        stacked = np.empty((self.k + self.t, secrets.shape[1]), dtype=np.int32)
        stacked[: self.k] = secrets
        stacked[self.k :] = self.field.centred(mask_source(self.field, (self.t, secrets.shape[1])), np.int32)
        encoder = self.encoder if workers is None else self.encoder[list(workers)]
        return matmul_mod_centred(self.field, encoder, stacked)

    def wrong_replies(self, replies: Mapping[int, npt.NDArray[np.uint32]], threshold: int, errors: int) -> list[int]:
        """Workers among the first R + 2A replies (R + 1 if A = 0) that are off the round's polynomial."""
        chosen = tuple(list(replies)[: threshold + max(2 * errors, 1)])
        alphas, _ = self.points
        stacked = np.stack([self.field.check_elements(replies[i], "reply") for i in chosen]).reshape(len(chosen), -1)
        wrong = locate_errors(self.field, [alphas[i] for i in chosen], stacked, threshold - 1, errors)
        return [chosen[i] for i in wrong]

    def decode(self, replies: Mapping[int, npt.NDArray[np.uint32]], threshold: int) -> Elements:
        """Interpolate h at the K betas from the first `threshold` replies (worker index -> f value)."""
        return self.decode_checked(replies, threshold, 0)[0]

    def decode_checked(
        self, replies: Mapping[int, npt.NDArray[np.uint32]], threshold: int, extra: int
    ) -> tuple[Elements, bool]:
        """decode(), and whether the next `extra` replies lie on the same polynomial (one product for both)."""
        if len(replies) < threshold + extra:
            needed = f"R = {threshold}" if not extra else f"R + {extra} = {threshold + extra}"
            raise argument_error("replies", f"hold at least {needed} results", len(replies))
        arrived = list(replies)
        # By worker index within the first R and within the extra: the same polynomial whatever the arrival order,
        # and the decoding matrix of a set of workers is computed once (interpolation_matrix caches it)
        chosen = tuple(sorted(arrived[:threshold]) + sorted(arrived[threshold : threshold + extra]))
        if any(not 0 <= i < self.n for i in chosen):
            raise argument_error("replies", f"come from workers 0..{self.n - 1}", chosen)
        alphas, betas = self.points
        first = tuple(alphas[i] for i in chosen[:threshold])
        targets = betas[: self.k] + tuple(alphas[i] for i in chosen[threshold:])
        decoder = interpolation_matrix(self.field, first, targets)
        stacked = np.stack([self.field.check_elements(replies[i], "reply") for i in chosen])
        values = matmul_mod_centred(self.field, self.field.centred(decoder), self.field.centred(stacked[:threshold]))
        return values[: self.k], bool(np.array_equal(values[self.k :], stacked[threshold:]))

"""The master's side of CodedPrivateML as a sans-I/O session: shares out, replies in, weights updated.

The transport (in-process simulator or gRPC master) calls, in order:
    trainer.share_chunks(rows)            once: the encoded dataset, chunk by chunk, for all N workers
    trainer.weight_shares()               each round: the encoded quantized weights, one slice per worker
    trainer.sigmoid_shares(round, replies) each round with the exact sigmoid (r = 0): decode the products X̄w̄
                                          from the first R replies, encode the sigmoid values, one slice per worker
    trainer.finish_round(round, replies)  each round: decode the gradient from the first R replies, update w
Every value lives in several residue fields at once (cpml.field.rns): one CodingScheme, independent masks
and one decoding per residue; the decoded residues are combined by CRT into the exact integer gradient.
Everything random that protects privacy (the masks) comes from the OS CSPRNG; the stochastic rounding
of the weights is seeded by (seed, round), so the weights are the same in every transport.
The state and the update rule shared with the MPC baselines live in `cpml.protocol.run`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, basis_for
from cpml.field.errors import TooManyErrors
from cpml.field.sampling import keyed_uniform, uniform
from cpml.protocol.coding import CodingScheme, MaskSource
from cpml.protocol.quantize import round_half_up
from cpml.protocol.run import (
    Array,
    RoundStats,
    RunInputs,
    TrainingRun,
    gradient_from_sums,
    guard_sigmoid_values,
    prepare_data,
    residue_of,
    sum_blocks,
)
from cpml.protocol.sigmoid import sigmoid


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs and may know about a job: no data, no weights, no masks."""

    moduli: tuple[int, ...]  # the residue primes; every value travels as its residue modulo each
    r: int
    rows: int
    d: int
    coefficients: tuple[int, ...]  # the scaled sigmoid polynomial as signed integers, lowest first; none for r = 0
    classes: int = 1  # weight columns: 1 (two classes, or linear), or C one-vs-rest models

    def coefficient_array(self) -> Elements:
        """The coefficients' residues, shape (residues, r+1) uint32."""
        return basis_for(self.moduli).residues(np.array(self.coefficients, dtype=object))


@dataclass(frozen=True)
class ShareChunk:
    """Rows [row_offset, row_offset + rows) of the workers' shares in one residue field: shares[i] is worker i's
    (an (N, rows, d) array, or a dict for some workers)."""

    residue: int
    row_offset: int
    shares: Elements | dict[int, Elements]


@dataclass(kw_only=True)
class CodedTrainer(TrainingRun):
    """One CodedPrivateML training job on the master (use `create`): Lagrange coding in every residue field."""

    schemes: tuple[CodingScheme, ...]  # one per residue modulus
    caught: set[int] = dataclass_field(default_factory=set)  # workers whose results were wrong (--byzantine)
    _caught_this_round: list[int] = dataclass_field(default_factory=list, repr=False)  # in the products (r = 0)
    # The data masks come from this key (kept in memory only, never checkpointed), so the share of a worker
    # that restarts can be rebuilt exactly: it learns nothing it had not held before.
    share_key: bytes = dataclass_field(default_factory=lambda: os.urandom(32), repr=False)

    @classmethod
    def create(cls, inputs: RunInputs, *, eval_every: int = 1) -> CodedTrainer:
        """Quantize and partition the data, resolve the learning rate, and check the overflow guard."""
        data = prepare_data(inputs, inputs.plan.k)
        schemes = tuple(
            CodingScheme(field, data.plan.n_workers, data.plan.k, data.plan.t) for field in data.plan.basis.fields
        )
        if eval_every < 1:
            raise argument_error("eval_every", "be a positive number of rounds", eval_every)
        return cls(
            seed=int(inputs.seed),
            round=inputs.start_round,
            schemes=schemes,
            mask_source=inputs.mask_source,
            eval_every=eval_every,
            **data.by_name(),
        )

    @property
    def job_spec(self) -> JobSpec:
        """The public parameters every worker receives."""
        return JobSpec(
            moduli=self.plan.moduli,
            r=self.plan.r,
            rows=self.partitions.shape[1],
            d=self.partitions.shape[2],
            coefficients=tuple(int(v) for v in self.coefficients),
            classes=self.classes,
        )

    @property
    def classes(self) -> int:
        """How many weight columns each round carries: 1, or C for C one-vs-rest classes."""
        return 1 if self.weights.ndim == 1 else self.weights.shape[1]

    def share_chunks(self, rows_per_chunk: int, workers: Sequence[int] | None = None) -> Iterator[ShareChunk]:
        """Encode the dataset residue by residue, chunk by chunk; never all N shares at once."""
        # With `workers`, only their shares, keyed by worker index: the same shares as the first time.
        if rows_per_chunk < 1:
            raise argument_error("rows_per_chunk", "be positive", rows_per_chunk)
        k, rows, d = self.partitions.shape
        for residue, scheme in enumerate(self.schemes):
            for lo in range(0, rows, rows_per_chunk):
                hi = min(lo + rows_per_chunk, rows)
                secrets = residue_of(scheme.field, self.partitions[:, lo:hi, :].reshape(k, -1))
                masks = self._data_masks(residue, lo)
                if workers is None:
                    shares = scheme.encode(secrets, masks).reshape(self.plan.n_workers, hi - lo, d)
                    yield ShareChunk(residue, lo, shares)
                else:
                    some = scheme.encode(secrets, masks, workers).reshape(len(workers), hi - lo, d)
                    yield ShareChunk(residue, lo, dict(zip(workers, some)))

    def _data_masks(self, residue: int, row_offset: int) -> MaskSource:
        """The masks of one chunk of the data: keyed by (residue, row offset), unless a test swapped the source."""
        if self.mask_source is not uniform:
            return self.mask_source
        label = f"data/{residue}/{row_offset}".encode()
        return lambda field, shape: keyed_uniform(field, shape, self.share_key, label)

    def encode_dataset(self) -> Elements:
        """All N shares at once, shape (N, residues, rows, d) — for tests and the in-process simulator."""
        k, rows, d = self.partitions.shape
        out = np.empty((self.plan.n_workers, len(self.schemes), rows, d), dtype=np.uint32)
        for chunk in self.share_chunks(rows):
            assert not isinstance(chunk.shares, dict)  # every worker's rows
            out[:, chunk.residue] = chunk.shares
        return out

    def weight_shares(self) -> Elements:
        """Encode this round's quantized weights: shape (N, residues, d, C r); checks the overflow guard first."""
        wbar = self.begin_round()
        d, r = wbar.shape  # r columns per class
        per_residue = []
        for scheme in self.schemes:
            secrets = np.broadcast_to(residue_of(scheme.field, wbar.reshape(1, d * r)), (self.plan.k, d * r))
            per_residue.append(scheme.encode(np.ascontiguousarray(secrets), self.mask_source))
        return np.stack(per_residue, axis=1).reshape(self.plan.n_workers, len(self.schemes), d, r)

    @property
    def errors_left(self) -> int:
        """How many wrong workers may still be among those answering: A less the ones already caught."""
        return max(0, self.plan.byzantine - len(self.caught))

    @property
    def replies_needed(self) -> int:
        """Replies this round waits for: R + 2 x errors_left, or R + 1 to detect (--detect, or all A caught)."""
        return self.plan.replies_for(self.errors_left)

    def wrong_workers(self, replies: Mapping[int, npt.NDArray[np.uint32]]) -> list[int]:
        """Workers whose reply is wrong in any residue field (with --byzantine or --detect; else none checked)."""
        return self.decode_round(replies)[1]

    def sigmoid_shares(
        self, round_index: int, replies: Mapping[int, npt.NDArray[np.uint32]]
    ) -> tuple[Elements, list[int]]:
        """r = 0: decode the products X̄w̄, encode ē = Round(2^lc s(z)): (N, residues, rows, C), and the wrong workers."""
        self.check_round(round_index)
        if not self.plan.exact_sigmoid:
            raise argument_error("plan.r", "be 0 (the exact sigmoid) for a round of two exchanges", self.plan.r)
        blocks, wrong = self.decode_blocks(replies)
        k, rows, _ = self.partitions.shape
        m, classes = self.x.shape[0], self.classes
        z = self.basis.lift_to_float(np.stack(blocks), self.plan.product_scale).reshape(k * rows, classes)
        ebar = np.zeros((k * rows, classes), dtype=np.int64)  # the padding rows of the share are zero rows
        ebar[:m] = round_half_up(np.ldexp(sigmoid(z[:m]), self.plan.lc))
        guard_sigmoid_values(self.plan, self.profile, ebar, self.round)
        per_residue = [
            scheme.encode(residue_of(scheme.field, ebar.reshape(k, rows * classes)), self.mask_source)
            for scheme in self.schemes
        ]
        self._caught_this_round = wrong
        return np.stack(per_residue, axis=1).reshape(self.plan.n_workers, len(self.schemes), rows, classes), wrong

    def decode_round(self, replies: Mapping[int, npt.NDArray[np.uint32]]) -> tuple[Elements, list[int]]:
        """X̄ᵀs̄'s residues from the first R right replies, and the workers whose replies were wrong."""
        blocks, wrong = self.decode_blocks(replies)
        return np.stack([sum_blocks(s.field, b) for s, b in zip(self.schemes, blocks)]), wrong

    def decode_blocks(self, replies: Mapping[int, npt.NDArray[np.uint32]]) -> tuple[list[Elements], list[int]]:
        """Each residue's K decoded blocks from the first R right replies, and the workers whose replies were wrong."""
        # Every reply past the first R is checked against the polynomial they determine (one product with the
        # decode); only when one disagrees are the wrong ones located (Berlekamp-Welch) and decoding redone.
        extra = self.replies_needed - self.plan.threshold
        decoded = [
            scheme.decode_checked({i: reply[j] for i, reply in replies.items()}, self.plan.threshold, extra)
            for j, scheme in enumerate(self.schemes)
        ]
        if all(consistent for _, consistent in decoded):
            return [blocks for blocks, _ in decoded], []
        wrong: set[int] = set()
        for j, scheme in enumerate(self.schemes):
            try:
                wrong |= set(
                    scheme.wrong_replies(
                        {i: reply[j] for i, reply in replies.items()}, self.plan.threshold, self.errors_left
                    )
                )
            except TooManyErrors as exc:
                raise TooManyErrors(f"round {self.round + 1}: {exc}") from None
        if not wrong or len(wrong) > self.errors_left:
            raise TooManyErrors(
                f"round {self.round + 1}: the replies disagree and {len(wrong)} workers sent wrong "
                f"results {sorted(wrong)}, more than the {self.errors_left} the redundancy corrects"
            )
        self.caught |= wrong
        good = {i: reply for i, reply in replies.items() if i not in wrong}
        blocks = [
            scheme.decode({i: reply[j] for i, reply in good.items()}, self.plan.threshold)
            for j, scheme in enumerate(self.schemes)
        ]
        return blocks, sorted(wrong)

    def decode_sums(self, replies: Mapping[int, npt.NDArray[np.uint32]], wrong: Sequence[int] = ()) -> Elements:
        """X̄ᵀs̄ in every residue field (residues x dC) from the first R right replies: decode, add the K partitions."""
        good = {i: reply for i, reply in replies.items() if i not in wrong}
        return np.stack(
            [
                sum_blocks(scheme.field, scheme.decode({i: reply[j] for i, reply in good.items()}, self.plan.threshold))
                for j, scheme in enumerate(self.schemes)
            ]
        )

    def decode_gradient(self, replies: Mapping[int, npt.NDArray[np.uint32]], wrong: Sequence[int] = ()) -> Array:
        """The real gradient (1/m)(X̄ᵀs̄ 2^-l - X̄ᵀy 2^-lx) from the first R right replies (each residues x d)."""
        return gradient_from_sums(self.plan, self.decode_sums(replies, wrong), self.xty, self.x.shape[0])

    def finish_round(
        self, round_index: int, replies: Mapping[int, npt.NDArray[np.uint32]], evaluate: bool = True
    ) -> RoundStats:
        """Decode the round's gradient from the first replies, correcting wrong ones, and step (see `finish`)."""
        self.check_round(round_index)
        sums, wrong = self.decode_round(replies)
        used = tuple([i for i in replies if i not in wrong][: self.plan.threshold])
        gradient = gradient_from_sums(self.plan, sums, self.xty, self.x.shape[0])
        wrong = sorted(set(wrong) | set(self._caught_this_round))
        self._caught_this_round = []
        return self.finish(gradient, used, tuple(wrong), evaluate)

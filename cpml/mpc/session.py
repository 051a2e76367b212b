"""The master's side of a Shamir-sharing baseline as a sans-I/O session: shares out, gradient shares in.

It quantizes, rounds the weights, guards against wrap-around and turns decoded blocks into a real
gradient with the very helpers CodedTrainer uses, so a baseline trains exactly like CodedPrivateML
does on the same data, seed and quantization; only the sharing differs (G groups of 2T+1 workers,
each group holding degree-T Shamir shares of one block of rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field as dataclass_field

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField
from cpml.field.sampling import uniform
from cpml.mpc.messages import MASTER, Kind, Message
from cpml.mpc.plan import MpcPlan, PartySpec
from cpml.mpc.shamir import party_points, reconstruct, share
from cpml.protocol import models
from cpml.protocol.coding import MaskSource
from cpml.protocol.overflow import DataProfile
from cpml.protocol.plan import Plan
from cpml.protocol.trainer import (
    RoundStats,
    gradient_from_blocks,
    guard_round,
    prepare_data,
    round_stats,
    round_weights,
)

Array = npt.NDArray[np.float64]


@dataclass
class MpcSession:
    """One baseline training job on the master (use `create`); `plan` fixes quantization and training."""

    mpc: MpcPlan
    plan: Plan
    seed: int
    x: Array
    y: Array
    x_test: Array | None
    y_test: Array | None
    weights: Array
    round: int
    profile: DataProfile
    partitions: npt.NDArray[np.int32]  # (G, rows, d) quantized, zero-padded
    xty: Array
    coefficients: npt.NDArray[np.int64]
    mask_source: MaskSource = uniform
    _gradients: dict[int, Elements] = dataclass_field(default_factory=dict, repr=False)
    _issued: int | None = dataclass_field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        mpc: MpcPlan,
        plan: Plan,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        seed: int,
        x_test: npt.ArrayLike | None = None,
        y_test: npt.ArrayLike | None = None,
        *,
        weights: npt.ArrayLike | None = None,
        start_round: int = 0,
        mask_source: MaskSource = uniform,
    ) -> MpcSession:
        """Quantize the data into G row blocks with CPML's quantization and check the overflow guard."""
        if mpc.n_workers + 1 >= plan.p:
            raise argument_error("p", f"exceed N + 1 = {mpc.n_workers + 1}", plan.p)
        data = prepare_data(plan, x, y, seed, x_test, y_test, mpc.groups, weights, start_round)
        return cls(mpc=mpc, seed=int(seed), round=start_round, mask_source=mask_source, **data.by_name())

    @property
    def field(self) -> PrimeField:
        """The job's field."""
        return self.plan.field

    @property
    def done(self) -> bool:
        """Whether all planned iterations have run."""
        return self.round >= self.plan.iterations

    def party_spec(self, worker: int) -> PartySpec:
        """The public parameters one active worker receives."""
        group, position = self.mpc.locate(worker)
        return PartySpec(
            protocol=self.mpc.protocol,
            p=self.plan.p,
            t=self.mpc.t,
            group_size=self.mpc.group_size,
            first=self.mpc.members(group).start,
            position=position,
            rows=self.profile.rows,
            d=self.profile.d,
            r=self.plan.r,
            coefficients=tuple(int(v) for v in self.field.phi(self.coefficients, name="coefficients")),
            start_round=self.round,
            rounds=self.plan.iterations - self.round,
        )

    def data_messages(self, rows_per_chunk: int) -> Iterator[Message]:
        """Shamir-share each group's rows with fresh CSPRNG coefficients, chunk by chunk (step = row offset)."""
        if rows_per_chunk < 1:
            raise argument_error("rows_per_chunk", "be positive", rows_per_chunk)
        points = party_points(self.mpc.group_size)
        for group in range(self.mpc.groups):
            members = self.mpc.members(group)
            for lo in range(0, self.profile.rows, rows_per_chunk):
                block = self.field.phi(self.partitions[group, lo : lo + rows_per_chunk], name="x")
                shares = share(self.field, block, self.mpc.t, points, self.mask_source)
                for position, worker in enumerate(members):
                    yield Message(MASTER, worker, Kind.DATA, self.round, lo, shares[position])

    def quantized_weights(self) -> npt.NDArray[np.int64]:
        """The r stochastic quantizations of the current weights, seeded by (seed, round) as in CPML."""
        return round_weights(self.plan, self.weights, self.seed, self.round)

    def weight_messages(self) -> list[Message]:
        """Share this round's quantized weights to every group, with fresh coefficients per group."""
        if self.done:
            raise RuntimeError(f"training already finished {self.plan.iterations} iterations")
        wbar = self.quantized_weights()
        guard_round(self.plan, self.profile, self.coefficients, wbar, self.round)
        secret = self.field.phi(wbar, name="weights")
        points = party_points(self.mpc.group_size)
        messages = []
        for group in range(self.mpc.groups):
            shares = share(self.field, secret, self.mpc.t, points, self.mask_source)
            for position, worker in enumerate(self.mpc.members(group)):
                messages.append(Message(MASTER, worker, Kind.WEIGHTS, self.round, 0, shares[position]))
        self._issued, self._gradients = self.round, {}
        return messages

    def receive(self, message: Message) -> RoundStats | None:
        """Take one gradient share; once every active worker has sent its share, finish the round."""
        if message.kind is not Kind.GRADIENT or message.receiver != MASTER:
            raise argument_error("message", "be a gradient share sent to the master", message.kind.value)
        if message.round != self.round or self._issued != self.round:
            return None  # late reply for an old round: dropped
        self.mpc.locate(message.sender)
        if message.sender in self._gradients:
            raise argument_error("message", "be the first gradient share of its sender", message.sender)
        if message.payload.shape != (self.profile.d,):
            raise argument_error("message", f"carry {self.profile.d} gradient values", message.payload.shape)
        self._gradients[message.sender] = self.field.check_elements(message.payload, "gradient")
        if len(self._gradients) < self.mpc.active_workers:
            return None
        return self.finish_round(self.decode_gradient(self._gradients))

    def decode_blocks(self, shares: dict[int, Elements]) -> Elements:
        """Reconstruct X̄_gᵀs̄ of every group from all 2T+1 of its degree-2T shares: (G, d)."""
        blocks = []
        for group in range(self.mpc.groups):
            members = self.mpc.members(group)
            by_point = {position + 1: shares[worker] for position, worker in enumerate(members)}
            blocks.append(reconstruct(self.field, by_point, 2 * self.mpc.t))
        return np.stack(blocks)

    def decode_gradient(self, shares: dict[int, Elements]) -> Array:
        """The real gradient, converted from the decoded blocks exactly as CodedTrainer does."""
        return gradient_from_blocks(self.plan, self.decode_blocks(shares), self.xty, self.x.shape[0])

    def finish_round(self, gradient: Array) -> RoundStats:
        """Take the gradient step, project onto the weight ball, and report the round."""
        assert self.plan.learning_rate is not None
        step = self.weights - self.plan.learning_rate * gradient
        self.weights = models.project_to_ball(step, self.plan.weight_bound)
        self.round += 1
        self._issued, self._gradients = None, {}
        return self.stats(tuple(range(self.mpc.active_workers)))

    def checkpoint(self) -> dict[str, object]:
        """The state a resumed run needs besides the data: protocol, T, round, weights, seed and plan."""
        return {
            "protocol": self.mpc.protocol,
            "t": self.mpc.t,
            "round": self.round,
            "weights": self.weights.tolist(),
            "seed": self.seed,
            "plan": {k: getattr(self.plan, k) for k in self.plan.__dataclass_fields__},
        }

    def stats(self, used: tuple[int, ...] = ()) -> RoundStats:
        """Loss and accuracy of the current weights on the real data."""
        test = (self.x_test, self.y_test)
        return round_stats(self.plan.model, self.round, self.weights, (self.x, self.y), test, used)

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
from cpml.protocol.coding import MaskSource
from cpml.protocol.plan import Plan
from cpml.protocol.run import RoundStats, TrainingRun, gradient_from_sums, prepare_data, sum_blocks

Array = npt.NDArray[np.float64]


@dataclass(kw_only=True)
class MpcSession(TrainingRun):
    """One baseline training job on the master (use `create`); `plan` fixes quantization and training."""

    mpc: MpcPlan
    _gradients: dict[int, Elements] = dataclass_field(default_factory=dict, repr=False)

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
        previous: npt.ArrayLike | None = None,
        start_round: int = 0,
        mask_source: MaskSource = uniform,
    ) -> MpcSession:
        """Quantize the data into G row blocks with CPML's quantization and check the overflow guard."""
        if mpc.n_workers + 1 >= plan.p:
            raise argument_error("p", f"exceed N + 1 = {mpc.n_workers + 1}", plan.p)
        if plan.residues != 1:
            raise argument_error("residues", "be 1 for the MPC baselines", plan.residues)
        data = prepare_data(plan, x, y, seed, x_test, y_test, mpc.groups, weights, start_round, previous)
        return cls(mpc=mpc, seed=int(seed), round=start_round, mask_source=mask_source, **data.by_name())

    @property
    def field(self) -> PrimeField:
        """The job's field."""
        return self.plan.field

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
            rows=self.partitions.shape[1],
            d=self.partitions.shape[2],
            r=self.plan.r,
            coefficients=tuple(int(v) % self.plan.p for v in self.coefficients),
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
            for lo in range(0, self.partitions.shape[1], rows_per_chunk):
                block = self.field.phi(self.partitions[group, lo : lo + rows_per_chunk], name="x")
                shares = share(self.field, block, self.mpc.t, points, self.mask_source)
                for position, worker in enumerate(members):
                    yield Message(MASTER, worker, Kind.DATA, self.round, lo, shares[position])

    def weight_messages(self) -> list[Message]:
        """Share this round's quantized weights to every group, with fresh coefficients per group."""
        wbar = self.begin_round()
        secret = self.field.phi(wbar, name="weights")
        points = party_points(self.mpc.group_size)
        messages = []
        for group in range(self.mpc.groups):
            shares = share(self.field, secret, self.mpc.t, points, self.mask_source)
            for position, worker in enumerate(self.mpc.members(group)):
                messages.append(Message(MASTER, worker, Kind.WEIGHTS, self.round, 0, shares[position]))
        self._gradients = {}
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
        if message.payload.shape != (self.partitions.shape[2],):
            raise argument_error("message", f"carry {self.partitions.shape[2]} gradient values", message.payload.shape)
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
        sums = sum_blocks(self.field, self.decode_blocks(shares))[np.newaxis]
        return gradient_from_sums(self.plan, sums, self.xty, self.x.shape[0])

    def finish_round(self, gradient: Array) -> RoundStats:
        """Take the gradient step from the query point and report the round."""
        self._gradients = {}
        return self.finish(gradient, tuple(range(self.mpc.active_workers)))

    def checkpoint(self) -> dict[str, object]:
        """The state a resumed run needs besides the data: protocol and T, then what every run keeps."""
        return {"protocol": self.mpc.protocol, "t": self.mpc.t, **super().checkpoint()}

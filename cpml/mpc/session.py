"""The master's side of a Shamir-sharing baseline as a sans-I/O session: shares out, gradient shares in.

It quantizes, rounds the weights, guards against wrap-around and turns decoded blocks into a real
gradient with the very helpers CodedTrainer uses, so a baseline trains exactly like CodedPrivateML
does on the same data, seed and quantization; only the sharing differs (G groups of 2T+1 workers,
each group holding degree-T Shamir shares of one block of rows). Like CodedTrainer it works in every
residue field of the plan's basis: the data and weights are shared residue by residue with fresh
coefficients per field, each group's block is reconstructed per residue, the blocks are added per residue
(`sum_blocks`) and the sums lifted by CRT (`gradient_from_sums`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements
from cpml.mpc.messages import MASTER, Kind, Message
from cpml.mpc.plan import MpcPlan, PartySpec
from cpml.mpc.shamir import check_residues, party_points, reconstruct_residues, share_residues
from cpml.protocol.run import RoundStats, RunInputs, TrainingRun, gradient_from_sums, prepare_data, sum_blocks

Array = npt.NDArray[np.float64]


@dataclass(kw_only=True)
class MpcSession(TrainingRun):
    """One baseline training job on the master (use `create`); `plan` fixes quantization and training."""

    mpc: MpcPlan
    _gradients: dict[int, Elements] = dataclass_field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, mpc: MpcPlan, inputs: RunInputs) -> MpcSession:
        """Quantize the data into G row blocks with CPML's quantization and check the overflow guard."""
        plan = inputs.plan
        if 2 * mpc.group_size >= min(plan.moduli):  # Shamir points 1..n and the BH08 extraction's 1..2n
            raise argument_error("p", f"leave every residue prime above 2(2T+1) = {2 * mpc.group_size}", plan.p)
        data = prepare_data(inputs, mpc.groups)
        return cls(
            mpc=mpc, seed=int(inputs.seed), round=inputs.start_round, mask_source=inputs.mask_source, **data.by_name()
        )

    def party_spec(self, worker: int) -> PartySpec:
        """The public parameters one active worker receives."""
        group, position = self.mpc.locate(worker)
        return PartySpec(
            protocol=self.mpc.protocol,
            moduli=self.plan.moduli,
            t=self.mpc.t,
            group_size=self.mpc.group_size,
            first=self.mpc.members(group).start,
            position=position,
            rows=self.partitions.shape[1],
            d=self.partitions.shape[2],
            r=self.plan.r,
            coefficients=tuple(tuple(int(c) for c in row) for row in self.basis.residues(self.coefficients)),
            start_round=self.round,
            rounds=self.plan.iterations - self.round,
        )

    def data_messages(self, rows_per_chunk: int) -> Iterator[Message]:
        """Shamir-share each group's rows in every residue field with fresh CSPRNG coefficients, chunk by chunk."""
        # Each message carries rows [step, step + rows) of the party's share in all fields: (residues, rows, d).
        if rows_per_chunk < 1:
            raise argument_error("rows_per_chunk", "be positive", rows_per_chunk)
        points = party_points(self.mpc.group_size)
        for group in range(self.mpc.groups):
            members = self.mpc.members(group)
            for lo in range(0, self.partitions.shape[1], rows_per_chunk):
                block = self.basis.residues(self.partitions[group, lo : lo + rows_per_chunk])
                shares = share_residues(self.basis, block, self.mpc.t, points, self.mask_source)
                for position, worker in enumerate(members):
                    yield Message(MASTER, worker, Kind.DATA, self.round, lo, shares[position])

    def weight_messages(self) -> list[Message]:
        """Share this round's quantized weights (residues, d, r) to every group: fresh coefficients per group, field."""
        wbar = self.begin_round()
        secret = self.basis.residues(wbar)
        points = party_points(self.mpc.group_size)
        messages = []
        for group in range(self.mpc.groups):
            shares = share_residues(self.basis, secret, self.mpc.t, points, self.mask_source)
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
        shape = (self.plan.residues, self.partitions.shape[2])
        if message.payload.shape != shape:
            raise argument_error("message", f"carry residues x d = {shape} gradient values", message.payload.shape)
        self._gradients[message.sender] = check_residues(self.basis, message.payload, "gradient")
        if len(self._gradients) < self.mpc.active_workers:
            return None
        return self.finish_round(self.decode_gradient(self._gradients))

    def decode_blocks(self, shares: dict[int, Elements]) -> Elements:
        """Reconstruct X̄_gᵀs̄ of every group in every field from all 2T+1 degree-2T shares: (residues, G, d)."""
        blocks = []
        for group in range(self.mpc.groups):
            members = self.mpc.members(group)
            by_point = {position + 1: shares[worker] for position, worker in enumerate(members)}
            blocks.append(reconstruct_residues(self.basis, by_point, 2 * self.mpc.t))
        return np.stack(blocks, axis=1)

    def decode_sums(self, shares: dict[int, Elements]) -> Elements:
        """X̄ᵀs̄ in every residue field (residues x d): the groups' blocks added per field, as CodedTrainer does."""
        blocks = self.decode_blocks(shares)
        return np.stack([sum_blocks(field, part) for field, part in zip(self.basis.fields, blocks)])

    def decode_gradient(self, shares: dict[int, Elements]) -> Array:
        """The real gradient, lifted by CRT from the decoded sums exactly as CodedTrainer does."""
        return gradient_from_sums(self.plan, self.decode_sums(shares), self.xty, self.x.shape[0])

    def finish_round(self, gradient: Array) -> RoundStats:
        """Take the gradient step from the query point and report the round."""
        self._gradients = {}
        return self.finish(gradient, tuple(range(self.mpc.active_workers)))

    def checkpoint(self) -> dict[str, object]:
        """The state a resumed run needs besides the data: protocol and T, then what every run keeps."""
        return {"protocol": self.mpc.protocol, "t": self.mpc.t, **super().checkpoint()}

"""The cluster shape of the Shamir-sharing baselines: G groups of 2T+1 workers, and what each worker knows."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cpml.errors import argument_error
from cpml.field import Elements, ResidueBasis, basis_for
from cpml.options import MPC_PROTOCOLS as PROTOCOLS


@dataclass(frozen=True)
class MpcPlan:
    """Which baseline, how many workers, the privacy threshold T and the number of groups G."""

    protocol: str
    n_workers: int
    t: int
    groups: int = 3

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise argument_error("protocol", f"be one of {', '.join(PROTOCOLS)}", self.protocol)
        for name in ("n_workers", "t", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise argument_error(name, "be a positive integer", value)
        if self.n_workers < self.active_workers:
            raise argument_error(
                "n_workers",
                f"be at least G(2T+1) = {self.active_workers} for G={self.groups} groups and T={self.t}",
                self.n_workers,
            )

    @classmethod
    def paper(cls, protocol: str, n_workers: int, groups: int = 3) -> MpcPlan:
        """The paper's setting: G = 3 groups and T = floor((N-3)/6), the privacy of CodedPrivateML Case 2."""
        t = (n_workers - 3) // 6 if isinstance(n_workers, int) else 0
        if t < 1:
            raise argument_error("n_workers", "be at least 9 for T = floor((N-3)/6) >= 1", n_workers)
        return cls(protocol=protocol, n_workers=n_workers, t=t, groups=groups)

    @property
    def group_size(self) -> int:
        """2T+1: the shares a degree-2T product needs, so each group can multiply on its own."""
        return 2 * self.t + 1

    @property
    def active_workers(self) -> int:
        """G(2T+1) workers take part; any beyond them stay idle."""
        return self.groups * self.group_size

    def members(self, group: int) -> range:
        """The worker indices of one group."""
        if not 0 <= group < self.groups:
            raise argument_error("group", f"be between 0 and {self.groups - 1}", group)
        return range(group * self.group_size, (group + 1) * self.group_size)

    def locate(self, worker: int) -> tuple[int, int]:
        """(group, position in the group) of an active worker."""
        if not 0 <= worker < self.active_workers:
            raise argument_error("worker", f"be an active worker 0..{self.active_workers - 1}", worker)
        return divmod(worker, self.group_size)


@dataclass(frozen=True)
class PartySpec:
    """What one worker may know about an MPC job: public parameters only, no data, weights or masks."""

    protocol: str
    moduli: tuple[int, ...]  # the residue primes: every share and message holds one slice per modulus
    t: int
    group_size: int
    first: int  # the worker index of the group's first member
    position: int  # 0..group_size-1; the party's Shamir point is position + 1
    rows: int
    d: int
    r: int
    coefficients: tuple[tuple[int, ...], ...]  # per modulus: r+1 residues of the sigmoid fit, lowest degree first
    start_round: int
    rounds: int  # how many rounds the BH08 offline phase prepares double sharings for

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise argument_error("protocol", f"be one of {', '.join(PROTOCOLS)}", self.protocol)
        if self.group_size != 2 * self.t + 1:
            raise argument_error("group_size", f"be 2T+1 = {2 * self.t + 1}", self.group_size)
        if not 0 <= self.position < self.group_size:
            raise argument_error("position", f"be between 0 and {self.group_size - 1}", self.position)
        for name in ("rows", "d", "r"):
            if getattr(self, name) < 1:
                raise argument_error(name, "be positive", getattr(self, name))
        object.__setattr__(self, "moduli", tuple(int(p) for p in self.moduli))
        basis = ResidueBasis(self.moduli)  # refuses composite, repeated or oversized moduli
        if 2 * self.group_size >= min(basis.moduli):  # points 1..n and the BH08 extraction's 1..2n
            raise argument_error("moduli", f"all exceed 2(2T+1) = {2 * self.group_size}", self.moduli)
        if len(self.coefficients) != len(basis.moduli):
            raise argument_error(
                "coefficients", f"hold one row per modulus ({len(basis.moduli)})", len(self.coefficients)
            )
        for row, p in zip(self.coefficients, basis.moduli):
            if len(row) != self.r + 1:
                raise argument_error("coefficients", f"hold r+1 = {self.r + 1} values", len(row))
            if any(not 0 <= int(c) < p for c in row):
                raise argument_error("coefficients", f"hold elements of F_{p} in the row of modulus {p}", row)
        object.__setattr__(self, "coefficients", tuple(tuple(int(c) for c in row) for row in self.coefficients))
        if self.start_round < 0 or self.rounds < 0:
            raise argument_error("rounds", "be non-negative", (self.start_round, self.rounds))

    @functools.cached_property
    def basis(self) -> ResidueBasis:
        """The residue number system the party computes in."""
        return basis_for(self.moduli)

    @property
    def residues(self) -> int:
        """How many residue fields every value lives in."""
        return len(self.moduli)

    def coefficient_array(self) -> Elements:
        """The sigmoid coefficients' residues, shape (residues, r+1) uint32."""
        return np.array(self.coefficients, dtype=np.uint32).reshape(self.residues, self.r + 1)

    @property
    def index(self) -> int:
        """This party's worker index."""
        return self.first + self.position

    @property
    def members(self) -> range:
        """The worker indices of this party's group."""
        return range(self.first, self.first + self.group_size)

    @property
    def offline_batch(self) -> int:
        """Random values per field each party deals in the BH08 offline phase; extraction makes n-T times as many."""
        return max(1, -(-self.products_per_round * self.rounds // (self.group_size - self.t)))

    @property
    def products_per_round(self) -> int:
        """Field elements multiplied per round and field: rows*r for z = X̄W̄, rows per product z_1...z_i (i >= 2)."""
        return self.rows * (2 * self.r - 1)

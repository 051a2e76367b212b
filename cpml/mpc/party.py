"""One worker of a Shamir-sharing baseline as a sans-I/O state machine: messages in, messages out.

Per round the party holds degree-T shares of its group's rows X̄_g (from setup) and of the quantized
weights W̄ (d x r). It computes s̄ = c̄_0 + sum_i c̄_i z_1...z_i with z_j = X̄_g w̄_j: every product of two
degree-T sharings has degree 2T and is brought back to degree T, by BGW resharing (each party reshares
its product share to all, O(n^2) messages) or by BH08 / Damgard-Nielsen (mask with a precomputed
[rho]_2T, open to one king, subtract [rho]_T; O(n) messages). Finally it sends its degree-2T share of
X̄_gᵀs̄ to the master, which reconstructs from all 2T+1 shares of the group.

Every value lives in several residue fields at once (cpml.field.rns), like CodedPrivateML's: each share
and each message has a leading axis with one slice per modulus, and the party runs the protocol in every
field side by side, with independent CSPRNG randomness per field. One message carries all residues, so
the message counts are those of a single field and the bytes grow with the number of residues.

The protocol is written as a generator that yields what it waits for; `handle` buffers messages in any
order and resumes it, so the transport (in-process queue or gRPC) only moves messages.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

import cpml.errors as errors
from cpml.field import Elements, PrimeField, matmul_mod_centred
from cpml.field.sampling import uniform
from cpml.mpc.extraction import extract
from cpml.mpc.messages import MASTER, Kind, Message
from cpml.mpc.plan import PartySpec
from cpml.mpc.shamir import combine, party_points, recombination_vector, share_residues
from cpml.protocol.coding import MaskSource


class ProtocolError(errors.InvalidInput):
    """A message that does not fit the protocol: wrong sender, shape, duplicate, or values outside F_p."""


@dataclass(frozen=True)
class _Wait:
    """The program is blocked until every sender has delivered a message with this key."""

    kind: Kind
    round: int
    step: int
    senders: tuple[int, ...]

    @property
    def key(self) -> tuple[Kind, int, int]:
        """Where the awaited messages collect in the inbox."""
        return (self.kind, self.round, self.step)


Program = Generator[_Wait, dict[int, Elements], None]
Reduction = Generator[_Wait, dict[int, Elements], Elements]


class DoubleSharingPool:
    """Precomputed pairs ([rho]_T, [rho]_2T) along the last axis (a leading axis per residue field),
    consumed in order (every party of a group in the same order)."""

    def __init__(self, rho_t: Elements, rho_2t: Elements) -> None:
        self._t, self._2t, self._used = rho_t, rho_2t, 0

    @property
    def remaining(self) -> int:
        """How many double sharings (per field) are left."""
        return self._t.shape[-1] - self._used

    def take(self, count: int) -> tuple[Elements, Elements]:
        """The next `count` pairs; refuses to run out (the offline phase was sized for the planned rounds)."""
        if count > self.remaining:
            raise RuntimeError(
                f"BH08 offline phase prepared {self._t.shape[-1]} double sharings but {self._used + count} are "
                "needed; start the job again with the number of rounds it will run."
            )
        lo, self._used = self._used, self._used + count
        return self._t[..., lo : self._used], self._2t[..., lo : self._used]


class MpcParty:
    """A worker in a BGW or BH08 group; feed it messages with `handle` after calling `start` once."""

    def __init__(self, spec: PartySpec, mask_source: MaskSource = uniform) -> None:
        self.spec = spec
        self.basis = spec.basis
        self.fields = self.basis.fields
        self._mask_source = mask_source
        self._points = party_points(spec.group_size)
        self._recombine_2t = np.stack([recombination_vector(field, self._points) for field in self.fields])
        self._x: Elements = np.zeros((spec.residues, spec.rows, spec.d), dtype=np.uint32)
        self._rows_seen = np.zeros(spec.rows, dtype=bool)
        self._inbox: dict[tuple[Kind, int, int], dict[int, Elements]] = {}
        self._consumed: dict[tuple[Kind, int, int], frozenset[int]] = {}
        self._outbox: list[Message] = []
        self._round = spec.start_round
        self._program: Program | None = None
        self._waiting: _Wait | None = None
        self.pool: DoubleSharingPool | None = None

    @property
    def index(self) -> int:
        """This party's worker index."""
        return self.spec.index

    @property
    def round(self) -> int:
        """The round the party works on (messages of earlier rounds are dropped)."""
        return self._round

    def start(self) -> list[Message]:
        """Begin the protocol; returns the first messages (the BH08 offline batch, nothing for BGW)."""
        if self._program is not None:
            raise RuntimeError("party already started")
        self._program = self._run()
        self._waiting = next(self._program)
        return self._resume()

    def handle(self, message: Message) -> list[Message]:
        """Take one message (in any order); return the messages it makes the party send."""
        if self._program is None:
            raise RuntimeError("call start() before handle()")
        self.check(message)
        if message.round < self._round and message.kind is not Kind.DATA:
            return []  # a late message for a finished round is dropped, never mixed into a new one
        if message.kind is Kind.DATA:
            self._store_rows(message)
        else:
            key = (message.kind, message.round, message.step)
            box = self._inbox.setdefault(key, {})
            if message.sender in box or message.sender in self._consumed.get(key, ()):
                raise ProtocolError(
                    f"duplicate {message.kind.value} message from worker {message.sender} "
                    f"for round {message.round}, step {message.step}"
                )
            box[message.sender] = message.payload
        return self._resume()

    # --- the protocol ----------------------------------------------------------------------
    def _run(self) -> Program:
        spec = self.spec
        if spec.protocol == "bh08":
            self.pool = yield from self._offline()
        yield _Wait(Kind.DATA, 0, 0, (MASTER,))
        # converted once per field: the share never changes between rounds
        x = [field.centred(part) for field, part in zip(self.fields, self._x)]
        self._x = np.empty((spec.residues, 0, spec.d), dtype=np.uint32)
        coefficients = spec.coefficient_array()
        while True:
            round_index = self._round
            w = (yield _Wait(Kind.WEIGHTS, round_index, 0, (MASTER,)))[MASTER]
            z = yield from self._multiply(round_index, 0, self._each(_matmul, x, w))  # (residues, rows, r)
            terms = [z[:, :, 0]]
            for step in range(1, spec.r):
                product = self._each(PrimeField.mul, terms[-1], z[:, :, step])
                terms.append((yield from self._multiply(round_index, step, product)))
            s = self._each(_polynomial, coefficients, np.stack(terms, axis=1))  # (residues, rows)
            gradient = self._each(_transposed_matmul, x, s)  # degree 2T, (residues, d)
            self._send(MASTER, Kind.GRADIENT, round_index, 0, gradient)
            self._round = round_index + 1
            self._inbox = {key: box for key, box in self._inbox.items() if key[1] >= self._round}
            self._consumed = {key: got for key, got in self._consumed.items() if key[1] >= self._round}

    def _each(self, function: Callable[..., Elements], *arrays: Sequence[npt.NDArray] | npt.NDArray) -> Elements:
        """function(field, slice j of every argument) in each residue field, stacked along a leading axis."""
        return np.stack([function(field, *(a[j] for a in arrays)) for j, field in enumerate(self.fields)])

    def _multiply(self, round_index: int, step: int, product: Elements) -> Reduction:
        """Bring a degree-2T sharing of a product (in every field) back to degree T."""
        if self.spec.protocol == "bgw":
            return (yield from self._bgw_reduce(round_index, step, product))
        return (yield from self._bh08_reduce(round_index, step, product))

    def _recombine(self, got: dict[int, Elements]) -> Elements:
        """P(0) of the degree-2T sharing whose shares the group's members sent, in every field."""
        stacked = np.stack([got[member] for member in self.spec.members], axis=1)  # (residues, n, ...)
        return self._each(combine, self._recombine_2t, stacked)

    def _bgw_reduce(self, round_index: int, step: int, product: Elements) -> Reduction:
        pieces = share_residues(self.basis, product, self.spec.t, self._points, self._mask_source)
        for position, member in enumerate(self.spec.members):
            self._send(member, Kind.RESHARE, round_index, step, pieces[position])
        got = yield _Wait(Kind.RESHARE, round_index, step, tuple(self.spec.members))
        return self._recombine(got)

    def _bh08_reduce(self, round_index: int, step: int, product: Elements) -> Reduction:
        assert self.pool is not None
        rho_t, rho_2t = self.pool.take(product[0].size)
        # Rotate the king over rounds and steps so that no party opens every product.
        king = self.spec.first + (round_index * self.spec.r + step) % self.spec.group_size
        masked = self._each(PrimeField.add, product, rho_2t.reshape(product.shape))
        self._send(king, Kind.MASKED, round_index, step, masked)
        if self.index == king:
            got = yield _Wait(Kind.MASKED, round_index, step, tuple(self.spec.members))
            opened = self._recombine(got)
            for member in self.spec.members:
                if member != self.index:
                    self._send(member, Kind.OPENED, round_index, step, opened)
        else:
            opened = (yield _Wait(Kind.OPENED, round_index, step, (king,)))[king]
        return self._each(PrimeField.sub, opened, rho_t.reshape(product.shape))

    def _offline(self) -> Generator[_Wait, dict[int, Elements], DoubleSharingPool]:
        """Each party deals [s]_T and [s]_2T of a random batch per field; extraction yields n-T double sharings each."""
        spec = self.spec
        secret = np.stack([self._mask_source(field, (spec.offline_batch,)) for field in self.fields])
        low = share_residues(self.basis, secret, spec.t, self._points, self._mask_source)
        high = share_residues(self.basis, secret, 2 * spec.t, self._points, self._mask_source)
        for position, member in enumerate(spec.members):
            self._send(member, Kind.DOUBLE, spec.start_round, 0, np.stack([low[position], high[position]], axis=1))
        got = yield _Wait(Kind.DOUBLE, spec.start_round, 0, tuple(spec.members))
        dealt = np.stack([got[member] for member in spec.members], axis=1)  # (residues, n, 2, batch)
        extracted = self._each(lambda field, part: extract(field, spec.t, part), dealt)  # (residues, n-T, 2, batch)
        rho_t = extracted[:, :, 0, :].reshape(spec.residues, -1)
        return DoubleSharingPool(rho_t, extracted[:, :, 1, :].reshape(spec.residues, -1))

    # --- plumbing --------------------------------------------------------------------------
    def _send(self, receiver: int, kind: Kind, round_index: int, step: int, payload: Elements) -> None:
        if receiver == self.index:  # a party's own share never leaves it
            self._inbox.setdefault((kind, round_index, step), {})[receiver] = payload
        else:
            self._outbox.append(Message(self.index, receiver, kind, round_index, step, payload))

    def _resume(self) -> list[Message]:
        while self._waiting is not None and self._ready(self._waiting):
            got = self._inbox.pop(self._waiting.key, {})
            self._consumed[self._waiting.key] = frozenset(got)
            try:
                self._waiting = self._program.send(got)  # type: ignore[union-attr]
            except StopIteration:
                self._waiting = None
        out, self._outbox = self._outbox, []
        return out

    def _ready(self, wait: _Wait) -> bool:
        if wait.kind is Kind.DATA:
            return bool(self._rows_seen.all())
        box = self._inbox.get(wait.key, {})
        return all(sender in box for sender in wait.senders)

    def _store_rows(self, message: Message) -> None:
        lo, rows = message.step, message.payload.shape[1]
        if self._rows_seen[lo : lo + rows].any():
            raise ProtocolError(f"rows {lo}..{lo + rows - 1} of the data share arrived twice")
        self._x[:, lo : lo + rows] = message.payload
        self._rows_seen[lo : lo + rows] = True

    def check(self, message: Message) -> None:
        """Refuse a message that cannot belong to this party: wrong receiver, sender, kind, shape or values."""
        spec = self.spec
        if message.receiver != self.index:
            raise ProtocolError(f"message for worker {message.receiver} delivered to worker {self.index}")
        from_master = message.kind in (Kind.DATA, Kind.WEIGHTS)
        peer = not from_master and message.sender in spec.members
        if not (peer or (from_master and message.sender == MASTER)):
            raise ProtocolError(
                f"worker {self.index} does not accept {message.kind.value} from sender {message.sender}"
            )
        if message.kind is Kind.GRADIENT or _PROTOCOL_OF.get(message.kind, spec.protocol) != spec.protocol:
            raise ProtocolError(f"a {spec.protocol} worker does not accept {message.kind.value} messages")
        payload = message.payload
        if not isinstance(payload, np.ndarray) or payload.dtype != np.uint32:
            raise ProtocolError(f"{message.kind.value} payload must be a uint32 array")
        expected = self._expected_shape(message)
        if payload.shape != expected:
            raise ProtocolError(f"{message.kind.value} payload must have shape {expected}, not {payload.shape}")
        for p, part in zip(spec.moduli, payload):
            if part.size and int(part.max()) >= p:
                raise ProtocolError(f"{message.kind.value} payload holds values outside F_{p} in that field's slice")

    def _expected_shape(self, message: Message) -> tuple[int, ...]:
        """(residues, ...): every payload holds one slice per residue field."""
        spec = self.spec
        if message.kind is Kind.DATA:
            rows = message.payload.shape[1] if message.payload.ndim == 3 else 0
            if rows < 1 or message.step < 0 or message.step + rows > spec.rows:
                raise ProtocolError(
                    f"data rows must lie inside 0..{spec.rows - 1}, not {message.step}..{message.step + rows - 1}"
                )
            return (spec.residues, rows, spec.d)
        if message.kind is Kind.WEIGHTS:
            return (spec.residues, spec.d, spec.r)
        if message.kind is Kind.DOUBLE:
            return (spec.residues, 2, spec.offline_batch)
        if not 0 <= message.step < spec.r:
            raise ProtocolError(f"multiplication step must be between 0 and {spec.r - 1}, not {message.step}")
        return (spec.residues, spec.rows, spec.r) if message.step == 0 else (spec.residues, spec.rows)


def _matmul(field: PrimeField, x: npt.NDArray[np.float64], w: Elements) -> Elements:
    """X̄_g W̄ in one field, from the centred share of X̄_g."""
    return matmul_mod_centred(field, x, field.centred(w))


def _transposed_matmul(field: PrimeField, x: npt.NDArray[np.float64], s: Elements) -> Elements:
    """X̄_gᵀ s̄ in one field, from the centred share of X̄_g."""
    return matmul_mod_centred(field, x.T, field.centred(s))


def _polynomial(field: PrimeField, coefficients: Elements, terms: Elements) -> Elements:
    """c_0 + sum_i c_i terms_i in one field (terms: r x rows, the products z_1...z_i)."""
    s = np.full(terms.shape[1], coefficients[0], dtype=np.uint32)
    for c, term in zip(coefficients[1:], terms):
        s = field.add(s, field.mul(term, int(c)))
    return s


_PROTOCOL_OF = {Kind.RESHARE: "bgw", Kind.MASKED: "bh08", Kind.OPENED: "bh08", Kind.DOUBLE: "bh08"}

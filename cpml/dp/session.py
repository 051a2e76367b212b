"""The aggregation server's state machine for one WD-DP run, free of I/O.

Lifecycle: parties `register` (record count and model dimension), `start` calibrates the noise
for the budget and, unless given, picks the step and momentum from public quantities only
(`public_step`: n, d, z, rounds), then each round `open_round` (refuses, before any party draws
noise, a round the budget cannot pay for), parties fetch `task_for` and `submit`, and
`close_round` aggregates whoever reported, drops the rest (their weight renormalised away), and
charges the ledgers.
With momentum beta the parties get Nesterov's look-ahead w + beta (w - w_prev) to step from; the
released model is the aggregate w itself. Both are functions of released aggregates only.
Invalid submissions raise `RunError` subclasses carrying a gRPC status name, and leave the
round exactly as it was.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, replace
from enum import Enum

import numpy as np
import structlog

import cpml.errors as errors
from cpml.dp.accountant import Accounting, Budget, BudgetExceeded, PrivacyLedger, Step, calibrate_noise_multiplier
from cpml.dp.dpgd import (
    LocalSettings,
    Scheme,
    aggregate,
    lookahead,
    party_noise_multiplier,
    public_step,
    round_noise_multiplier,
)
from cpml.errors import argument_error

log = structlog.get_logger(__name__)


class RunError(errors.CpmlError):
    """A request the run refuses; `status` names the gRPC status code to send back."""

    status = "FAILED_PRECONDITION"


class UnknownParty(RunError):
    """A party id that is not registered in this run."""

    status = "NOT_FOUND"


class InvalidUpdate(RunError):
    """A registration or update the run refuses: a bad name, record count, size or non-finite value."""

    status = "INVALID_ARGUMENT"


class StaleRound(RunError):
    """An update for a round that is not the open one."""

    status = "FAILED_PRECONDITION"


class SchemaMismatch(RunError):
    """A party that scales its features with another schema of bounds than the run's."""

    status = "FAILED_PRECONDITION"


class RunFull(RunError):
    """A registration the run cannot take: it has started, or has all its parties."""

    status = "RESOURCE_EXHAUSTED"


class Phase(str, Enum):
    """Where a run is: waiting for parties, running rounds, or over."""

    REGISTERING = "registering"
    TRAINING = "training"
    FINISHED = "finished"


@dataclass(frozen=True)
class RunSettings:
    """Everything fixed for a run before the first party joins."""

    run_id: str
    parties: int
    rounds: int
    budget: Budget
    local: LocalSettings = field(default_factory=LocalSettings)
    scheme: Scheme = Scheme.WEIGHTED
    accountant: str | None = None
    momentum: float | None = None  # None: public_step's with an automatic step, else 0
    feature_schema: str = ""  # digest of the public feature bounds every party scales with ("": none)

    def __post_init__(self) -> None:
        if not self.run_id:
            raise argument_error("run_id", "be a non-empty string", self.run_id)
        if self.parties < 1:
            raise argument_error("parties", "be at least 1", self.parties)
        if self.rounds < 1:
            raise argument_error("rounds", "be at least 1", self.rounds)
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise argument_error("momentum", "lie in [0, 1)", self.momentum)
        Accounting.for_sampling(self.local.sampling_rate, self.accountant)

    @property
    def accounting(self) -> Accounting:
        """The accountant kind this run's sampling calls for."""
        return Accounting.for_sampling(self.local.sampling_rate, self.accountant)


@dataclass(frozen=True)
class Party:
    """A registered party: public name, secret id, public record count."""

    index: int
    name: str
    party_id: str = field(repr=False)  # a bearer secret: keep it out of reprs and logs
    records: int = 0


@dataclass(frozen=True)
class RoundTask:
    """What one party needs for a round."""

    round: int
    weights: np.ndarray
    noise_multiplier: float
    local: LocalSettings


@dataclass(frozen=True)
class RoundResult:
    """What closing a round did: who reported, who dropped, the release epsilon after it."""

    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    noise_multiplier: float
    epsilon: float
    released: bool


@dataclass(frozen=True)
class Guarantees:
    """The run's two guarantees: the released model's, and each party's towards the server."""

    delta: float
    release_epsilon: float
    release_basis: str
    party_epsilons: dict[str, float]


class AggregationSession:
    """One WD-DP run as seen by the aggregation server."""

    def __init__(self, settings: RunSettings, dimension: int | None = None) -> None:
        if dimension is not None and dimension < 1:
            raise argument_error("dimension", "be at least 1", dimension)
        self.settings = settings
        self.dimension = dimension  # None: the first party to join fixes it
        self.phase = Phase.REGISTERING
        self.round = 0
        self.round_open = False
        self.weights = np.zeros(dimension or 0)
        self.previous = self.weights  # the aggregate before the last one (momentum)
        self.local = settings.local  # with the learning rate resolved at start
        self.momentum = 0.0
        self.noise_multiplier = math.nan
        self.history: list[RoundResult] = []
        self.stop_reason = ""
        self._parties: dict[str, Party] = {}
        self._active: set[str] = set()
        self._submitted: dict[str, np.ndarray] = {}
        self._release: PrivacyLedger | None = None
        self._party_ledgers: dict[str, PrivacyLedger] = {}
        self._awaiting: set[str] | None = None  # resumed run: active parties yet to rejoin

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, records: int, dimension: int, feature_schema: str = "") -> Party:
        """Admit a party with its public record count; return it with its secret id."""
        if self.phase is not Phase.REGISTERING:
            raise RunFull(f"Run {self.settings.run_id!r} has started; no more parties can join.")
        self._check_schema(name, feature_schema)
        if self._awaiting is not None:
            return self._rejoin(name, records, dimension)
        if len(self._parties) >= self.settings.parties:
            raise RunFull(f"Run {self.settings.run_id!r} already has its {self.settings.parties} parties.")
        if not name:
            raise InvalidUpdate("A party must have a non-empty name (--name).")
        if records < 1:
            raise InvalidUpdate(f"Party {name!r} must hold at least 1 record, not {records}.")
        if any(p.name == name for p in self._parties.values()):
            raise InvalidUpdate(f"A party named {name!r} already joined; pick another --name.")
        if self.dimension is None and dimension >= 1:
            self.dimension = dimension
            self.weights = self.previous = np.zeros(dimension)
        if dimension != self.dimension:
            raise InvalidUpdate(
                f"Party {name!r} has {dimension} features (with bias), but run {self.settings.run_id!r} trains a"
                f" {self.dimension}-dimensional model; use data with the same columns."
            )
        party = Party(len(self._parties), name, secrets.token_hex(16), int(records))
        self._parties[party.party_id] = party
        log.info("party_registered", party=name, records=party.records)
        return party

    def _check_schema(self, name: str, digest: str) -> None:
        expected = self.settings.feature_schema
        if digest == expected:
            return
        if not expected:
            raise SchemaMismatch(
                f"Party {name!r} joins with a public schema ({digest[:12]}: feature bounds, or a list of"
                f" classes), but run {self.settings.run_id!r} has none; start the server with the same"
                " --feature-bounds file and --classes list, or drop them on the party."
            )
        theirs = f"another schema ({digest[:12]})" if digest else "no schema"
        raise SchemaMismatch(
            f"Party {name!r} joins with {theirs}, but run {self.settings.run_id!r} uses the schema {expected[:12]};"
            " every party must pass the server's --feature-bounds file and its --classes list, in the same order."
        )

    def joined_names(self) -> list[str]:
        """Names of the parties that have joined (or, resuming, rejoined), in joining order."""
        awaiting = self._awaiting or set()
        return [p.name for p in self.parties if p.party_id not in awaiting]

    def awaited_names(self) -> list[str]:
        """Resuming: names of the checkpointed parties yet to rejoin (else empty: names are not known)."""
        awaiting = self._awaiting or set()
        return [p.name for p in self.parties if p.party_id in awaiting]

    @property
    def parties(self) -> list[Party]:
        """Registered parties in joining order."""
        return sorted(self._parties.values(), key=lambda p: p.index)

    def party(self, party_id: str) -> Party:
        """The registered party with this secret id, or UnknownParty."""
        try:
            return self._parties[party_id]
        except KeyError:
            raise UnknownParty(
                f"This party id is not registered in run {self.settings.run_id!r}; call Join"
                " first and use the id it returns."
            ) from None

    def active_ids(self) -> set[str]:
        """Secret ids of the parties not dropped."""
        return set(self._active)

    @property
    def sizes(self) -> list[int]:
        """Record counts n_k in joining order."""
        return [p.records for p in self.parties]

    def missing(self) -> int:
        """How many expected parties have not joined (or, resuming, rejoined) yet."""
        if self._awaiting is not None:
            return len(self._awaiting)
        return self.settings.parties - len(self._parties)

    def ready(self) -> bool:
        """Whether every expected party has joined (or, resuming, rejoined)."""
        return self.missing() == 0

    def start(self) -> float:
        """Close registration, calibrate z for the budget; return z."""
        if self.phase is not Phase.REGISTERING:
            raise RunError(f"Run {self.settings.run_id!r} has already started.")
        if self._awaiting is not None:
            return self._resume()
        if len(self._parties) != self.settings.parties:
            raise RunError(
                f"Run {self.settings.run_id!r} expects {self.settings.parties} parties but {len(self._parties)} joined."
            )
        s = self.settings
        if s.local.local_steps == 1:
            self.noise_multiplier = calibrate_noise_multiplier(s.budget, s.rounds, s.local.sampling_rate, s.accounting)
            self._release = PrivacyLedger(s.budget, s.accounting)
        else:
            # Several local steps: the aggregate is no longer one Gaussian mechanism, so the
            # release is only as private as its weakest party (parallel composition).
            steps = s.rounds * s.local.local_steps
            weakest = min(self._party_ratio(p) for p in self.parties)
            party_z = calibrate_noise_multiplier(s.budget, steps, s.local.sampling_rate, s.accounting)
            self.noise_multiplier = party_z / weakest
        self._party_ledgers = {p.party_id: self._party_ledger() for p in self.parties}
        self._resolve_step()
        self._active = set(self._parties)
        self.phase = Phase.TRAINING
        log.info(
            "run_started",
            run=s.run_id,
            parties=len(self._parties),
            records=sum(self.sizes),
            noise_multiplier=round(self.noise_multiplier, 4),
            accountant=s.accounting.value,
            learning_rate=round(self.step, 4),
            momentum=round(self.momentum, 4),
        )
        return self.noise_multiplier

    @property
    def step(self) -> float:
        """The local learning rate, once the run has resolved it (an explicit one, or public_step's)."""
        if self.local.learning_rate is None:
            raise RuntimeError("the learning rate is resolved when the run starts")
        return self.local.learning_rate

    def _resolve_step(self) -> None:
        s = self.settings
        if s.local.learning_rate is not None:
            self.momentum = s.momentum or 0.0
            return
        assert self.dimension is not None  # fixed by the first party to join, before the run starts
        rate, momentum = public_step(
            sum(self.sizes), self.dimension, self.noise_multiplier, s.rounds * s.local.local_steps, s.local
        )
        self.local = replace(s.local, learning_rate=rate)
        self.momentum = momentum if s.momentum is None else s.momentum

    # -- rounds -------------------------------------------------------------------------
    def open_round(self) -> bool:
        """Begin the next round, or finish (returning False) if rounds or budget ran out."""
        if self.phase is Phase.FINISHED:
            return False
        self._require(Phase.TRAINING)
        if self.round_open:
            raise RunError(f"Round {self.round} of run {self.settings.run_id!r} is still open.")
        if self.round >= self.settings.rounds:
            return self.stop("all planned rounds done")
        if not self._active:
            return self.stop("every party dropped out")
        try:
            self._check_budget(self._active)
        except BudgetExceeded as exc:
            return self.stop(str(exc))
        self.round += 1
        self.round_open = True
        self._submitted = {}
        return True

    def task_for(self, party_id: str) -> RoundTask:
        """The current round's task for one active party."""
        party = self.party(party_id)
        self._require(Phase.TRAINING)
        if not self.round_open:
            raise StaleRound(f"No round of run {self.settings.run_id!r} is open right now.")
        if party_id not in self._active:
            raise StaleRound(
                f"Party {party.name!r} was dropped from run {self.settings.run_id!r} after"
                " missing a round deadline; it cannot rejoin."
            )
        return RoundTask(
            self.round, lookahead(self.weights, self.previous, self.momentum), self.party_noise(party), self.local
        )

    def party_noise(self, party: Party) -> float:
        """z_k for this party (the multiplier its gradient sum's noise carries)."""
        return party_noise_multiplier(self.settings.scheme, self.noise_multiplier, self.sizes, party.index)

    def submit(self, party_id: str, round_: int, records: int, weights: np.ndarray) -> None:
        """Accept a party's model for the current round, or raise RunError leaving all as is."""
        party = self.party(party_id)
        if self.phase is not Phase.TRAINING:
            raise StaleRound(f"Run {self.settings.run_id!r} is {self.phase.value}, not training.")
        if round_ != self.round or not self.round_open:
            raise StaleRound(
                f"Update from {party.name!r} is for round {round_}, but round {self.round} is"
                " open; late updates are dropped."
            )
        if party_id not in self._active:
            raise StaleRound(f"Party {party.name!r} was dropped from this run.")
        if records != party.records:
            raise InvalidUpdate(
                f"Party {party.name!r} registered {party.records} records but reports {records}; the count is fixed for"
                " the run (restart the party on the same data)."
            )
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (self.dimension,):
            raise InvalidUpdate(f"Model from {party.name!r} has {weights.size} values, expected {self.dimension}.")
        if not np.isfinite(weights).all():
            raise InvalidUpdate(
                f"Model from {party.name!r} contains NaN or infinite values; lower the learning"
                " rate or check the data for NaN/inf."
            )
        if party_id in self._submitted:
            raise StaleRound(f"Party {party.name!r} already submitted round {self.round}.")
        self._submitted[party_id] = weights

    def waiting_for(self) -> list[str]:
        """Names of active parties that have not submitted this round."""
        return [p.name for p in self.parties if p.party_id in self._active and p.party_id not in self._submitted]

    def close_round(self) -> RoundResult:
        """Aggregate the submitted models, drop the silent parties, charge the ledgers."""
        self._require(Phase.TRAINING)
        if not self.round_open:
            raise RunError(f"Run {self.settings.run_id!r} has no open round to close.")
        survivors = [p for p in self.parties if p.party_id in self._submitted]
        dropped = [p for p in self.parties if p.party_id in self._active and p.party_id not in self._submitted]
        for p in dropped:
            self._active.discard(p.party_id)
            log.warning("party_dropped", party=p.name, round=self.round, remaining_weight=self._weight_left())
        for p in survivors:
            # The server saw this party's noisy updates whatever happens to the aggregate.
            self._party_ledgers[p.party_id].charge(
                Step(self.party_noise(p), self.settings.local.sampling_rate), self.settings.local.local_steps
            )
        z_round = math.nan
        released = False
        if survivors:
            z_round = round_noise_multiplier(
                self.settings.scheme, self.noise_multiplier, self.sizes, [p.index for p in survivors]
            )
            try:  # with several local steps the party ledgers, charged above, are the release's bound
                if self._release is not None:
                    self._release.charge(Step(z_round, self.settings.local.sampling_rate))
                released = True
            except BudgetExceeded as exc:
                self.stop(f"round {self.round} discarded: {exc}")
        if released:
            models = [self._submitted[p.party_id] for p in survivors]
            self.previous, self.weights = (
                self.weights,
                aggregate(self.settings.scheme, models, [p.records for p in survivors]),
            )
        result = RoundResult(
            round=self.round,
            survivors=tuple(p.name for p in survivors),
            dropped=tuple(p.name for p in dropped),
            noise_multiplier=z_round,
            epsilon=self.release_epsilon(),
            released=released,
        )
        self.history.append(result)
        self.round_open = False
        self._submitted = {}
        return result

    def stop(self, reason: str) -> bool:
        """Finish the run now (between rounds), recording why; False, as open_round then answers."""
        self.phase = Phase.FINISHED
        self.stop_reason = reason
        log.info("run_finished", run=self.settings.run_id, reason=reason, round=self.round)
        return False

    # -- checkpoints --------------------------------------------------------------------
    def state(self) -> dict:
        """A JSON-able checkpoint of the run between rounds (no secrets, no data)."""
        if self.phase is Phase.REGISTERING:
            raise RunError(f"Run {self.settings.run_id!r} has not started; nothing to checkpoint.")
        return {
            "version": CHECKPOINT_VERSION,
            "run_id": self.settings.run_id,
            "settings": _settings_record(self.settings),
            "dimension": self.dimension,
            "round": self.round,
            "weights": self.weights.tolist(),
            "previous_weights": self.previous.tolist(),
            "learning_rate": self.local.learning_rate,
            "momentum": self.momentum,
            "noise_multiplier": self.noise_multiplier,
            "parties": [
                {"name": p.name, "records": p.records, "active": p.party_id in self._active} for p in self.parties
            ],
            "release_steps": _steps_record(self._release) if self._release else None,
            "party_steps": {
                self._parties[pid].name: _steps_record(ledger) for pid, ledger in self._party_ledgers.items()
            },
            "history": [
                {**asdict(r), "survivors": list(r.survivors), "dropped": list(r.dropped)} for r in self.history
            ],
            "finished": self.phase is Phase.FINISHED,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def restore(cls, settings: RunSettings, state: dict) -> AggregationSession:
        """A session continuing a checkpoint; its active parties must rejoin by name."""
        if state.get("version") != CHECKPOINT_VERSION:
            raise argument_error("resume", f"be a version {CHECKPOINT_VERSION} checkpoint", state.get("version"))
        if state["run_id"] != settings.run_id:
            raise argument_error("run_id", f"match the checkpoint's {state['run_id']!r}", settings.run_id)
        expected = _settings_record(settings)
        if state["settings"] != expected:
            changed = sorted(
                k for k in expected.keys() | state["settings"].keys() if state["settings"].get(k) != expected.get(k)
            )
            raise argument_error(
                "resume", f"use the checkpointed run's settings (differs in {', '.join(changed)})", str(settings.run_id)
            )
        if state["finished"]:
            raise argument_error("resume", "name a run with rounds left, not one that ended with", state["stop_reason"])
        session = cls(settings, state["dimension"])
        session.round = state["round"]
        session.weights = np.asarray(state["weights"], dtype=np.float64)
        session.previous = np.asarray(state["previous_weights"], dtype=np.float64)
        session.local = replace(settings.local, learning_rate=float(state["learning_rate"]))
        session.momentum = float(state["momentum"])
        session.noise_multiplier = float(state["noise_multiplier"])
        session.history = [
            RoundResult(**{**r, "survivors": tuple(r["survivors"]), "dropped": tuple(r["dropped"])})
            for r in state["history"]
        ]
        session._awaiting = set()
        for index, record in enumerate(state["parties"]):
            party = Party(index, record["name"], secrets.token_hex(16), int(record["records"]))
            session._parties[party.party_id] = party
            if record["active"]:
                session._awaiting.add(party.party_id)
                session._active.add(party.party_id)
            session._party_ledgers[party.party_id] = session._party_ledger(state["party_steps"][party.name])
        if state["release_steps"] is not None:
            session._release = PrivacyLedger(
                settings.budget, settings.accounting, charged=_steps_from_record(state["release_steps"])
            )
        return session

    def _rejoin(self, name: str, records: int, dimension: int) -> Party:
        assert self._awaiting is not None
        party = next((p for p in self._parties.values() if p.name == name), None)
        if party is None:
            raise UnknownParty(f"Party {name!r} is not part of resumed run {self.settings.run_id!r}.")
        if party.party_id not in self._active:
            raise StaleRound(f"Party {name!r} was dropped before the checkpoint; it cannot rejoin.")
        if party.party_id not in self._awaiting:
            raise InvalidUpdate(f"Party {name!r} already rejoined run {self.settings.run_id!r}.")
        if records != party.records:
            raise InvalidUpdate(
                f"Party {name!r} registered {party.records} records but rejoins"
                f" with {records}; rejoin with the same data."
            )
        if dimension != self.dimension:
            raise InvalidUpdate(
                f"Party {name!r} has {dimension} features (with bias), but run {self.settings.run_id!r} trains a"
                f" {self.dimension}-dimensional model."
            )
        self._awaiting.discard(party.party_id)
        log.info("party_rejoined", party=name, records=records)
        return party

    def _resume(self) -> float:
        if self._awaiting:
            raise RunError(f"Run {self.settings.run_id!r} still waits for {len(self._awaiting)} part(ies) to rejoin.")
        self._awaiting = None
        self.phase = Phase.TRAINING
        log.info("run_resumed", run=self.settings.run_id, round=self.round, epsilon=round(self.release_epsilon(), 4))
        return self.noise_multiplier

    # -- guarantees ---------------------------------------------------------------------
    def release_epsilon(self) -> float:
        """Epsilon (at the budget's delta) of the model released so far."""
        if self._release is not None:
            return self._release.epsilon()
        return max((ledger.epsilon() for ledger in self._party_ledgers.values()), default=0.0)

    def guarantees(self) -> Guarantees:
        """Both guarantees: released model's, and what each party's updates told the server."""
        delta = self.settings.budget.delta
        basis = (
            "the aggregate is centralized DP-GD on the pooled records, multiplier z per round"
            if self._release is not None
            else "parallel composition: the weakest party's guarantee"
        )
        return Guarantees(
            delta=delta,
            release_epsilon=self.release_epsilon(),
            release_basis=basis,
            party_epsilons={
                self._parties[pid].name: ledger.epsilon(delta) for pid, ledger in self._party_ledgers.items()
            },
        )

    # -- internals ----------------------------------------------------------------------
    def _check_budget(self, active: set[str]) -> None:
        local = self.settings.local
        if self._release is not None:
            indices = [self._parties[p].index for p in active]
            z = round_noise_multiplier(self.settings.scheme, self.noise_multiplier, self.sizes, indices)
            self._release.check(Step(z, local.sampling_rate))
        else:
            for pid in active:
                self._party_ledgers[pid].check(
                    Step(self.party_noise(self._parties[pid]), local.sampling_rate), local.local_steps
                )

    def _party_ledger(self, record: list[list[float]] | None = None) -> PrivacyLedger:
        """A party's ledger (from its checkpoint record): enforced when its steps bound the release."""
        s = self.settings
        charged = _steps_from_record(record) if record is not None else None
        return PrivacyLedger(s.budget, s.accounting, s.local.local_steps > 1, charged)

    def _party_ratio(self, party: Party) -> float:
        return party_noise_multiplier(self.settings.scheme, 1.0, self.sizes, party.index)

    def _weight_left(self) -> float:
        total = sum(self.sizes)
        return round(sum(self._parties[p].records for p in self._active) / total, 4)

    def _require(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise RunError(f"Run {self.settings.run_id!r} is {self.phase.value}, not {phase.value}.")


CHECKPOINT_VERSION = 2  # 2: momentum state and the resolved step


def _settings_record(settings: RunSettings) -> dict:
    return {
        "parties": settings.parties,
        "rounds": settings.rounds,
        "epsilon": settings.budget.epsilon,
        "delta": settings.budget.delta,
        "local": asdict(settings.local),
        "scheme": settings.scheme.value,
        "accountant": settings.accounting.value,
        "momentum": settings.momentum,
    } | ({"feature_schema": settings.feature_schema} if settings.feature_schema else {})


def _steps_record(ledger: PrivacyLedger) -> list[list[float]]:
    return [[s.noise_multiplier, s.sampling_rate, count] for s, count in ledger.charged().items()]


def _steps_from_record(record: list[list[float]]) -> dict[Step, int]:
    return {Step(float(z), float(q)): int(count) for z, q, count in record}

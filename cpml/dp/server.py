"""The aggregation server: a thin gRPC servicer over `AggregationSession`, and the round driver.

The driver waits for the run's parties to join (saying who has joined and who is awaited when the
wait begins, at every join and every `status_interval` seconds), then opens each round, waits until
every active party has submitted or the round deadline passes, and closes the round (parties that
missed it are dropped and their weight renormalised away). Servicer and driver share one event
loop, so the session needs no locks; an asyncio.Condition wakes waiting calls. A Join is admitted
by the server's `Admission` (join tokens or client certificates, see cpml.dp.auth) before anything
else is looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import cpml.errors as errors
from cpml.dp.session import AggregationSession, InvalidUpdate, Phase, RoundResult, RunError
from cpml.wire import aggregation_serde as serde
from cpml.wire import names
from cpml.wire.generated.v1 import aggregation_pb2_grpc as pb_grpc
from cpml.wire.guard import guarded_server, status_of
from cpml.wire.serde import MAX_ID_LENGTH, shown

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    from cpml.wire.generated.v1 import aggregation_pb2 as pb

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 4 << 20
# A model travels whole in one message (packed float64), so its size is bounded before anything is allocated.
MAX_DIMENSION = (MAX_MESSAGE_BYTES - 4096) // 8
# n and every n_k/n stay exact in float64 (and n fits int64) when the run's records total at most 2^53.
MAX_TOTAL_RECORDS = 2**53


class Admission(Protocol):
    """Decides who may join: cpml.dp.auth.TokenAdmission or CertificateAdmission."""

    @property
    def roster(self) -> Sequence[str] | None:
        """The names that may join, if known."""

    def admit(self, name: str, token: str, context: grpc.aio.ServicerContext | None) -> str:
        """The admitted party's name, or raise a RunError (UNAUTHENTICATED, PERMISSION_DENIED)."""

    def check_caller(self, name: str, context: grpc.aio.ServicerContext | None) -> None:
        """Raise a RunError if this call may not speak for party `name`."""


class CoordinatorFailed(errors.CpmlError, RuntimeError):
    """The round driver hit an unexpected error; the run was stopped and the parties told."""


class JoinTimeout(errors.TimedOut, RuntimeError):
    """Not every expected party joined before the deadline."""

    exit_code = errors.ExitCode.PARTIES_MISSING


class Coordinator:
    """Drives one session through time: registration, rounds with deadlines, the end."""

    def __init__(
        self,
        session: AggregationSession,
        round_timeout: float,
        join_timeout: float,
        on_round: Callable[[RoundResult], None] = lambda result: None,
        roster: Sequence[str] | None = None,
        status_interval: float = 30.0,
    ) -> None:
        self.session = session
        self.round_timeout = round_timeout
        self.join_timeout = join_timeout
        self.on_round = on_round
        self.roster = tuple(roster) if roster else None  # names that may join, when known
        self.status_interval = status_interval
        self.changed = asyncio.Condition()
        self.told_finished: set[str] = set()
        self.stopping = ""
        self._wakeups: set[asyncio.Task] = set()

    def interrupt(self, reason: str) -> None:
        """End the run early: the open round closes with what it has, then the run finishes."""
        if not self.stopping:
            log.warning("run_interrupted", reason=reason)
            self.stopping = reason
            task = asyncio.get_running_loop().create_task(self.notify())
            self._wakeups.add(task)
            task.add_done_callback(self._wakeups.discard)

    async def notify(self) -> None:
        """Wake every call waiting on the session."""
        async with self.changed:
            self.changed.notify_all()

    async def run(self) -> None:
        """Wait for the parties, then run rounds until the plan or the budget ends; a failure ends the run."""
        try:
            await self._drive()
        except (JoinTimeout, asyncio.CancelledError):
            raise
        except Exception as exc:
            error, site = type(exc).__name__, errors.failure_site(exc)
            log.error("round driver failed", error=error, site=site)
            reason = f"the aggregation server failed ({error} at {site}); see its log"
            if self.session.phase is not Phase.FINISHED:
                self.session.stop(reason)
            await self.notify()
            raise CoordinatorFailed(reason) from None

    def join_status(self) -> str:
        """Who has joined and who is awaited, e.g. "joined 1 of 3 (a); awaiting b, c"."""
        s = self.session
        joined = s.joined_names()
        awaited = s.awaited_names() or [n for n in self.roster or () if n not in joined]
        missing = s.missing()
        text = f"joined {len(joined)} of {s.settings.parties}" + (f" ({', '.join(joined)})" if joined else "")
        if missing == 0:
            return text
        if awaited and len(awaited) == missing:
            return f"{text}; awaiting {', '.join(awaited)}"
        if awaited:
            return f"{text}; awaiting {missing} of {', '.join(awaited)}"
        return f"{text}; awaiting {missing} more part{'y' if missing == 1 else 'ies'}"

    async def _wait_for_parties(self) -> None:
        """Wait (holding `changed`) until every party joined, saying who is awaited as time passes."""
        s = self.session
        deadline = time.monotonic() + self.join_timeout
        log.info("waiting_for_parties", status=self.join_status(), join_timeout=self.join_timeout)
        while not (s.ready() or self.stopping):
            left = deadline - time.monotonic()
            if left <= 0:
                s.stop(
                    f"{s.missing()} of {s.settings.parties} parties did not join within"
                    f" {self.join_timeout:g} s ({self.join_status()})"
                )
                self.changed.notify_all()
                raise JoinTimeout(s.stop_reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: s.ready() or bool(self.stopping)), min(left, self.status_interval)
                )
            if not (s.ready() or self.stopping):
                log.info(
                    "waiting_for_parties",
                    status=self.join_status(),
                    seconds_left=round(max(deadline - time.monotonic(), 0.0)),
                )

    async def _drive(self) -> None:
        s = self.session
        async with self.changed:
            await self._wait_for_parties()
            if self.stopping:
                s.stop(self.stopping)
                self.changed.notify_all()
                return
            s.start()
        while True:
            async with self.changed:
                if self.stopping and s.phase is Phase.TRAINING:
                    s.stop(self.stopping)
                if not s.open_round():
                    self.changed.notify_all()
                    break
                self.changed.notify_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.changed.wait_for(lambda: not s.waiting_for() or self.stopping), self.round_timeout
                    )
                result = s.close_round()
            self.on_round(result)

    async def wait_until_told(self, grace: float) -> None:
        """After the run, give active parties up to `grace` s to collect the final model."""
        s = self.session
        expected = s.active_ids()
        with contextlib.suppress(TimeoutError):
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(lambda: expected <= self.told_finished), grace)


class AggregationService(pb_grpc.AggregationServicer):
    """Decode, call the session, encode; RunError becomes its gRPC status."""

    def __init__(self, coordinator: Coordinator, admission: Admission | None = None) -> None:
        self.coordinator = coordinator
        self.session = coordinator.session
        self.admission = admission  # None: anyone may join (in-process tests only; the CLI always sets one)

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:
        name = request.name
        if self.admission is not None:  # first: an unauthenticated caller learns nothing about the run
            try:
                name = self.admission.admit(request.name, request.token, context)
            except RunError as exc:
                log.warning("join_refused", party=shown(request.name), peer=context.peer(), reason=str(exc))
                await _abort(context, exc)
        await self._check_run(request.run_id, context)
        try:
            self._check_join(request, name)
            party = self.session.register(name, request.records, request.dimension, request.feature_schema)
        except RunError as exc:
            log.warning("join_refused", party=shown(name), reason=str(exc))
            await _abort(context, exc)
        log.info("party_joined", party=name, status=self.coordinator.join_status())
        await self.coordinator.notify()
        s = self.session.settings
        return serde.join_reply(party.party_id, s.rounds, s.scheme.value, s.budget.epsilon, s.budget.delta)

    async def NextTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.PartyTask:
        await self._check_run(request.run_id, context)
        s = self.session
        try:
            party = s.party(request.party_id)
            self._check_caller(party.name, context)
        except RunError as exc:
            await _abort(context, exc)
        if request.after_round > s.round:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"NextTask asks for a round after {request.after_round}, but run {s.settings.run_id!r} is at round"
                f" {s.round}; pass the last round this party finished (0 before the first).",
            )
        changed = self.coordinator.changed
        async with changed:
            await changed.wait_for(
                lambda: s.phase is Phase.FINISHED or (s.round_open and s.round > request.after_round)
            )
            if s.phase is Phase.FINISHED:
                self.coordinator.told_finished.add(party.party_id)
                changed.notify_all()
                g = s.guarantees() if s.history else None  # none before the first round: nothing released
                release, own = (g.release_epsilon, g.party_epsilons[party.name]) if g else (0.0, 0.0)
                return serde.finished_to_proto(s.settings.run_id, s.round, s.weights, s.stop_reason, release, own)
            try:
                task = s.task_for(party.party_id)
            except RunError as exc:
                await _abort(context, exc)
            return serde.task_to_proto(s.settings.run_id, task, s.noise_multiplier, sum(s.sizes))

    async def SubmitUpdate(self, request: pb.UpdateRequest, context: grpc.aio.ServicerContext) -> pb.UpdateReply:
        await self._check_run(request.run_id, context)
        s = self.session
        try:
            self._check_caller(s.party(request.party_id).name, context)
            weights = serde.vector_from_proto(request.weights, "update")
            s.submit(request.party_id, request.round, request.records, weights)
        except RunError as exc:
            log.warning("update_refused", round=request.round, reason=str(exc))
            await _abort(context, exc)
        await self.coordinator.notify()
        return serde.update_reply(s.round, len(s.waiting_for()))

    def _check_caller(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if self.admission is not None:
            self.admission.check_caller(name, context)

    def _check_join(self, request: pb.JoinRequest, name: str) -> None:
        """Refuse, before the session sees them, names, sizes and counts no run can hold."""
        if len(name) > MAX_ID_LENGTH or not name.isprintable():
            raise InvalidUpdate(f"Party name {shown(name)} must be 1 to {MAX_ID_LENGTH} printable characters.")
        if not 1 <= request.dimension <= MAX_DIMENSION:
            raise InvalidUpdate(
                f"Party {name!r} has {request.dimension} features (with bias); a model has at least 1 and"
                f" travels in one {MAX_MESSAGE_BYTES}-byte message, so at most {MAX_DIMENSION}."
            )
        registered = sum(p.records for p in self.session.parties if p.name != name)  # a rejoin is not new
        if request.records > MAX_TOTAL_RECORDS - registered:
            raise InvalidUpdate(
                f"Party {name!r} reports {request.records} records, but a run's parties may hold at most 2^53 ="
                f" {MAX_TOTAL_RECORDS} records in all (so that n_k/n is exact) and {registered} are registered already."
            )

    async def _check_run(self, run_id: str, context: grpc.aio.ServicerContext) -> None:
        served = self.session.settings.run_id
        if run_id != served:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Run {shown(run_id)} is not served here; this server runs {served!r} (--run-id).",
            )


async def _abort(context: grpc.aio.ServicerContext, exc: RunError) -> None:
    await context.abort(status_of(exc), str(exc))


class AggregationServer:
    """A running gRPC server for one coordinator: start() binds, stop() drains."""

    def __init__(
        self,
        coordinator: Coordinator,
        listen: str,
        credentials: grpc.ServerCredentials | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.listen = listen
        self.credentials = credentials
        self.admission = admission
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        """Bind and serve; return the bound host:port."""
        server = guarded_server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        pb_grpc.add_AggregationServicer_to_server(AggregationService(self.coordinator, self.admission), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)  # guarded too: bad bytes, INVALID_ARGUMENT
        if self.credentials is not None:
            port = server.add_secure_port(self.listen, self.credentials)
        else:
            port = server.add_insecure_port(self.listen)
        await server.start()
        for name in ("", names.AGGREGATION_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        host = self.listen.rpartition(":")[0]
        self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '::') else host}:{port}"
        log.info(
            "aggregation_serving",
            address=self.address,
            tls=self.credentials is not None,
            admission=type(self.admission).__name__ if self.admission else "open",
        )
        return self.address

    async def stop(self, grace: float = 2.0) -> None:
        """Report NOT_SERVING and stop after `grace` seconds for calls in flight."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None

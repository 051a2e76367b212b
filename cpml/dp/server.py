"""The aggregation server: a thin gRPC servicer over `AggregationSession`, and the round driver.

The driver waits for the run's parties to join, then opens each round, waits until every
active party has submitted or the round deadline passes, and closes the round (parties that
missed it are dropped and their weight renormalised away). Servicer and driver share one event
loop, so the session needs no locks; an asyncio.Condition wakes waiting calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cpml.dp import serde
from cpml.dp.session import AggregationSession, Phase, RoundResult, RunError, UnknownParty
from cpml.wire.generated.v1 import aggregation_pb2 as pb
from cpml.wire.generated.v1 import aggregation_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = "cpml.v1.Aggregation"


class JoinTimeout(RuntimeError):
    """Not every expected party joined before the deadline."""


class Coordinator:
    """Drives one session through time: registration, rounds with deadlines, the end."""

    def __init__(
        self,
        session: AggregationSession,
        round_timeout: float,
        join_timeout: float,
        on_round: Callable[[RoundResult], None] = lambda result: None,
    ) -> None:
        self.session = session
        self.round_timeout = round_timeout
        self.join_timeout = join_timeout
        self.on_round = on_round
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
        """Wait for the parties, then run rounds until the plan or the budget ends."""
        s = self.session
        async with self.changed:
            try:
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: s.ready() or bool(self.stopping)),
                    self.join_timeout,
                )
            except TimeoutError:
                s.stop(f"{s.missing()} of {s.settings.parties} parties did not join"
                       f" within {self.join_timeout:g} s")
                self.changed.notify_all()
                raise JoinTimeout(s.stop_reason) from None
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
                        self.changed.wait_for(lambda: not s.waiting_for() or self.stopping),
                        self.round_timeout,
                    )
                result = s.close_round()
            self.on_round(result)

    async def wait_until_told(self, grace: float) -> None:
        """After the run, give active parties up to `grace` s to collect the final model."""
        s = self.session
        expected = s.active_ids()
        with contextlib.suppress(TimeoutError):
            async with self.changed:
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: expected <= self.told_finished), grace
                )


class AggregationService(pb_grpc.AggregationServicer):
    """Decode, call the session, encode; RunError becomes its gRPC status."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.session = coordinator.session

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext
                   ) -> pb.JoinReply:
        await self._check_run(request.run_id, context)
        try:
            party = self.session.register(request.name, request.records, request.dimension)
        except RunError as exc:
            await _abort(context, exc)
        await self.coordinator.notify()
        s = self.session.settings
        return pb.JoinReply(party_id=party.party_id, rounds=s.rounds, scheme=s.scheme.value,
                            epsilon=s.budget.epsilon, delta=s.budget.delta)

    async def NextTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext
                       ) -> pb.PartyTask:
        await self._check_run(request.run_id, context)
        s = self.session
        try:
            party = s.party(request.party_id)
        except UnknownParty as exc:
            await _abort(context, exc)
        changed = self.coordinator.changed
        async with changed:
            await changed.wait_for(
                lambda: s.phase is Phase.FINISHED
                or (s.round_open and s.round > request.after_round)
            )
            if s.phase is Phase.FINISHED:
                self.coordinator.told_finished.add(party.party_id)
                changed.notify_all()
                guarantees = s.guarantees() if s.history else None
                return serde.finished_to_proto(
                    s.settings.run_id, s.round, s.weights, s.stop_reason,
                    guarantees.release_epsilon if guarantees else 0.0,
                    guarantees.party_epsilons[party.name] if guarantees else 0.0,
                )
            try:
                task = s.task_for(party.party_id)
            except RunError as exc:
                await _abort(context, exc)
            return serde.task_to_proto(s.settings.run_id, task, s.noise_multiplier, sum(s.sizes))

    async def SubmitUpdate(self, request: pb.UpdateRequest, context: grpc.aio.ServicerContext
                           ) -> pb.UpdateReply:
        await self._check_run(request.run_id, context)
        s = self.session
        try:
            weights = serde.vector_from_proto(request.weights, "update")
            s.submit(request.party_id, request.round, request.records, weights)
        except RunError as exc:
            log.warning("update_refused", round=request.round, reason=str(exc))
            await _abort(context, exc)
        await self.coordinator.notify()
        return pb.UpdateReply(round=s.round, waiting_for=len(s.waiting_for()))

    async def _check_run(self, run_id: str, context: grpc.aio.ServicerContext) -> None:
        served = self.session.settings.run_id
        if run_id != served:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Run {run_id!r} is not served here; this server runs {served!r} (--run-id).",
            )


async def _abort(context: grpc.aio.ServicerContext, exc: RunError) -> None:
    await context.abort(grpc.StatusCode[exc.status], str(exc))


class AggregationServer:
    """A running gRPC server for one coordinator: start() binds, stop() drains."""

    def __init__(self, coordinator: Coordinator, listen: str,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.coordinator = coordinator
        self.listen = listen
        self.credentials = credentials
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        """Bind and serve; return the bound host:port."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_AggregationServicer_to_server(AggregationService(self.coordinator), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.credentials is not None:
            port = server.add_secure_port(self.listen, self.credentials)
        else:
            port = server.add_insecure_port(self.listen)
        await server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        host = self.listen.rpartition(":")[0]
        self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '::') else host}:{port}"
        log.info("aggregation_serving", address=self.address, tls=self.credentials is not None)
        return self.address

    async def stop(self, grace: float = 2.0) -> None:
        """Report NOT_SERVING and stop after `grace` seconds for calls in flight."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None

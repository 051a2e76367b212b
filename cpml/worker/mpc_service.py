"""The Mpc gRPC servicer: one cpml.mpc party per job, fed by Deliver, talking to its peers directly.

Deliver only checks and queues a message; one task per job starts the party on the first message, feeds
it the queue (the math runs in the compute executor) and routes what it sends: to peers through one sender
task each (so a handler never waits on a peer that is waiting on it), to the master through the job's
Results stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc
import structlog

from cpml.mpc import MASTER, Message, MpcParty, ProtocolError, Traffic
from cpml.wire import mpc_serde
from cpml.wire.generated.v1 import mpc_pb2 as pb
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc
from cpml.wire.serde import CorruptData, MalformedMessage
from cpml.wire.tls import channel_credentials
from cpml.worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

PEER_TIMEOUT = 60.0  # seconds one Deliver to a peer may take before the job is failed


class JobFailed(Exception):
    """The job cannot continue (a peer is unreachable or a message broke the protocol)."""


@dataclass
class MpcJob:
    """One party and its plumbing: inbox, peer senders, the master's outbox, counters."""

    job_id: str
    party: MpcParty
    peers: dict[int, pb_grpc.MpcStub]
    channels: list[grpc.aio.Channel]
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    to_master: asyncio.Queue[pb.MpcEnvelope | JobFailed] = field(default_factory=asyncio.Queue)
    to_peer: dict[int, asyncio.Queue[pb.MpcEnvelope]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    traffic: Traffic = field(default_factory=Traffic)
    compute_seconds: float = 0.0
    failure: str | None = None
    touched: float = field(default_factory=time.monotonic)

    def fail(self, reason: str) -> None:
        """Stop the job and tell the master through its Results stream."""
        if self.failure is None:
            self.failure = reason
            log.warning("mpc job failed", job=self.job_id, reason=reason)
            self.to_master.put_nowait(JobFailed(reason))


class MpcService(pb_grpc.MpcServicer):
    """Serves Join, Deliver, Results and Leave for the BGW and BH08 baselines."""

    def __init__(self, settings: WorkerSettings, executor: Executor) -> None:
        self._settings = settings
        self._executor = executor
        self._jobs: dict[str, MpcJob] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def Join(self, request: pb.MpcJoinRequest, context: grpc.aio.ServicerContext) -> pb.MpcJoinReply:
        try:
            spec, peers = mpc_serde.join_from_proto(request)
        except MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.job_id in self._jobs:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"MPC job {request.job_id!r} already exists on this worker; Leave it first")
        # From here on nothing awaits: a Join is registered whole or not at all, even if its call is cancelled.
        channels, stubs = [], {}
        for position, address in enumerate(peers):
            if position != spec.position:
                channel = self._channel(address)
                channels.append(channel)
                stubs[spec.first + position] = pb_grpc.MpcStub(channel)
        job = MpcJob(request.job_id, MpcParty(spec), stubs, channels)
        self._jobs[job.job_id] = job
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._expire_idle_jobs())
        for worker, stub in stubs.items():
            job.to_peer[worker] = asyncio.Queue()
            job.tasks.append(asyncio.create_task(self._send_to_peer(job, worker, stub)))
        job.tasks.append(asyncio.create_task(self._process(job)))
        log.info("mpc job joined", job=job.job_id, protocol=spec.protocol, worker=spec.index,
                 group_size=spec.group_size, rows=spec.rows, cols=spec.d)
        return pb.MpcJoinReply(job_id=job.job_id)

    async def Deliver(self, request: pb.MpcEnvelope, context: grpc.aio.ServicerContext) -> pb.MpcDeliverReply:
        job = await self._job(request.job_id, context)
        try:
            message = mpc_serde.envelope_from_proto(request, job.party.spec.p)
            job.party.check(message)
        except CorruptData as exc:
            await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
        except (MalformedMessage, ProtocolError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if job.failure is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"MPC job {job.job_id!r} failed: {job.failure}")
        job.touched = time.monotonic()
        job.inbox.put_nowait(message)
        return pb.MpcDeliverReply()

    async def Results(self, request: pb.MpcResultsRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MpcEnvelope]:
        job = await self._job(request.job_id, context)
        while True:
            item = await job.to_master.get()
            if isinstance(item, JobFailed):
                await context.abort(grpc.StatusCode.ABORTED, f"MPC job {job.job_id!r} failed: {item}")
            yield item

    async def Leave(self, request: pb.MpcLeaveRequest, context: grpc.aio.ServicerContext) -> pb.MpcLeaveReply:
        job = self._jobs.pop(request.job_id, None)
        if job is None:
            return pb.MpcLeaveReply(existed=False)
        await _close(job)
        messages, sent = job.traffic.messages, job.traffic.bytes
        kinds = [k for k in messages if k not in ("setup", "offline", "online")]
        log.info("mpc job left", job=job.job_id, messages=sum(messages[k] for k in kinds))
        return pb.MpcLeaveReply(
            existed=True, messages_sent=sum(messages[k] for k in kinds), bytes_sent=sum(sent[k] for k in kinds),
            compute_seconds=job.compute_seconds, messages_by_kind={k: messages[k] for k in kinds},
            bytes_by_kind={k: sent[k] for k in kinds})

    async def close(self) -> None:
        """Drop every job (the daemon is stopping)."""
        if self._reaper is not None:
            self._reaper.cancel()
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            await _close(job)

    # --- plumbing --------------------------------------------------------------------------
    async def _expire_idle_jobs(self) -> None:
        """Drop jobs no message has touched for job_idle_seconds (a master that died without Leave)."""
        idle = self._settings.job_idle_seconds
        while True:
            await asyncio.sleep(max(1.0, min(60.0, idle / 4)))
            now = time.monotonic()
            for job_id, job in list(self._jobs.items()):
                if now - job.touched > idle and self._jobs.pop(job_id, None) is not None:
                    await _close(job)
                    log.info("idle mpc job expired", job=job_id, idle_seconds=idle)

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> MpcJob:
        job = self._jobs.get(job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no MPC job {job_id!r} on this worker; the master must Join it first")
        return job  # type: ignore[return-value]

    def _channel(self, address: str) -> grpc.aio.Channel:
        limit = self._settings.max_message_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        s = self._settings
        if s.tls:
            credentials = channel_credentials(s.tls_client_ca, s.tls_cert, s.tls_key)
            return grpc.aio.secure_channel(address, credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def _run(self, job: MpcJob, step: Callable[..., list[Message]], *args: Message) -> list[Message]:
        def timed() -> tuple[list[Message], float]:
            started = time.thread_time()
            out = step(*args)
            return out, time.thread_time() - started

        out, seconds = await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        job.compute_seconds += seconds
        return out

    async def _process(self, job: MpcJob) -> None:
        # The party starts on its first message, not in Join: a message only comes once the master has had
        # every Join of the group acknowledged, so what start sends (the BH08 offline batch) never reaches
        # a peer that has not joined yet. One task also means start and handle never run at the same time.
        message = await job.inbox.get()
        if await self._step(job, job.party.start):
            while await self._step(job, job.party.handle, message):
                message = await job.inbox.get()

    async def _step(self, job: MpcJob, step: Callable[..., list[Message]], *args: Message) -> bool:
        """Run one party step and route what it sends; False once the job has failed."""
        try:
            out = await self._run(job, step, *args)
        except (ProtocolError, RuntimeError) as exc:
            job.fail(str(exc))
            return False
        self._route(job, out)
        return job.failure is None

    def _route(self, job: MpcJob, messages: list[Message]) -> None:
        for message in messages:
            job.traffic.record(message)
            envelope = mpc_serde.envelope_to_proto(job.job_id, message)
            if message.receiver == MASTER:
                job.to_master.put_nowait(envelope)
            else:
                job.to_peer[message.receiver].put_nowait(envelope)

    async def _send_to_peer(self, job: MpcJob, worker: int, stub: pb_grpc.MpcStub) -> None:
        queue = job.to_peer[worker]
        while job.failure is None:
            envelope = await queue.get()
            try:
                await stub.Deliver(envelope, timeout=PEER_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                hint = ""
                if self._settings.tls and exc.code() is grpc.StatusCode.UNAVAILABLE:
                    hint = (" (over TLS a worker reaches its peers with its own certificate, so that certificate "
                            "must also allow client authentication and the peers must trust --tls-client-ca)")
                job.fail(f"worker {worker} refused or did not take a message: {exc.code().name}: "
                         f"{exc.details()}{hint}")
                return


async def _close(job: MpcJob) -> None:
    for task in job.tasks:
        task.cancel()
    for task in job.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for channel in job.channels:
        await channel.close()

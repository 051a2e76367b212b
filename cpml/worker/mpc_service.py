"""The Mpc gRPC servicer: one cpml.mpc party per job, fed by Deliver, talking to its peers directly.

Deliver only checks and queues a message; one task per job starts the party on the first message, feeds
it the queue (the math runs in the compute executor) and routes what it sends: to peers through one sender
task each (so a handler never waits on a peer that is waiting on it), to the master through the job's
Results stream. Whatever stops a job (a refusing peer, a message that breaks the protocol, a bug) fails it
at once: Results ends with ABORTED and every later Deliver gets FAILED_PRECONDITION, both with the reason.

A job computes in the residue fields its Join declares (every payload holds one slice per modulus); a Join
in the single-modulus format of cpml 0.1 is refused with INVALID_ARGUMENT rather than misread.

What a job can hold is bounded before it is created: a Join's party (its share, products and BH08 pool, in
every residue field) is counted against --share-bytes-cap, and Deliver refuses what the party would
otherwise buffer without end (a message it already has, or one for a round more than one ahead); late
messages are dropped unqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import structlog

import cpml.errors as errors
import cpml.mpc
from cpml.mpc import MASTER, Kind, Message, MpcParty, PartySpec, ProtocolError, Traffic
from cpml.wire import mpc_serde
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc
from cpml.wire.guard import failure_site, status_of
from cpml.wire.serde import MAX_DEGREE, CorruptData, MalformedMessage, check_id, shown
from cpml.wire.tls import channel_credentials
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import JobExists, ShareStore, ShareStoreFull

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    from cpml.wire.generated.v1 import mpc_pb2 as pb

log = structlog.get_logger(__name__)

PEER_TIMEOUT = 60.0  # seconds one Deliver to a peer may take before the job is failed
MAX_GROUP_SIZE = 255  # 2T+1 parties; the paper's largest runs use N = 50 workers in all
MAX_WORKER_INDEX = 2**31 - 1  # worker indices travel as sint32
MAX_ADDRESS_LENGTH = 255
# Tasks, queues and a channel per peer: counted so that a flood of tiny Joins is bounded by the cap too.
PARTY_OVERHEAD_BYTES = 64 << 10
_MPC_PACKAGE = str(Path(cpml.mpc.__file__).parent)


class JobFailed(errors.CpmlError):
    """The job cannot continue (a peer is unreachable or a message broke the protocol)."""

    status = "ABORTED"


class JobClosed(errors.NotFound):
    """The job was left or expired while its Results stream was open."""


class DuplicateMessage(errors.AlreadyExists):
    """A message the party already has (same kind, round, step and sender, or data rows already sent)."""


class RoundTooFarAhead(errors.CpmlError):
    """A message for a round the party cannot reach before it has answered the master."""

    status = "OUT_OF_RANGE"


def party_bytes(spec: PartySpec) -> int:
    """Bytes a party takes: its share (uint32, then float64), products, BH08 pool (all per residue), plumbing."""
    data = 12 * spec.rows * spec.d
    products = 16 * spec.group_size * spec.rows * spec.r  # pieces sent and received, two rounds in flight
    pool = 32 * spec.group_size * spec.offline_batch if spec.protocol == "bh08" else 0
    return spec.residues * (data + products + pool) + PARTY_OVERHEAD_BYTES * spec.group_size


@dataclass
class MpcJob:
    """One party and its plumbing: inbox, peer senders, the master's outbox, counters."""

    job_id: str
    party: MpcParty
    peers: dict[int, pb_grpc.MpcAsyncStub]
    channels: list[grpc.aio.Channel]
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    to_master: asyncio.Queue[pb.MpcEnvelope | JobFailed | JobClosed] = field(default_factory=asyncio.Queue)
    to_peer: dict[int, asyncio.Queue[pb.MpcEnvelope]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    traffic: Traffic = field(default_factory=Traffic)
    compute_seconds: float = 0.0
    failure: str | None = None
    touched: float = field(default_factory=time.monotonic)
    results_open: bool = False
    # What Deliver has queued, to refuse duplicates: (kind, round, step, sender) of rounds not yet finished,
    # and the data rows.
    seen: set[tuple[Kind, int, int, int]] = field(default_factory=set)
    seen_from_round: int = 0
    rows_seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def fail(self, reason: str) -> None:
        """Stop the job and tell the master through its Results stream."""
        if self.failure is None:
            self.failure = reason
            log.warning("mpc job failed", job=self.job_id, reason=reason)
            self.to_master.put_nowait(JobFailed(reason))

    def admit(self, message: Message) -> bool:
        """Record a checked message; False for a late one (dropped), raise for one the party must not buffer."""
        party = self.party
        if message.kind is Kind.DATA:
            rows = slice(message.step, message.step + message.payload.shape[1])  # (residues, rows, d)
            if self.rows_seen[rows].any():
                raise DuplicateMessage(
                    f"rows {rows.start}..{rows.stop - 1} of the data share of MPC job {self.job_id!r} were already "
                    f"delivered to worker {party.index}; send each row once"
                )
            self.rows_seen[rows] = True
            return True
        current = party.round
        if message.round < current:
            return False  # the party drops a late message anyway: it never needs to be queued
        if message.round > current + 1:
            raise RoundTooFarAhead(
                f"{message.kind.value} for round {message.round} reached worker {party.index}, which is on round "
                f"{current}; peers and the master are never more than one round ahead, so the message is "
                f"misnumbered"
            )
        if current > self.seen_from_round:
            self.seen = {key for key in self.seen if key[1] >= current}
            self.seen_from_round = current
        key = (message.kind, message.round, message.step, message.sender)
        if key in self.seen:
            raise DuplicateMessage(
                f"worker {party.index} already has the {message.kind.value} message of round {message.round}, step "
                f"{message.step} from sender {message.sender}; each message is sent once"
            )
        self.seen.add(key)
        return True


class MpcService(pb_grpc.MpcServicer):
    """Serves Join, Deliver, Results and Leave for the BGW and BH08 baselines."""

    def __init__(self, settings: WorkerSettings, executor: Executor, store: ShareStore | None = None) -> None:
        self._settings = settings
        self._executor = executor
        self._store = store if store is not None else ShareStore(settings.share_bytes_cap)
        self._jobs: dict[str, MpcJob] = {}

    async def Join(self, request: pb.MpcJoinRequest, context: grpc.aio.ServicerContext) -> pb.MpcJoinReply:
        try:
            check_id(request.job_id)
            if not 1 <= request.degree <= MAX_DEGREE:
                raise MalformedMessage(
                    f"Join request declares sigmoid degree {request.degree}; the degree r must be "
                    f"between 1 and {MAX_DEGREE}"
                )
            spec, peers = mpc_serde.join_from_proto(request)
            _check_party(spec, peers)
            check_peers_allowed(peers, self._settings.mpc_peer_hosts)
        except (PeerNotAllowed, MalformedMessage) as exc:
            log.warning("mpc join refused", code=exc.status, reason=str(exc))
            await context.abort(status_of(exc), str(exc))
        if request.job_id in self._jobs:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"MPC job {request.job_id!r} already exists on this worker; Leave it first",
            )
        try:
            self._store.reserve_party(request.job_id, party_bytes(spec))
        except (JobExists, ShareStoreFull) as exc:
            log.warning("mpc join refused", job=request.job_id, code=exc.status, reason=str(exc))
            await context.abort(status_of(exc), str(exc))
        # From here on nothing awaits: a Join is registered whole or not at all, even if its call is cancelled.
        channels, stubs = [], {}
        try:
            party = MpcParty(spec)
            for position, address in enumerate(peers):
                if position != spec.position:
                    channel = self._channel(address)
                    channels.append(channel)
                    stubs[spec.first + position] = pb_grpc.MpcStub(channel)
        except BaseException:
            self._store.release_party(request.job_id)  # the guard reports it; the bytes must not stay reserved
            raise
        job = MpcJob(
            request.job_id,
            party,
            stubs,
            channels,
            rows_seen=np.zeros(spec.rows, dtype=bool),
            seen_from_round=spec.start_round,
        )
        self._jobs[job.job_id] = job
        for worker, stub in stubs.items():
            job.to_peer[worker] = asyncio.Queue()
            job.tasks.append(asyncio.create_task(self._send_to_peer(job, worker, stub)))
        job.tasks.append(asyncio.create_task(self._process(job)))
        log.info(
            "mpc job joined",
            job=job.job_id,
            protocol=spec.protocol,
            worker=spec.index,
            group_size=spec.group_size,
            rows=spec.rows,
            cols=spec.d,
            residues=spec.residues,
        )
        return mpc_serde.join_reply(job.job_id)

    async def Deliver(self, request: pb.MpcEnvelope, context: grpc.aio.ServicerContext) -> pb.MpcDeliverReply:
        job = await self._job(request.job_id, context)
        try:
            message = mpc_serde.envelope_from_proto(request, job.party.spec.moduli)
            job.party.check(message)
            if message.sender == message.receiver:
                raise ProtocolError(
                    f"a message from worker {message.sender} to itself arrived over the network; "
                    f"a party's own share never leaves it"
                )
        except (CorruptData, MalformedMessage, ProtocolError) as exc:
            await context.abort(status_of(exc), str(exc))
        if job.failure is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"MPC job {job.job_id!r} failed: {job.failure}")
        try:
            queued = job.admit(message)
        except (DuplicateMessage, RoundTooFarAhead) as exc:
            await context.abort(status_of(exc), str(exc))
        job.touched = time.monotonic()
        if queued:
            job.inbox.put_nowait(message)
        else:
            log.debug("late mpc message dropped", job=job.job_id, kind=message.kind.value, round=message.round)
        return mpc_serde.deliver_reply()

    async def Results(
        self, request: pb.MpcResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MpcEnvelope]:
        job = await self._job(request.job_id, context)
        if job.failure is not None:
            await context.abort(grpc.StatusCode.ABORTED, f"MPC job {job.job_id!r} failed: {job.failure}")
        if job.results_open:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"MPC job {job.job_id!r} already has an open Results stream; the master reads one "
                f"per job (cancel the other first)",
            )
        job.results_open = True
        try:
            while True:
                item = await job.to_master.get()
                if isinstance(item, JobFailed):
                    await context.abort(grpc.StatusCode.ABORTED, f"MPC job {job.job_id!r} failed: {item}")
                if isinstance(item, JobClosed):
                    await context.abort(status_of(item), str(item))
                yield item
        finally:
            job.results_open = False

    async def Leave(self, request: pb.MpcLeaveRequest, context: grpc.aio.ServicerContext) -> pb.MpcLeaveReply:
        await _check_job_id(request.job_id, context)
        job = self._jobs.pop(request.job_id, None)
        if job is None:
            return mpc_serde.leave_reply(existed=False)
        await self._close(job)
        messages, sent = job.traffic.messages, job.traffic.bytes
        kinds = [k for k in messages if k not in ("setup", "offline", "online")]
        log.info("mpc job left", job=job.job_id, messages=sum(messages[k] for k in kinds))
        return mpc_serde.leave_reply(
            True, {k: messages[k] for k in kinds}, {k: sent[k] for k in kinds}, job.compute_seconds
        )

    async def close(self) -> None:
        """Drop every job (the daemon is stopping)."""
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            await self._close(job)

    # --- plumbing --------------------------------------------------------------------------
    async def expire_idle(self) -> list[str]:
        """Drop the jobs no message has touched for job_idle_seconds (a master that died without Leave)."""
        idle, now, expired = self._settings.job_idle_seconds, time.monotonic(), []
        for job_id, job in list(self._jobs.items()):
            if now - job.touched > idle and self._jobs.pop(job_id, None) is not None:
                await self._close(job)
                expired.append(job_id)
        return expired

    async def _close(self, job: MpcJob) -> None:
        if job.results_open:  # the stream would otherwise wait for ever, holding the party
            job.to_master.put_nowait(JobClosed(f"MPC job {job.job_id!r} was left or expired on this worker"))
        for task in job.tasks:
            task.cancel()
        for task in job.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in job.channels:
            await channel.close()
        self._store.release_party(job.job_id)

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> MpcJob:
        await _check_job_id(job_id, context)
        job = self._jobs.get(job_id)
        if job is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no MPC job {shown(job_id)} on this worker; the master must Join it first"
            )
        return job

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
        """Run one party step and route what it sends; False once the job has failed (the master is told)."""
        try:
            self._route(job, await self._run(job, step, *args))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _party_refusal(exc):  # the party's own words about a message or its state: no values in them
                job.fail(f"worker {job.party.index} could not go on: {exc}")
                return False
            # The exception's text is neither logged nor sent: it could quote a share.
            what = f"{args[0].kind.value} of round {args[0].round}" if args else "the start of the protocol"
            log.error("mpc step failed", job=job.job_id, error=type(exc).__name__, site=failure_site(exc))
            job.fail(
                f"worker {job.party.index} failed processing {what}: {type(exc).__name__} at "
                f"{failure_site(exc)} (a bug or a message that breaks the protocol; see the worker's log)"
            )
        return job.failure is None

    def _route(self, job: MpcJob, messages: list[Message]) -> None:
        for message in messages:
            job.traffic.record(message)
            envelope = mpc_serde.envelope_to_proto(job.job_id, message)
            if message.receiver == MASTER:
                job.to_master.put_nowait(envelope)
            else:
                job.to_peer[message.receiver].put_nowait(envelope)

    async def _send_to_peer(self, job: MpcJob, worker: int, stub: pb_grpc.MpcAsyncStub) -> None:
        queue = job.to_peer[worker]
        while job.failure is None:
            envelope = await queue.get()
            try:
                await stub.Deliver(envelope, timeout=PEER_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                hint = ""
                if self._settings.tls and exc.code() is grpc.StatusCode.UNAVAILABLE:
                    hint = (
                        " (over TLS a worker reaches its peers with its own certificate, so that certificate "
                        "must also allow client authentication and the peers must trust --tls-client-ca)"
                    )
                job.fail(f"worker {worker} refused or did not take a message: {exc.code().name}: {exc.details()}{hint}")
                return
            except Exception as exc:
                log.error(
                    "mpc peer send failed",
                    job=job.job_id,
                    peer=worker,
                    error=type(exc).__name__,
                    site=failure_site(exc),
                )
                job.fail(f"sending to worker {worker} failed: {type(exc).__name__} at {failure_site(exc)}")
                return


def _party_refusal(exc: Exception) -> bool:
    """Whether cpml.mpc itself raised this ProtocolError or RuntimeError (its message is then safe to show)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, (ProtocolError, RuntimeError)) and bool(frames) and _MPC_PACKAGE in frames[-1].filename


async def _check_job_id(job_id: str, context: grpc.aio.ServicerContext) -> None:
    """INVALID_ARGUMENT for an empty, over-long or unprintable job id, as on every other RPC."""
    try:
        check_id(job_id)
    except MalformedMessage as exc:
        await context.abort(status_of(exc), str(exc))


class PeerNotAllowed(errors.PermissionDenied):
    """A Join names a peer outside the worker's --mpc-peer-hosts."""


# host:port with a DNS name, an IPv4 address or a bracketed IPv6 address: never unix:, dns:/// or other targets
_PEER_ADDRESS = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")


def _check_party(spec: PartySpec, peers: list[str]) -> None:
    """Refuse what the wire format allows but a worker cannot serve: sizes, indices, addresses (primes: serde)."""
    if spec.group_size > MAX_GROUP_SIZE:
        raise MalformedMessage(
            f"Join request names a group of {spec.group_size} workers (T = {spec.t}); groups "
            f"have at most {MAX_GROUP_SIZE} members"
        )
    if spec.first + spec.group_size - 1 > MAX_WORKER_INDEX:
        raise MalformedMessage(
            f"Join request puts the group at workers {spec.first}..; worker indices must stay below 2^31"
        )
    for address in peers:
        if (
            not address
            or len(address) > MAX_ADDRESS_LENGTH
            or not _PEER_ADDRESS.fullmatch(address)
            or not (0 < int(address.rpartition(":")[2]) < 65536)
        ):
            raise MalformedMessage(
                f"Join request names peer {shown(address)}; every peer must be a host:port (a host "
                f"name, an IPv4 address or a [bracketed] IPv6 address, a port from 1 to 65535) of "
                f"at most {MAX_ADDRESS_LENGTH} characters, never a unix: or other gRPC target"
            )


def check_peers_allowed(peers: list[str], allowed: tuple[str, ...]) -> None:
    """Refuse peers whose host is not in --mpc-peer-hosts (when set): a client cannot aim a worker elsewhere."""
    for address in peers:
        host = address.rpartition(":")[0].strip("[]").lower()
        if allowed and host not in allowed:
            raise PeerNotAllowed(
                f"Join request names peer {shown(address)}, whose host is not among this worker's "
                f"--mpc-peer-hosts ({', '.join(allowed)}); the worker connects only to those"
            )

"""The MPC parties a worker hosts, free of gRPC: one cpml.mpc party per job, fed by `deliver`, talking to its
peers through links (`PeerLink`) the caller provides. The servicer (cpml.worker.mpc_service) turns requests
into calls here and the errors raised here into statuses; tests link runtimes in memory.

`deliver` only checks and queues a message; one task per job starts the party on the first message, feeds it
the queue (the math runs in the compute executor) and routes what it sends: to peers through one sender task
each (so a delivery never waits on a peer that is waiting on it), to the master through `MpcJob.results`.
Whatever stops a job (a refusing peer, a message that breaks the protocol, a bug) fails it at once: the
results end with JobFailed and every later delivery is refused with JobHasFailed, both with the reason.

What a job can hold is bounded before it is created: a party (its share, products and BH08 pool, in every
residue field) is counted against the store's byte cap, and `deliver` refuses what the party would otherwise
buffer without end (a message it already has, or one for a round more than one ahead); late messages are
dropped unqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import traceback
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

import cpml.errors as errors
import cpml.mpc
from cpml.mpc import MASTER, Kind, Message, MpcParty, PartySpec, ProtocolError, Traffic
from cpml.wire.serde import MalformedMessage, check_id, shown
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import ShareStore

log = structlog.get_logger(__name__)

MAX_GROUP_SIZE = 255  # 2T+1 parties; the paper's largest runs use N = 50 workers in all
MAX_WORKER_INDEX = 2**31 - 1  # worker indices travel as sint32
MAX_ADDRESS_LENGTH = 255
# Tasks, queues and a link per peer: counted so that a flood of tiny Joins is bounded by the cap too.
PARTY_OVERHEAD_BYTES = 64 << 10
_MPC_PACKAGE = str(Path(cpml.mpc.__file__).parent)
_PHASES = ("setup", "offline", "online")  # Traffic's totals beside its kinds


class JobFailed(errors.CpmlError):
    """The job cannot continue (a peer is unreachable or a message broke the protocol)."""

    status = "ABORTED"


class JobHasFailed(errors.NotReady):
    """A message for a job that has already failed."""


class JobClosed(errors.NotFound):
    """The job was left or expired while its results were being read."""


class UnknownMpcJob(errors.NotFound):
    """No MPC job has this id on this worker."""


class ResultsAlreadyOpen(errors.NotReady):
    """A second reader of one job's results."""


class DuplicateMessage(errors.AlreadyExists):
    """A message the party already has (same kind, round, step and sender, or data rows already sent)."""


class RoundTooFarAhead(errors.CpmlError):
    """A message for a round the party cannot reach before it has answered the master."""

    status = "OUT_OF_RANGE"


class PeerNotAllowed(errors.PermissionDenied):
    """A Join names a peer outside the worker's --mpc-peer-hosts."""


class PeerRefused(errors.Unavailable):
    """A peer refused a message or could not be reached (raised by a PeerLink, with the peer's reason)."""


class PeerLink(Protocol):
    """How a party reaches one peer."""

    async def send(self, job_id: str, message: Message) -> None:
        """Hand the peer one message of the job; PeerRefused if it refuses or cannot be reached."""

    async def close(self) -> None:
        """Let go of the connection."""


def party_bytes(spec: PartySpec) -> int:
    """Bytes a party takes: its share (uint32, then float64), products, BH08 pool (all per residue), plumbing."""
    data = 12 * spec.rows * spec.d
    products = 16 * spec.group_size * spec.rows * spec.r  # pieces sent and received, two rounds in flight
    pool = 32 * spec.group_size * spec.offline_batch if spec.protocol == "bh08" else 0
    return spec.residues * (data + products + pool) + PARTY_OVERHEAD_BYTES * spec.group_size


@dataclass
class MpcJob:
    """One party and its plumbing: inbox, peer links and queues, the master's outbox, counters."""

    job_id: str
    party: MpcParty
    links: dict[int, PeerLink]
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    to_master: asyncio.Queue[Message | JobFailed | JobClosed] = field(default_factory=asyncio.Queue)
    to_peer: dict[int, asyncio.Queue[Message]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    traffic: Traffic = field(default_factory=Traffic)
    compute_seconds: float = 0.0
    failure: str | None = None
    touched: float = field(default_factory=time.monotonic)
    results_open: bool = False
    # What deliver has queued, to refuse duplicates: (kind, round, step, sender) of rounds not yet finished,
    # and the data rows.
    seen: set[tuple[Kind, int, int, int]] = field(default_factory=set)
    seen_from_round: int = 0
    rows_seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def spec(self) -> PartySpec:
        """The party's spec (its residue fields decode what is delivered to it)."""
        return self.party.spec

    def deliver(self, message: Message) -> None:
        """Check a message and queue it for the party (a late one is dropped); refusals raise their CpmlError."""
        self.party.check(message)
        if message.sender == message.receiver:
            raise ProtocolError(
                f"a message from worker {message.sender} to itself arrived over the network; "
                f"a party's own share never leaves it"
            )
        if self.failure is not None:
            raise JobHasFailed(f"MPC job {self.job_id!r} failed: {self.failure}")
        queued = self._admit(message)
        self.touched = time.monotonic()
        if queued:
            self.inbox.put_nowait(message)
        else:
            log.debug("late mpc message dropped", job=self.job_id, kind=message.kind.value, round=message.round)

    async def results(self) -> AsyncGenerator[Message, None]:
        """What the party sends the master, until the job fails (JobFailed) or is closed (JobClosed)."""
        if self.failure is not None:
            raise JobFailed(f"MPC job {self.job_id!r} failed: {self.failure}")
        if self.results_open:
            raise ResultsAlreadyOpen(
                f"MPC job {self.job_id!r} already has an open Results stream; the master reads one "
                f"per job (cancel the other first)"
            )
        self.results_open = True
        try:
            while True:
                item = await self.to_master.get()
                if isinstance(item, (JobFailed, JobClosed)):
                    raise item
                yield item
        finally:
            self.results_open = False

    def sent_by_kind(self) -> tuple[dict[str, int], dict[str, int]]:
        """Messages and payload bytes the party sent, by kind."""
        messages, sent = self.traffic.messages, self.traffic.bytes
        kinds = [k for k in messages if k not in _PHASES]
        return {k: messages[k] for k in kinds}, {k: sent[k] for k in kinds}

    def fail(self, reason: str) -> None:
        """Stop the job and tell the master through its results."""
        if self.failure is None:
            self.failure = reason
            log.warning("mpc job failed", job=self.job_id, reason=reason)
            self.to_master.put_nowait(JobFailed(f"MPC job {self.job_id!r} failed: {reason}"))

    def _admit(self, message: Message) -> bool:
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


class MpcRuntime:
    """The MPC jobs of one worker: join, find, leave and expire them; their bytes count in the ShareStore."""

    def __init__(
        self, settings: WorkerSettings, executor: Executor, store: ShareStore, connect: Callable[[str], PeerLink]
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._store = store
        self._connect = connect
        self._jobs: dict[str, MpcJob] = {}

    def join(self, job_id: str, spec: PartySpec, peers: list[str]) -> MpcJob:
        """Create the job's party and a link to each peer; refusals raise their CpmlError and leave nothing."""
        check_id(job_id)
        _check_party(spec, peers)
        check_peers_allowed(peers, self._settings.mpc_peer_hosts)
        self._store.reserve_party(job_id, party_bytes(spec))  # also refuses an id already joined
        # Nothing here awaits: a job is registered whole or not at all, even if the caller is cancelled.
        links = {}
        try:
            party = MpcParty(spec)
            for position, address in enumerate(peers):
                if position != spec.position:
                    links[spec.first + position] = self._connect(address)
        except BaseException:
            self._store.release_party(job_id)  # the caller reports it; the bytes must not stay reserved
            raise
        job = MpcJob(job_id, party, links, rows_seen=np.zeros(spec.rows, dtype=bool), seen_from_round=spec.start_round)
        self._jobs[job_id] = job
        for worker in links:
            job.to_peer[worker] = asyncio.Queue()
            job.tasks.append(asyncio.create_task(self._send_to_peer(job, worker)))
        job.tasks.append(asyncio.create_task(self._process(job)))
        log.info(
            "mpc job joined",
            job=job_id,
            protocol=spec.protocol,
            worker=spec.index,
            group_size=spec.group_size,
            rows=spec.rows,
            cols=spec.d,
            residues=spec.residues,
        )
        return job

    def job(self, job_id: str) -> MpcJob:
        """The joined job with this id; UnknownMpcJob if there is none."""
        job = self._jobs.get(check_id(job_id))
        if job is None:
            raise UnknownMpcJob(f"no MPC job {shown(job_id)} on this worker; the master must Join it first")
        return job

    async def leave(self, job_id: str) -> MpcJob | None:
        """Drop the job and free what it held; the job (for its counters), or None if there was none."""
        job = self._jobs.pop(check_id(job_id), None)
        if job is not None:
            await self._close(job)
            log.info("mpc job left", job=job_id, messages=sum(job.sent_by_kind()[0].values()))
        return job

    async def expire_idle(self) -> list[str]:
        """Drop the jobs no message has touched for job_idle_seconds (a master that died without Leave)."""
        idle, now, expired = self._settings.job_idle_seconds, time.monotonic(), []
        for job_id, job in list(self._jobs.items()):
            if now - job.touched > idle and self._jobs.pop(job_id, None) is not None:
                await self._close(job)
                expired.append(job_id)
        return expired

    async def close(self) -> None:
        """Drop every job (the daemon is stopping)."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        for job in jobs:
            await self._close(job)

    async def _close(self, job: MpcJob) -> None:
        if job.results_open:  # the reader would otherwise wait for ever, holding the party
            job.to_master.put_nowait(JobClosed(f"MPC job {job.job_id!r} was left or expired on this worker"))
        for task in job.tasks:
            task.cancel()
        for task in job.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in job.links.values():
            await link.close()
        self._store.release_party(job.job_id)

    async def _run(self, job: MpcJob, step: Callable[..., list[Message]], *args: Message) -> list[Message]:
        def timed() -> tuple[list[Message], float]:
            started = time.thread_time()
            out = step(*args)
            return out, time.thread_time() - started

        out, seconds = await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        job.compute_seconds += seconds
        return out

    async def _process(self, job: MpcJob) -> None:
        # The party starts on its first message, not in join: a message only comes once the master has had
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
            log.error("mpc step failed", job=job.job_id, error=type(exc).__name__, site=errors.failure_site(exc))
            job.fail(
                f"worker {job.party.index} failed processing {what}: {type(exc).__name__} at "
                f"{errors.failure_site(exc)} (a bug or a message that breaks the protocol; see the worker's log)"
            )
        return job.failure is None

    def _route(self, job: MpcJob, messages: list[Message]) -> None:
        for message in messages:
            job.traffic.record(message)
            if message.receiver == MASTER:
                job.to_master.put_nowait(message)
            else:
                job.to_peer[message.receiver].put_nowait(message)

    async def _send_to_peer(self, job: MpcJob, worker: int) -> None:
        queue, link = job.to_peer[worker], job.links[worker]
        while job.failure is None:
            message = await queue.get()
            try:
                await link.send(job.job_id, message)
            except asyncio.CancelledError:
                raise
            except PeerRefused as exc:
                job.fail(f"worker {worker} refused or did not take a message: {exc}")
                return
            except Exception as exc:
                log.error(
                    "mpc peer send failed",
                    job=job.job_id,
                    peer=worker,
                    error=type(exc).__name__,
                    site=errors.failure_site(exc),
                )
                job.fail(f"sending to worker {worker} failed: {type(exc).__name__} at {errors.failure_site(exc)}")
                return


def _party_refusal(exc: Exception) -> bool:
    """Whether cpml.mpc itself raised this ProtocolError or RuntimeError (its message is then safe to show)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, (ProtocolError, RuntimeError)) and bool(frames) and _MPC_PACKAGE in frames[-1].filename


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

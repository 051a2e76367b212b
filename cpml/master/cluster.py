"""The master's view of its workers: channels, health, concurrent streamed share upload, job teardown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

import cpml.errors as errors
from cpml.master.settings import Timeouts
from cpml.protocol import ShareChunk
from cpml.wire import names, serde
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    pass

log = structlog.get_logger(__name__)

_DIAGNOSE_AFTER = 1.5  # seconds without an answer before the master runs the handshake itself
_CHUNKS_IN_FLIGHT = 2  # per worker: bounds the master's memory to N x 2 chunks during upload
# UploadShare takes chunks that serde.share_chunks_to_wire has already serialized


class ClusterError(errors.CpmlError):
    """The cluster cannot do what the job needs."""


class WorkersUnreachable(ClusterError, errors.Unavailable):
    """Some workers never became healthy."""


class WorkersUnsuitable(ClusterError, errors.Exhausted):
    """Some workers cannot take this job (modulus, message size or free share bytes)."""


class NotEnoughWorkers(ClusterError, errors.Unavailable):
    """Fewer live workers than the recovery threshold R."""

    exit_code = errors.ExitCode.NOT_ENOUGH_WORKERS


@dataclass
class WorkerHandle:
    """One worker: its index among the N evaluation points, its address and its channel."""

    index: int
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.WorkerAsyncStub
    alive: bool = True
    failure: str = ""
    rejoinable: bool = False  # dropped for something that may pass (unreachable, stream lost), not misbehaviour

    def upload_share(self) -> grpc.aio.StreamUnaryMultiCallable:
        """UploadShare taking pre-serialized ShareChunk bytes (see serde.share_chunks_to_wire)."""
        return self.channel.stream_unary(
            names.method_path(names.WORKER_SERVICE, "UploadShare"),
            request_serializer=None,
            response_deserializer=serde.upload_reply_from_wire,
        )

    def fail(self, reason: str, rejoinable: bool = True) -> None:
        """Mark the worker dead; only a rejoinable one is ever contacted again in this run (see cpml.master.rejoin)."""
        if self.alive:
            self.alive = False
            self.failure = reason
            self.rejoinable = rejoinable
            log.warning("worker dropped", worker=self.index, address=self.address, reason=reason)

    def revive(self) -> None:
        """Count the worker in again: it holds its share and has a new compute stream."""
        self.alive, self.failure, self.rejoinable = True, "", False
        log.info("worker rejoined", worker=self.index, address=self.address)


@dataclass
class UploadStats:
    """What distributing the shares cost."""

    seconds: float = 0.0
    encode_seconds: float = 0.0
    bytes_sent: int = 0
    chunks: int = 0
    per_worker_bytes: dict[int, int] = field(default_factory=dict)
    stored: set[int] = field(default_factory=set)  # workers whose upload completed
    failed: set[int] = field(default_factory=set)  # workers whose upload was refused or broke


def _describe(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


class Cluster:
    """Channels to N workers in index order; open with `async with`."""

    def __init__(
        self,
        addresses: Sequence[str],
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        timeouts: Timeouts = Timeouts(),
        max_message_bytes: int = 8 << 20,
        diagnose: Callable[[str], str | None] | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("Argument 'addresses' must name at least one worker, not [].")
        self.addresses = tuple(addresses)
        self.timeouts = timeouts
        self._credentials = credentials
        self._diagnose = diagnose  # address -> the TLS mistake that keeps it silent, if any
        self._options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        if server_name:
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self.workers: list[WorkerHandle] = []

    async def __aenter__(self) -> Self:
        for index, address in enumerate(self.addresses):
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            else:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            self.workers.append(WorkerHandle(index, address, channel, pb_grpc.WorkerStub(channel)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(w.channel.close(grace=None) for w in self.workers), return_exceptions=True)

    @property
    def alive(self) -> list[WorkerHandle]:
        """Workers not dropped so far."""
        return [w for w in self.workers if w.alive]

    async def wait_healthy(self, needed: int | None = None) -> None:
        """Wait (up to timeouts.connect) for every worker's health service; drop the silent ones if `needed` remain."""
        # With `needed` None every worker must answer (the MPC baselines need their groups whole).
        deadline = time.monotonic() + self.timeouts.connect
        results = await asyncio.gather(*(self._wait_one(w, deadline) for w in self.workers))
        missing = [(w, reason) for w, reason in zip(self.workers, results, strict=True) if reason]
        described = "; ".join(f"{w.address} ({reason})" for w, reason in missing)
        if missing and (needed is None or len(self.workers) - len(missing) < needed):
            wanted = "" if needed is None else f" ({len(self.workers) - len(missing)} answered, R = {needed} needed)"
            raise WorkersUnreachable(
                f"{len(missing)} of {len(self.workers)} workers were not healthy within {self.timeouts.connect:g}s"
                f"{wanted}: {described}. Check the addresses, that cpml-worker runs there, and the TLS settings"
            )
        for worker, reason in missing:
            worker.fail(f"not healthy within {self.timeouts.connect:g}s: {reason}")
        log.info("workers healthy", workers=len(self.alive), dropped=len(missing))

    async def _wait_one(self, worker: WorkerHandle, deadline: float) -> str:
        """'' once the worker is healthy, else why not; a TLS mistake is named within seconds, not at the deadline."""
        health = asyncio.create_task(self._health_loop(worker, deadline))
        try:
            done, _ = await asyncio.wait({health}, timeout=_DIAGNOSE_AFTER)
            if done or self._diagnose is None:
                return await health
            cause = await asyncio.to_thread(self._diagnose, worker.address)
            if cause is not None and not health.done():
                return cause
            return await health
        finally:
            health.cancel()

    async def _health_loop(self, worker: WorkerHandle, deadline: float) -> str:
        health = health_pb2_grpc.HealthStub(worker.channel)
        reason = "no answer"
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=names.WORKER_SERVICE),
                    timeout=min(left, self.timeouts.control),
                    wait_for_ready=True,
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return ""
                reason = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as exc:
                reason = _describe(exc)
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return reason
            await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return reason

    async def upload(
        self,
        job_id: str,
        spec: serde.WireJobSpec,
        chunks: Iterator[ShareChunk],
        max_chunk_bytes: int = serde.DEFAULT_CHUNK_BYTES,
        workers: Sequence[WorkerHandle] | None = None,
    ) -> UploadStats:
        """Stream every live worker (or these) its share while the chunks are encoded; drop workers that fail."""
        stats = UploadStats()
        started = time.perf_counter()
        targets = list(self.alive if workers is None else workers)
        queues = {w.index: asyncio.Queue[tuple[bytes, int] | None](_CHUNKS_IN_FLIGHT) for w in targets}
        async with asyncio.TaskGroup() as group:
            for worker in targets:
                group.create_task(self._upload_one(worker, job_id, queues[worker.index], stats))
            group.create_task(self._produce(job_id, spec, chunks, queues, stats, max_chunk_bytes))
        stats.seconds = time.perf_counter() - started
        log.info(
            "shares distributed",
            job=job_id,
            workers=len(stats.stored),
            bytes=stats.bytes_sent,
            seconds=round(stats.seconds, 3),
            encode_seconds=round(stats.encode_seconds, 3),
        )
        return stats

    async def _produce(
        self,
        job_id: str,
        spec: serde.WireJobSpec,
        chunks: Iterator[ShareChunk],
        queues: dict[int, asyncio.Queue[tuple[bytes, int] | None]],
        stats: UploadStats,
        max_chunk_bytes: int,
    ) -> None:
        first = True
        finished = False
        try:
            while True:
                began = time.perf_counter()
                # encoding is CPU work: keep it off the event loop so the uploads keep flowing
                chunk = await asyncio.to_thread(next, chunks, None)
                stats.encode_seconds += time.perf_counter() - began
                if chunk is None:
                    break
                for worker in self.workers:
                    if worker.index not in queues:
                        continue
                    for msg in serde.share_chunks_to_wire(
                        job_id,
                        chunk.row_offset,
                        chunk.shares[worker.index],
                        spec if first else None,
                        max_chunk_bytes,
                        chunk.residue,
                    ):
                        if worker.index in stats.failed:
                            break  # a refused uploader drained its queue: never wait on it
                        await queues[worker.index].put(msg)
                first = False
            finished = True
        finally:
            for index, queue in queues.items():
                if finished and index not in stats.failed:
                    await queue.put(None)  # end of share: every live uploader must see it
                else:  # encoding failed, or the uploader is gone: never block on it
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(None)

    async def _upload_one(
        self, worker: WorkerHandle, job_id: str, queue: asyncio.Queue[tuple[bytes, int] | None], stats: UploadStats
    ) -> None:
        async def requests() -> AsyncIterator[bytes]:
            while (item := await queue.get()) is not None:
                msg, size = item
                stats.bytes_sent += size
                stats.chunks += 1
                stats.per_worker_bytes[worker.index] = stats.per_worker_bytes.get(worker.index, 0) + size
                yield msg

        try:
            await worker.upload_share()(requests(), timeout=self.timeouts.upload)
            stats.stored.add(worker.index)
        except grpc.aio.AioRpcError as exc:
            stats.failed.add(worker.index)
            worker.fail(f"share upload failed: {_describe(exc)}")
            # Free the producer if it waits for room in this queue; it checks `failed` before every put. (Waiting
            # here for the end-of-share marker could hang: gRPC's request reader may be the one to take it.)
            while not queue.empty():
                queue.get_nowait()

    async def end_job(self, job_id: str, workers: Sequence[WorkerHandle] | None = None) -> None:
        """Ask every worker (or these) to forget the job (best effort): a dropped one may still hold its share."""

        async def end(worker: WorkerHandle) -> None:
            # a dropped worker is often gone for good: give it a short deadline, and do not warn about it
            timeout = self.timeouts.control if worker.alive else min(2.0, self.timeouts.control)
            try:
                await worker.stub.EndJob(serde.end_job_request(job_id), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                (log.warning if worker.alive else log.debug)(
                    "end job failed", worker=worker.index, reason=_describe(exc)
                )

        await asyncio.gather(*(end(w) for w in (self.workers if workers is None else workers)))

    async def check_capacity(
        self, modulus: int, share_bytes: int, chunk_bytes: int, needed: int | None = None, round_bytes: int = 0
    ) -> None:
        """Ask every live worker's Status; drop those that cannot take the job while `needed` remain, else refuse."""
        statuses = await self.status()
        problems: dict[int, str] = {}
        for worker in self.alive:
            status = statuses.get(worker.index)
            if status is None:
                problems[worker.index] = "its status call failed"
                continue
            reasons = []
            if modulus >= status.max_modulus:
                reasons.append(f"computes over primes below {status.max_modulus}, not p = {modulus}")
            if chunk_bytes + 1024 > status.max_message_bytes:
                reasons.append(
                    f"accepts messages up to {status.max_message_bytes} bytes; lower --chunk-bytes "
                    f"below {status.max_message_bytes - 1024}"
                )
            if round_bytes + 1024 > status.max_message_bytes:
                reasons.append(
                    f"accepts messages up to {status.max_message_bytes} bytes, but this job's rounds carry "
                    f"{round_bytes}-byte values (the exact sigmoid sends and returns one value per share row); "
                    f"raise its --max-message-bytes, add workers (smaller shares) or use --sigmoid polynomial"
                )
            if share_bytes > status.share_bytes_cap:
                reasons.append(
                    f"holds at most {status.share_bytes_cap} bytes of shares, less than this "
                    f"{share_bytes}-byte share; use more workers (smaller shares) or raise its "
                    f"--share-bytes-cap"
                )
            elif share_bytes > status.share_bytes_cap - status.share_bytes_used:
                # room that other jobs hold now: the upload is tried, and retried while they end
                log.info(
                    "worker busy",
                    worker=worker.index,
                    free=status.share_bytes_cap - status.share_bytes_used,
                    needed=share_bytes,
                )
            if reasons:
                problems[worker.index] = "; ".join(reasons)
        described = "; ".join(f"worker {i} at {self.workers[i].address} {why}" for i, why in problems.items())
        if problems and (needed is None or len(self.alive) - len(problems) < needed):
            raise WorkersUnsuitable(
                described
                + (
                    ""
                    if needed is None
                    else f" ({len(self.alive) - len(problems)} can take the job, R = {needed} needed)"
                )
            )
        for index, why in problems.items():
            self.workers[index].fail(f"cannot take the job: {why}")

    async def status(self) -> dict[int, serde.WorkerStatus]:
        """Each live worker's status (a worker whose call fails is left out)."""
        replies = await asyncio.gather(
            *(w.stub.Status(serde.status_request(), timeout=self.timeouts.control) for w in self.alive),
            return_exceptions=True,
        )
        out = {}
        for worker, reply in zip(self.alive, replies, strict=True):
            if isinstance(reply, grpc.aio.AioRpcError):
                log.warning("status call failed", worker=worker.index, reason=_describe(reply))
            elif isinstance(reply, BaseException):
                raise reply
            else:
                out[worker.index] = serde.status_from_proto(reply)
        return out

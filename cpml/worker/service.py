"""The Worker gRPC servicer: decode with serde, call the store or the protocol, encode, map errors to codes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np
import structlog
from grpc_health.v1 import health, health_pb2

import cpml
import cpml.errors as errors
from cpml.field import ResidueBasis, basis_for
from cpml.field.prime_field import MAX_PRIME_BITS
from cpml.protocol import prepare_share, worker_compute
from cpml.wire import names, serde
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc
from cpml.wire.guard import status_of
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import (
    Job,
    ShareStore,
    UnknownJob,
    Upload,
)

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    from cpml.wire.generated.v1 import worker_pb2 as pb

log = structlog.get_logger(__name__)

_Request = TypeVar("_Request")


class RoundOutOfOrder(errors.NotReady):
    """A compute stream sent a round number not above the previous one."""


class UnsupportedModulus(serde.MalformedMessage):
    """The job's modulus is not a prime this worker can compute with."""


class StreamIdle(errors.TimedOut):
    """A stream sent nothing for --job-idle-seconds."""


REFUSALS = errors.CpmlError  # every refusal carries its status (cpml.errors); anything else is a bug


class _LatestRound:
    """The newest round request not yet computed: a straggler skips rounds the master has moved past."""

    def __init__(self) -> None:
        self._pending: tuple[Job, int, np.ndarray] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self.skipped = 0

    def put(self, item: tuple[Job, int, np.ndarray]) -> None:
        self.skipped += self._pending is not None
        self._pending = item
        self._changed.set()

    def finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = self._error or error  # the first error stands
        self._changed.set()

    async def next(self) -> tuple[Job, int, np.ndarray] | None:
        """The newest pending request; None once the stream ended; raises the reader's error."""
        while True:
            if self._error is not None:
                raise self._error
            if self._pending is not None:
                item, self._pending = self._pending, None
                return item
            if self._done:
                return None
            self._changed.clear()
            await self._changed.wait()


class WorkerService(pb_grpc.WorkerServicer):
    """Serves share uploads, compute streams, job teardown and status from one ShareStore."""

    def __init__(self, store: ShareStore, settings: WorkerSettings, executor: Executor,
                 health_servicer: health.aio.HealthServicer | None = None) -> None:
        self._store = store
        self._settings = settings
        self._executor = executor
        self._health = health_servicer

    async def UploadShare(self, request_iterator: AsyncIterator[pb.ShareChunk],
                          context: grpc.aio.ServicerContext) -> pb.UploadReply:
        upload: Upload | None = None
        try:
            async for msg in self._within_idle_time(request_iterator, "share upload"):
                if upload is None:
                    upload = self._begin_upload(msg)
                elif msg.job_id != upload.job_id:
                    raise serde.MalformedMessage(
                        f"share chunk names job {serde.shown(msg.job_id)} inside the upload of job "
                        f"{upload.job_id!r}; upload each job's share on its own stream")
                upload.add(serde.share_chunk_from_proto(msg, upload.spec))
            if upload is None:
                raise serde.MalformedMessage("the share upload stream was empty; send at least one chunk "
                                             "with the job spec")
            job = upload.commit()
        except REFUSALS as exc:
            if upload is not None:
                upload.abort()  # before the status goes out: a client may retry at once
            log.warning("upload refused", job=upload.job_id if upload else None, code=status_of(exc).name,
                        reason=str(exc))
            await context.abort(status_of(exc), str(exc))
        finally:
            if upload is not None:
                upload.abort()  # a no-op once committed or refused; frees a cancelled upload
        log.info("share stored", job=job.job_id, rows=job.spec.rows, cols=job.spec.cols,
                 bytes=job.spec.share_bytes, used_bytes=self._store.used_bytes)
        return serde.upload_reply(job.job_id, job.spec.share_bytes)

    async def _within_idle_time(self, requests: AsyncIterator[_Request], what: str) -> AsyncIterator[_Request]:
        """The stream's messages; StreamIdle once none came for --job-idle-seconds (a stalled client)."""
        idle = self._settings.job_idle_seconds
        stream = aiter(requests)
        while True:
            try:
                async with asyncio.timeout(idle):
                    msg = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamIdle(f"the {what} stream sent nothing for {idle:g} s (--job-idle-seconds), so the "
                                 f"worker closed it and freed what it held; send the messages again") from None
            yield msg

    def _begin_upload(self, first: pb.ShareChunk) -> Upload:
        serde.check_id(first.job_id)
        if not first.HasField("spec"):
            raise serde.MalformedMessage(
                f"the first chunk of the upload of job {first.job_id!r} carries no job spec; "
                f"the spec (residue moduli, degree, share shape, coefficients) must come first")
        spec = serde.job_spec_from_proto(first.spec)
        try:
            ResidueBasis(spec.moduli)
        except ValueError as exc:
            raise UnsupportedModulus(
                f"moduli {', '.join(map(str, spec.moduli))} are not supported: {exc} This worker computes over "
                f"distinct primes below 2^{MAX_PRIME_BITS}") from None
        return self._store.begin_upload(first.job_id, spec)

    async def Compute(self, request_iterator: AsyncIterator[pb.RoundRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RoundResult]:
        rounds = _LatestRound()
        reader = asyncio.create_task(self._read_rounds(request_iterator, rounds))
        served = 0
        job_id = None
        loop = asyncio.get_running_loop()
        try:
            while (item := await rounds.next()) is not None:
                job, round_number, weights = item
                job_id = job.job_id
                basis = basis_for(job.spec.moduli)
                started = time.perf_counter()
                prepared = await self._prepared(job)
                result = await loop.run_in_executor(self._executor, worker_compute, basis, prepared, weights,
                                                    job.spec.coefficients)
                del prepared  # an ended job's float64 share is freed even while this stream waits
                if self._settings.fault_wrong_results and round_number % self._settings.fault_wrong_every == 0:
                    result = _falsified(result, basis, round_number, self._settings)
                seconds = time.perf_counter() - started
                if self._settings.fault_reply_delay:
                    await asyncio.sleep(self._settings.fault_reply_delay)
                log.debug("round computed", job=job.job_id, round=round_number, seconds=round(seconds, 6))
                yield serde.round_result_to_proto(job.job_id, round_number, result, seconds)
                served += 1
                if 0 < self._settings.fault_fail_after_rounds <= served:
                    log.warning("fault injection: failing compute stream", job=job.job_id, rounds=served)
                    await _stop(reader)  # a reader still inside the request stream can turn the abort INTERNAL
                    if self._health is not None:  # broken for good: a master must not take it back
                        for name in ("", names.WORKER_SERVICE):
                            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
                    # End the stream with its status rather than abort: a client writing its next round at this
                    # moment then still reads UNAVAILABLE, not gRPC core's "INTERNAL: Internal error from Core".
                    context.set_code(grpc.StatusCode.UNAVAILABLE)
                    context.set_details(f"fault injection: --fault-fail-after-rounds "
                                        f"{self._settings.fault_fail_after_rounds} reached")
                    return
        except REFUSALS as exc:
            log.warning("compute refused", code=status_of(exc).name, reason=str(exc))
            await _stop(reader)
            await context.abort(status_of(exc), str(exc))
        finally:
            reader.cancel()
            log.info("compute stream closed", job=job_id, rounds=served, stale_rounds_skipped=rounds.skipped)

    async def _prepared(self, job: Job) -> np.ndarray:
        """The job's share as centred float64: converted once per job, however many streams compute on it."""
        if job.prepared is None or job.prepared.cancelled():
            job.prepared = asyncio.get_running_loop().run_in_executor(
                self._executor, prepare_share, basis_for(job.spec.moduli), job.share)
        return await asyncio.shield(job.prepared)  # one stream's cancellation must not cancel it for the others

    async def _read_rounds(self, request_iterator: AsyncIterator[pb.RoundRequest], rounds: _LatestRound) -> None:
        job: Job | None = None
        last_round = -1

        def ended() -> None:
            assert job is not None  # only registered once the job is known
            rounds.finish(UnknownJob(f"job {job.job_id!r} was ended or expired while its compute stream was open; "
                                     f"upload its share again"))

        try:
            async for msg in self._within_idle_time(request_iterator, "compute"):
                if job is None:
                    job = self._store.get(serde.check_id(msg.job_id))
                    job.watch(ended)
                elif msg.job_id != job.job_id:
                    raise serde.MalformedMessage(
                        f"round request names job {serde.shown(msg.job_id)} on the compute stream of job "
                        f"{job.job_id!r}; open one stream per job")
                if msg.round <= last_round:
                    raise RoundOutOfOrder(
                        f"round {msg.round} of job {job.job_id!r} arrived after round {last_round}; rounds on a "
                        f"stream must strictly increase (open a new stream to start over)")
                weights = serde.round_request_from_proto(msg, job.spec)
                last_round = msg.round
                job.touch()
                rounds.put((job, msg.round, weights))
            rounds.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            rounds.finish(exc)
        finally:
            if job is not None:
                job.unwatch(ended)

    async def EndJob(self, request: pb.EndJobRequest, context: grpc.aio.ServicerContext) -> pb.EndJobReply:
        try:
            serde.check_id(request.job_id)
        except serde.MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        freed = self._store.remove(request.job_id)
        log.info("job ended", job=request.job_id, existed=freed > 0, freed_bytes=freed)
        return serde.end_job_reply(freed)

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusReply:
        return serde.status_to_proto(serde.WorkerStatus(
            version=cpml.__version__, max_modulus=2**MAX_PRIME_BITS, share_bytes_cap=self._store.cap_bytes,
            share_bytes_used=self._store.used_bytes, jobs=len(self._store),
            max_message_bytes=self._settings.max_message_bytes))


    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsReply:
        now = time.monotonic()
        return serde.jobs_to_proto([
            serde.JobSummary(job_id=job.job_id, residues=job.spec.residues, rows=job.spec.rows, cols=job.spec.cols,
                             bytes=self._store.reserved_bytes(job.job_id), idle_seconds=now - job.last_used,
                             compute_streams=job.streams)
            for job in self._store.jobs()])


def _falsified(result: np.ndarray, basis: ResidueBasis, round_number: int, settings: WorkerSettings) -> np.ndarray:
    """Fault injection (tests only): the same entries of every residue made wrong, by +1 or at random."""
    rng = np.random.default_rng(round_number)
    cols = result.shape[1]
    chosen = rng.choice(cols, size=max(1, int(settings.fault_wrong_fraction * cols)), replace=False)
    out = result.copy()
    for j, p in enumerate(basis.moduli):
        if settings.fault_wrong_results == "offset":
            out[j, chosen] = (out[j, chosen].astype(np.uint64) + 1) % p
        else:
            out[j, chosen] = rng.integers(0, p, size=chosen.size, dtype=np.uint32)
    return out


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait until it has finished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

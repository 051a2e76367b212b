"""The Worker gRPC servicer: decode with serde, call the store or the compute scheduler (cpml.worker.compute),
encode, map errors to codes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2

import cpml
import cpml.errors as errors
from cpml.field import ResidueBasis
from cpml.field.prime_field import MAX_PRIME_BITS
from cpml.wire import names, serde
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc
from cpml.wire.guard import status_of
from cpml.worker.compute import ComputeStream, RoundInput, RoundOutput, StreamIdle, prepare_soon, within_idle_time
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import (
    ShareStore,
    Upload,
)

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    from cpml.wire.generated.v1 import worker_pb2 as pb

log = structlog.get_logger(__name__)

_Request = TypeVar("_Request")


async def _drain(requests: AsyncIterator[_Request], seconds: float) -> None:
    """Read and drop what a client still streams (for up to `seconds`), so that a refusal reaches it intact."""
    # A grpc.aio client that writes into a stream the server has already ended reports "INTERNAL: Internal
    # error from Core" instead of the server's status (grpc/grpc#36066): let it finish writing first.
    with contextlib.suppress(TimeoutError, grpc.RpcError):
        async with asyncio.timeout(seconds):
            async for _ in requests:
                pass


class UnsupportedModulus(serde.MalformedMessage):
    """The job's modulus is not a prime this worker can compute with."""


REFUSALS = errors.CpmlError  # every refusal carries its status (cpml.errors); anything else is a bug
DRAIN_SECONDS = 5.0  # how long a refused upload's remaining chunks are read so that the refusal reaches the client


class WorkerService(pb_grpc.WorkerServicer):
    """Serves share uploads, compute streams, job teardown and status from one ShareStore."""

    def __init__(
        self,
        store: ShareStore,
        settings: WorkerSettings,
        executor: Executor,
        health_servicer: health.aio.HealthServicer | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._executor = executor
        self._health = health_servicer

    async def UploadShare(
        self, request_iterator: AsyncIterator[pb.ShareChunk], context: grpc.aio.ServicerContext
    ) -> pb.UploadReply:
        upload: Upload | None = None
        try:
            async for msg in within_idle_time(request_iterator, self._settings.job_idle_seconds, "share upload"):
                if upload is None:
                    upload = self._begin_upload(msg)
                elif msg.job_id != upload.job_id:
                    raise serde.MalformedMessage(
                        f"share chunk names job {serde.shown(msg.job_id)} inside the upload of job "
                        f"{upload.job_id!r}; upload each job's share on its own stream"
                    )
                upload.add(serde.share_chunk_from_proto(msg, upload.spec))
            if upload is None:
                raise serde.MalformedMessage(
                    "the share upload stream was empty; send at least one chunk with the job spec"
                )
            job = upload.commit()
        except REFUSALS as exc:
            if upload is not None:
                upload.abort()  # before the status goes out: a client may retry at once
            log.warning(
                "upload refused", job=upload.job_id if upload else None, code=status_of(exc).name, reason=str(exc)
            )
            if not isinstance(exc, StreamIdle):
                await _drain(request_iterator, DRAIN_SECONDS)
            await context.abort(status_of(exc), str(exc))
        finally:
            if upload is not None:
                upload.abort()  # a no-op once committed or refused; frees a cancelled upload
        prepare_soon(job, self._executor)
        log.info(
            "share stored",
            job=job.job_id,
            rows=job.spec.rows,
            cols=job.spec.cols,
            bytes=job.spec.share_bytes,
            used_bytes=self._store.used_bytes,
        )
        return serde.upload_reply(job.job_id, job.spec.share_bytes)

    def _begin_upload(self, first: pb.ShareChunk) -> Upload:
        serde.check_id(first.job_id)
        if not first.HasField("spec"):
            raise serde.MalformedMessage(
                f"the first chunk of the upload of job {first.job_id!r} carries no job spec; "
                f"the spec (residue moduli, degree, share shape, coefficients) must come first"
            )
        spec = serde.job_spec_from_proto(first.spec)
        try:
            ResidueBasis(spec.moduli)
        except ValueError as exc:
            raise UnsupportedModulus(
                f"moduli {', '.join(map(str, spec.moduli))} are not supported: {exc} This worker computes over "
                f"distinct primes below 2^{MAX_PRIME_BITS}"
            ) from None
        return self._store.begin_upload(first.job_id, spec)

    async def Compute(
        self, request_iterator: AsyncIterator[pb.RoundRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RoundResult]:
        stream = ComputeStream(self._store, self._executor, self._settings)
        requests = (
            RoundInput(msg.job_id, msg.round, functools.partial(serde.round_request_from_proto, msg), msg.stage)
            async for msg in request_iterator
        )
        outputs = stream.results(requests)
        served = 0
        try:
            async for out in outputs:
                yield serde.round_result_to_proto(out.job_id, out.round, out.result, out.seconds, out.stage)
                served += out.ends_round
                if 0 < self._settings.fault_fail_after_rounds <= served:
                    await self._fail_for_good(outputs, context, out.job_id, served)
                    return
        except REFUSALS as exc:
            await outputs.aclose()  # the reader stops first: one still inside the request stream turns aborts INTERNAL
            log.warning("compute refused", code=status_of(exc).name, reason=str(exc))
            await context.abort(status_of(exc), str(exc))
        finally:
            await outputs.aclose()
            log.info(
                "compute stream closed", job=stream.job_id, rounds=served, stale_rounds_skipped=stream.rounds.skipped
            )

    async def _fail_for_good(
        self, outputs: AsyncGenerator[RoundOutput, None], context: grpc.aio.ServicerContext, job_id: str, served: int
    ) -> None:
        """Fault injection (--fault-fail-after-rounds): end the stream UNAVAILABLE and report NOT_SERVING."""
        log.warning("fault injection: failing compute stream", job=job_id, rounds=served)
        await outputs.aclose()
        if self._health is not None:  # broken for good: a master must not take it back
            for name in ("", names.WORKER_SERVICE):
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # End the stream with its status rather than abort: a client writing its next round at this moment
        # then still reads UNAVAILABLE, not gRPC core's "INTERNAL: Internal error from Core".
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details(
            f"fault injection: --fault-fail-after-rounds {self._settings.fault_fail_after_rounds} reached"
        )

    async def EndJob(self, request: pb.EndJobRequest, context: grpc.aio.ServicerContext) -> pb.EndJobReply:
        try:
            serde.check_id(request.job_id)
        except serde.MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        freed = self._store.remove(request.job_id)
        log.info("job ended", job=request.job_id, existed=freed > 0, freed_bytes=freed)
        return serde.end_job_reply(freed)

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusReply:
        return serde.status_to_proto(
            serde.WorkerStatus(
                version=cpml.__version__,
                max_modulus=2**MAX_PRIME_BITS,
                share_bytes_cap=self._store.cap_bytes,
                share_bytes_used=self._store.used_bytes,
                jobs=len(self._store),
                max_message_bytes=self._settings.max_message_bytes,
            )
        )

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsReply:
        now = time.monotonic()
        return serde.jobs_to_proto(
            [
                serde.JobSummary(
                    job_id=job.job_id,
                    residues=job.spec.residues,
                    rows=job.spec.rows,
                    cols=job.spec.cols,
                    bytes=self._store.reserved_bytes(job.job_id),
                    idle_seconds=now - job.last_used,
                    compute_streams=job.streams,
                )
                for job in self._store.jobs()
            ]
        )

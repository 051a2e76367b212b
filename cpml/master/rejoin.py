"""Workers that come back: a dropped worker that answers its health check again gets its share again and
takes part from the next round on, so a long run survives more failures over time than N - R.

The share is rebuilt from the job's mask key, which lives only in the master's memory (`CodedTrainer.share_key`):
the worker receives exactly the share it held before, so it learns nothing new. A worker dropped for
misbehaving (a malformed result) is never taken back. After --resume in a new process the key is new and the
shares are fresh, which is just as private.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpml.master.cluster import Cluster, WorkerHandle
from cpml.protocol import CodedTrainer
from cpml.wire import names, serde

log = structlog.get_logger(__name__)


class Rejoiner:
    """Between rounds, `ready()` hands back the workers whose share was sent again (checked in the background)."""

    def __init__(
        self,
        cluster: Cluster,
        trainer: CodedTrainer,
        job_id: str,
        spec: serde.WireJobSpec,
        chunk_bytes: int,
        retry_seconds: float = 1.0,
    ) -> None:
        self._cluster = cluster
        self._trainer = trainer
        self._job_id = job_id
        self._spec = spec
        self._chunk_bytes = chunk_bytes
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[list[WorkerHandle]] | None = None
        self._last_try = 0.0

    def ready(self) -> list[WorkerHandle]:
        """Workers that hold their share again (revive them and open their streams); starts the next check."""
        back: list[WorkerHandle] = []
        if self._task is not None and self._task.done():
            back = [] if self._task.cancelled() or self._task.exception() else self._task.result()
            self._task = None
        if time.monotonic() - self._last_try >= self._retry_seconds:
            self._check(back)
        return back

    async def in_flight(self, timeout: float) -> list[WorkerHandle]:
        """Wait (up to `timeout`) for a check under way, starting one if none is; the workers it brought back."""
        if self._task is None:
            # a failure seen only now, in the round that falls short, has had no check started between rounds
            self._check([])
            if self._task is None:
                return []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.ready() if self._task.done() else []

    def _check(self, back: list[WorkerHandle]) -> None:
        waiting = [w for w in self._cluster.workers if not w.alive and w.rejoinable and w not in back]
        if self._task is None and waiting:
            self._last_try = time.monotonic()
            self._task = asyncio.create_task(self._bring_back(waiting), name="rejoin")

    async def _bring_back(self, waiting: list[WorkerHandle]) -> list[WorkerHandle]:
        answering = [
            w for w, ok in zip(waiting, await asyncio.gather(*(self._serving(w) for w in waiting)), strict=True) if ok
        ]
        if not answering:
            return []
        log.info("re-sending shares", workers=[w.index for w in answering])
        # A worker that kept its share would refuse the upload, and gRPC may report that refusal as INTERNAL
        # while chunks are still streaming: free it first, so every returning worker takes the same upload.
        await self._cluster.end_job(self._job_id, answering)
        rows = serde.rows_per_chunk(self._spec.cols, self._chunk_bytes)
        chunks = self._trainer.share_chunks(rows, workers=[w.index for w in answering])
        stats = await self._cluster.upload(self._job_id, self._spec, chunks, self._chunk_bytes, workers=answering)
        return [w for w in answering if w.index in stats.stored]

    async def _serving(self, worker: WorkerHandle) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(worker.channel).Check(
                health_pb2.HealthCheckRequest(service=names.WORKER_SERVICE), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def aclose(self) -> None:
        """Stop a check in flight."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

"""The round driver: one Compute stream per live worker; each round ends at the R-th reply of THAT round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import grpc
import numpy as np
import structlog

import cpml.errors as errors
from cpml.master.cluster import NotEnoughWorkers, WorkerHandle
from cpml.wire import serde

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    from cpml.wire.generated.v1 import worker_pb2 as pb

log = structlog.get_logger(__name__)


class RoundTimeout(errors.TimedOut):
    """Fewer than R replies of a round arrived before its deadline."""

    exit_code = errors.ExitCode.ROUND_TIMEOUT


@dataclass(frozen=True)
class RoundTraffic:
    """Timings and bytes of one round on the wire."""

    send_seconds: float
    wait_seconds: float  # from the last send until the R-th reply of this round
    bytes_sent: int
    bytes_received: int
    late_replies: int  # replies for earlier rounds, dropped
    worker_compute_seconds: float  # the slowest compute among the R replies used, as the workers report it

    def plus(self, other: RoundTraffic) -> RoundTraffic:
        """Both exchanges of a round (the exact sigmoid) as one: times, bytes and late replies added."""
        return RoundTraffic(
            send_seconds=self.send_seconds + other.send_seconds,
            wait_seconds=self.wait_seconds + other.wait_seconds,
            bytes_sent=self.bytes_sent + other.bytes_sent,
            bytes_received=self.bytes_received + other.bytes_received,
            late_replies=self.late_replies + other.late_replies,
            worker_compute_seconds=self.worker_compute_seconds + other.worker_compute_seconds,
        )


class ComputeStreams:
    """Bidirectional Compute streams to the workers for one job; use `async with`, then `run_round`."""

    def __init__(
        self,
        workers: list[WorkerHandle],
        job_id: str,
        moduli: tuple[int, ...],
        cols: tuple[int, ...],
        threshold: int,
        round_timeout: float,
        stream_timeout: float,
    ) -> None:
        self.workers = [w for w in workers if w.alive]
        self.job_id = job_id
        self.moduli = moduli
        self.cols = cols  # values per residue in a result, for each stage of a round
        self.threshold = threshold
        self.round_timeout = round_timeout
        self.stream_timeout = stream_timeout
        self._requests: dict[int, asyncio.Queue[pb.RoundRequest | None]] = {}
        # (worker, reply or None on failure, failure, the stream's generation: a rejoined worker's new stream
        # must not be failed by a message its old one left behind)
        self._replies: asyncio.Queue[tuple[WorkerHandle, pb.RoundResult | None, str, int]] = asyncio.Queue()
        self._generation: dict[int, int] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._late = 0

    async def __aenter__(self) -> Self:
        for worker in self.workers:
            self._open(worker)
        return self

    def add(self, worker: WorkerHandle) -> None:
        """Open a compute stream to a worker that rejoined (it takes part from the next round on)."""
        old = self._requests.get(worker.index)
        if old is not None:
            old.put_nowait(None)
        if worker not in self.workers:
            self.workers.append(worker)
        self._open(worker)

    def _open(self, worker: WorkerHandle) -> None:
        queue: asyncio.Queue[pb.RoundRequest | None] = asyncio.Queue()
        self._requests[worker.index] = queue
        generation = self._generation[worker.index] = self._generation.get(worker.index, -1) + 1
        call = worker.stub.Compute(self._request_stream(queue), timeout=self.stream_timeout)
        self._readers.append(
            asyncio.create_task(self._read(worker, call, generation), name=f"replies-{worker.index}-{generation}")
        )

    async def __aexit__(self, *exc: object) -> None:
        for queue in self._requests.values():
            queue.put_nowait(None)  # half-close: the worker ends its stream
        if exc[0] is None:
            # let live workers finish their streams cleanly, but never wait long on a slow one
            _, pending = await asyncio.wait(self._readers, timeout=2.0)
        else:
            pending = set(self._readers)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    @staticmethod
    async def _request_stream(queue: asyncio.Queue[pb.RoundRequest | None]) -> AsyncIterator[pb.RoundRequest]:
        while (msg := await queue.get()) is not None:
            yield msg

    async def _read(self, worker: WorkerHandle, call: grpc.aio.StreamStreamCall, generation: int) -> None:
        try:
            async for reply in call:
                self._replies.put_nowait((worker, reply, "", generation))
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            failure = f"compute stream failed: {exc.code().name}: {exc.details()}"
            self._replies.put_nowait((worker, None, failure, generation))
        else:
            self._replies.put_nowait((worker, None, "compute stream ended by the worker", generation))

    def _live(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.alive]

    async def run_round(
        self,
        round_number: int,
        shares: np.ndarray,
        needed: int | None = None,
        rejoining: Callable[[float], Awaitable[list[WorkerHandle]]] | None = None,
        stage: int = 0,
        on_sent: Callable[[], None] | None = None,
    ) -> tuple[dict[int, np.ndarray], RoundTraffic]:
        """Send one exchange's shares to every live worker; return the first `needed` (R) replies, in order."""
        # When too few workers remain, `rejoining(seconds)` may hand back workers whose share was being re-sent:
        # they join this very round (every worker's weight share is encoded) before a shortfall is declared.
        # `on_sent()` is called once every request is queued, before the wait for replies.
        needed = self.threshold if needed is None else needed
        started = time.perf_counter()
        sent = 0

        def send(worker: WorkerHandle) -> int:
            msg = serde.round_request_to_proto(self.job_id, round_number, shares[worker.index], stage)
            self._requests[worker.index].put_nowait(msg)
            return msg.ByteSize()

        for worker in self._live():
            sent += send(worker)
        sent_at = time.perf_counter()
        if on_sent is not None:
            on_sent()
        received = 0
        late_before = self._late
        replies: dict[int, np.ndarray] = {}
        compute = 0.0
        deadline = asyncio.get_running_loop().time() + self.round_timeout
        possible: int | None = None  # the replies this exchange can still reach: recounted when a worker fails
        while len(replies) < needed:
            if possible is None:
                possible = len(replies) + sum(1 for w in self._live() if w.index not in replies)
            if possible < needed:
                left = deadline - asyncio.get_running_loop().time()
                back = await rejoining(max(left, 0.0)) if rejoining is not None and left > 0 else []
                if not back:
                    raise NotEnoughWorkers(self._shortfall_message(round_number, needed))
                for worker in back:
                    worker.revive()
                    self.add(worker)
                    sent += send(worker)
                possible = None
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    worker, reply, failure, generation = await self._replies.get()
            except TimeoutError:
                raise RoundTimeout(
                    f"round {round_number + 1}: only {len(replies)} of the {needed} replies needed arrived "
                    f"within {self.round_timeout:g}s; workers may be overloaded (raise --round-timeout)"
                ) from None
            if reply is None:
                if generation == self._generation[worker.index]:
                    worker.fail(failure)
                    possible = None
                continue
            received += reply.ByteSize()
            if (
                reply.job_id != self.job_id
                or (reply.round, reply.stage) != (round_number, stage)
                or worker.index in replies
            ):
                self._late += 1  # a straggler's answer to an earlier exchange: never mixed into this one
                continue
            try:
                replies[worker.index] = serde.round_result_from_proto(reply, self.moduli, self.cols[stage])
            except serde.WireError as exc:
                worker.fail(f"sent a malformed result: {exc}", rejoinable=False)
                possible = None
            else:
                compute = max(compute, reply.compute_seconds)
        waited = time.perf_counter() - sent_at
        return replies, RoundTraffic(
            send_seconds=sent_at - started,
            wait_seconds=waited,
            bytes_sent=sent,
            bytes_received=received,
            late_replies=self._late - late_before,
            worker_compute_seconds=compute,
        )

    def drop(self, index: int, reason: str) -> None:
        """Drop a worker whose result was wrong: it is never sent anything again in this run."""
        for worker in self.workers:
            if worker.index == index:
                worker.fail(reason, rejoinable=False)
                queue = self._requests.get(index)
                if queue is not None:
                    queue.put_nowait(None)

    def _shortfall_message(self, round_number: int, needed: int) -> str:
        dead = [w for w in self.workers if not w.alive]
        reasons = "; ".join(f"worker {w.index} at {w.address}: {w.failure}" for w in dead)
        wanted = (
            f"R = {needed} replies are needed to decode"
            if needed == self.threshold
            else f"{needed} replies are needed (R = {self.threshold}, plus {needed - self.threshold} to check for "
            f"wrong results)"
        )
        return (
            f"round {round_number + 1}: only {len(self._live())} of {len(self.workers)} workers remain but "
            f"{wanted} ({reasons})"
        )

"""A compute stream's scheduler, free of gRPC: rounds are read as they come, the newest one not yet computed is
computed next on the executor (a straggler skips rounds the master has moved past), results come out in order.
The servicer (cpml.worker.service) turns messages into `RoundInput`s and results into messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import structlog

import cpml.errors as errors
from cpml.field import ResidueBasis, basis_for
from cpml.protocol import prepare_share, worker_step
from cpml.wire.serde import MalformedMessage, WireJobSpec, check_id, shown
from cpml.worker.settings import INLINE_WORK_BYTES, WorkerSettings
from cpml.worker.store import Job, ShareStore, UnknownJob

log = structlog.get_logger(__name__)

_Item = TypeVar("_Item")


class RoundOutOfOrder(errors.NotReady):
    """A compute stream sent a (round, stage) not above the previous one."""


class StreamIdle(errors.TimedOut):
    """A stream sent nothing for --job-idle-seconds."""


@dataclass(frozen=True)
class RoundInput:
    """One exchange's request: its job, round and stage, and how to read its values once the job's spec is known."""

    job_id: str
    round: int
    values: Callable[[WireJobSpec], np.ndarray]
    stage: int = 0  # 1: the second exchange of a round with the exact sigmoid


@dataclass(frozen=True)
class RoundOutput:
    """One computed exchange: the result in every residue field and the seconds it took."""

    job_id: str
    round: int
    result: np.ndarray
    seconds: float
    stage: int = 0
    ends_round: bool = True  # the round's last exchange


def prepare_soon(job: Job, executor: Executor) -> asyncio.Future[np.ndarray]:
    """Start converting the job's share for computing (centred int32 or float64) unless it is under way or done."""
    # Started when the upload commits, so the first round does not wait for it (seconds on a large share).
    if job.prepared is None or job.prepared.cancelled():
        job.prepared = asyncio.get_running_loop().run_in_executor(
            executor, prepare_share, basis_for(job.spec.moduli), job.share
        )
    return job.prepared


async def within_idle_time(items: AsyncIterator[_Item], idle: float, what: str) -> AsyncIterator[_Item]:
    """The stream's items; StreamIdle once none came for `idle` seconds (a stalled client)."""
    stream = aiter(items)
    while True:
        try:
            async with asyncio.timeout(idle):
                item = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamIdle(
                f"the {what} stream sent nothing for {idle:g} s (--job-idle-seconds), so the "
                f"worker closed it and freed what it held; send the messages again"
            ) from None
        yield item


_Pending = tuple[Job, int, int, np.ndarray]  # job, round, stage, values


class LatestRound:
    """The newest round request not yet computed: a straggler skips rounds the master has moved past."""

    def __init__(self) -> None:
        self._pending: _Pending | None = None
        self._done = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self.skipped = 0

    def put(self, item: _Pending) -> None:
        """Make this the next request to compute, replacing one still waiting."""
        self.skipped += self._pending is not None
        self._pending = item
        self._changed.set()

    def finish(self, error: BaseException | None = None) -> None:
        """No more requests (or the reader failed with `error`)."""
        self._done = True
        self._error = self._error or error  # the first error stands
        self._changed.set()

    async def next(self) -> _Pending | None:
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


class ComputeStream:
    """One compute stream of one job: `results(requests)` yields a RoundOutput for each exchange it computes."""

    def __init__(self, store: ShareStore, executor: Executor, settings: WorkerSettings) -> None:
        self._store = store
        self._executor = executor
        self._settings = settings
        self.rounds = LatestRound()
        self.job_id: str | None = None

    async def results(self, requests: AsyncIterator[RoundInput]) -> AsyncGenerator[RoundOutput, None]:
        """Compute the newest exchange requested until the requests end; refusals raise their CpmlError."""
        reader = asyncio.create_task(self._read(requests))
        loop = asyncio.get_running_loop()
        try:
            while (item := await self.rounds.next()) is not None:
                job, round_number, stage, values = item
                self.job_id = job.job_id
                basis = basis_for(job.spec.moduli)
                started = time.perf_counter()
                prepared = await self._prepared(job)
                step = (basis, prepared, values, job.spec.coefficients, stage)
                if job.spec.share_bytes * job.spec.classes <= INLINE_WORK_BYTES:
                    result = worker_step(*step)
                else:
                    result = await loop.run_in_executor(self._executor, worker_step, *step)
                del prepared  # an ended job's float64 share is freed even while this stream waits
                s = self._settings
                if s.fault_wrong_results and round_number % s.fault_wrong_every == 0:
                    result = _falsified(result, basis, round_number, s)
                seconds = time.perf_counter() - started
                if s.fault_reply_delay:
                    await asyncio.sleep(s.fault_reply_delay)
                log.debug("round computed", job=job.job_id, round=round_number, stage=stage, seconds=round(seconds, 6))
                yield RoundOutput(job.job_id, round_number, result, seconds, stage, stage == job.spec.stages - 1)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # a reader inside the stream must not outlive it

    async def _prepared(self, job: Job) -> np.ndarray:
        """The job's share as the rounds compute on it: converted once per job, however many streams use it."""
        return await asyncio.shield(prepare_soon(job, self._executor))  # one stream's cancel must not cancel it

    async def _read(self, requests: AsyncIterator[RoundInput]) -> None:
        job: Job | None = None
        last = (-1, 0)  # (round, stage)

        def ended() -> None:
            assert job is not None  # only registered once the job is known
            self.rounds.finish(
                UnknownJob(
                    f"job {job.job_id!r} was ended or expired while its compute stream was open; upload its share again"
                )
            )

        try:
            async for request in within_idle_time(requests, self._settings.job_idle_seconds, "compute"):
                if job is None:
                    job = self._store.get(check_id(request.job_id))
                    job.watch(ended)
                elif request.job_id != job.job_id:
                    raise MalformedMessage(
                        f"round request names job {shown(request.job_id)} on the compute stream of job "
                        f"{job.job_id!r}; open one stream per job"
                    )
                if (request.round, request.stage) <= last:
                    raise RoundOutOfOrder(
                        f"round {request.round} stage {request.stage} of job {job.job_id!r} arrived after round "
                        f"{last[0]} stage {last[1]}; (round, stage) on a stream must strictly increase (open a new "
                        f"stream to start over)"
                    )
                values = request.values(job.spec)
                last = (request.round, request.stage)
                job.touch()
                self.rounds.put((job, request.round, request.stage, values))
            self.rounds.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.rounds.finish(exc)
        finally:
            if job is not None:
                job.unwatch(ended)


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

"""A CodedPrivateML run: plan, distribute shares, drive the rounds (the job around it: cpml.master.job)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import structlog
from threadpoolctl import threadpool_limits

import cpml.errors as errors
from cpml.data import Dataset
from cpml.field import uniform
from cpml.field.errors import TooManyErrors
from cpml.master.cluster import Cluster, NotEnoughWorkers, UploadStats
from cpml.master.job import (
    ROUNDS_LOG,
    ResumeError,
    RoundRecord,
    RoundsLog,
    TrainReport,
    choose_precision,
    data_fingerprint,
    in_flag_terms,
    load_training_data,
    open_cluster,
    plan_changes,
    precision_fields,
    resume_point,
    round_record,
    run_inputs,
    write_outputs,
)
from cpml.master.mpc_train import train_baseline
from cpml.master.rejoin import Rejoiner
from cpml.master.rounds import ComputeStreams
from cpml.master.settings import TrainSettings
from cpml.protocol import CodedTrainer, Plan, RoundStats, plan_from_checkpoint
from cpml.protocol.coding import MaskSource
from cpml.wire import serde

log = structlog.get_logger(__name__)


class WrongResults(errors.CpmlError):
    """Some workers sent wrong results that the redundancy could not correct; the round was not applied."""

    exit_code = errors.ExitCode.WRONG_RESULTS


def make_plan(settings: TrainSettings, n_workers: int, x_train: np.ndarray) -> Plan:
    """The plan for N workers from the settings: Case 1/2 or explicit K/T; precision automatic unless given."""
    try:
        return _make_plan(settings, n_workers, x_train)
    except ValueError as exc:
        raise ValueError(in_flag_terms(str(exc))) from None


def _make_plan(settings: TrainSettings, n_workers: int, x_train: np.ndarray) -> Plan:
    kwargs: dict[str, Any] = {
        "p": settings.prime,
        "iterations": settings.iterations,
        "model": settings.model,
        "learning_rate": settings.learning_rate,
        "weight_bound": settings.weight_bound,
        "sigmoid_interval": settings.sigmoid_interval,
        "byzantine": settings.byzantine,
        "detect": settings.detect,
    }
    if settings.k is not None and settings.t is not None:
        plan = Plan(n_workers=n_workers, k=settings.k, t=settings.t, r=settings.degree, **kwargs)
    elif settings.t is not None:
        plan = Plan.for_privacy(n_workers, settings.t, settings.degree, **kwargs)
    elif settings.case == 2:
        plan = Plan.case2(n_workers, settings.degree, **kwargs)
    else:
        plan = Plan.case1(n_workers, settings.degree, **kwargs)
    return choose_precision(settings, plan, x_train)


def _trainer(
    settings: TrainSettings, data: Dataset, fingerprint: str, mask_source: MaskSource
) -> tuple[CodedTrainer, list[RoundRecord]]:
    if not settings.resume:
        (settings.out / ROUNDS_LOG).unlink(missing_ok=True)
        plan = make_plan(settings, settings.n_workers, data.x_train)
        inputs = run_inputs(plan, data, settings.seed, mask_source=mask_source)
        return CodedTrainer.create(inputs, eval_every=settings.eval_every), []
    point = resume_point(settings.out, fingerprint)
    try:
        saved_plan, seed = plan_from_checkpoint(point.saved), int(point.saved["seed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(
            f"Argument 'resume' needs an intact checkpoint in {settings.out}, not one with a damaged plan "
            f"({type(exc).__name__}: {exc}); run without --resume to start fresh"
        ) from None
    changes = plan_changes(settings, saved_plan)
    if changes:
        raise ResumeError(
            f"Argument 'resume' must continue the checkpoint's plan, not change it: "
            f"{', '.join(changes)}; drop these flags to resume, or start fresh without --resume"
        )
    if settings.iterations < point.round:
        raise ResumeError(
            f"Argument 'iterations' must be at least the {point.round} rounds the checkpoint has "
            f"finished, not {settings.iterations}; pass --iterations {point.round} or more"
        )
    # N may change between runs (a dead worker is gone): the decoded gradient does not depend on N,
    # so the weights continue exactly as they would have.
    try:
        plan = saved_plan.with_(n_workers=settings.n_workers, iterations=settings.iterations)
    except ValueError as exc:
        raise ResumeError(
            f"the checkpoint's plan (K={saved_plan.k}, T={saved_plan.t}, r={saved_plan.r}) needs "
            f"at least R = {saved_plan.threshold} workers, not {settings.n_workers} "
            f"(--workers or --workers-local): {exc}"
        ) from None
    trainer = CodedTrainer.create(run_inputs(plan, data, seed, point, mask_source), eval_every=settings.eval_every)
    return trainer, point.history


async def train(
    settings: TrainSettings, on_round: Callable[[RoundRecord], None] | None = None, *, mask_source: MaskSource = uniform
) -> TrainReport:
    """Run one training job end to end on remote or embedded workers; write the outputs into settings.out."""
    # mask_source exists for tests only (never a flag): a test swaps in zero masks to show its leak check fires.
    # The master's float products (the step size, the metrics) are small: BLAS's own threads only spin against
    # the workers for a core, up to 100x slower on a busy machine. cpml's kernels run BLAS on their own threads.
    with threadpool_limits(1, user_api="blas"):
        return await _train(settings, on_round, mask_source)


async def _train(
    settings: TrainSettings, on_round: Callable[[RoundRecord], None] | None, mask_source: MaskSource
) -> TrainReport:
    if settings.protocol != "cpml":
        return await train_baseline(settings, on_round)  # the MPC baselines (cpml.mpc)
    data = load_training_data(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    trainer, history = _trainer(settings, data, fingerprint, mask_source)
    plan = trainer.plan
    if trainer.done:
        log.info("nothing to do: the checkpoint already finished every iteration", round=trainer.round)
        return _finish(settings, trainer, data, history, UploadStats(), {})
    log.info(
        "plan",
        n=plan.n_workers,
        k=plan.k,
        t=plan.t,
        r=plan.r,
        threshold=plan.threshold,
        **precision_fields(plan),
    )

    async with contextlib.AsyncExitStack() as stack:
        spec = serde.WireJobSpec.of(trainer.job_spec, plan.model)
        cluster = await open_cluster(settings, stack, spec.round_bytes)
        await cluster.wait_healthy(plan.threshold)  # start with the workers that answer while R do
        await cluster.check_capacity(
            max(plan.moduli), spec.share_bytes, settings.chunk_bytes, plan.threshold, spec.round_bytes
        )
        rounds = RoundsLog(settings, trainer, fingerprint, history, on_round)
        upload = await _run_job(settings, trainer, cluster, rounds, data.target_std)
    dropped = {w.index: w.failure for w in cluster.workers if not w.alive}
    return _finish(settings, trainer, data, history, upload, dropped)


async def _run_job(
    settings: TrainSettings, trainer: CodedTrainer, cluster: Cluster, rounds: RoundsLog, target_scale: float = 1.0
) -> UploadStats:
    plan = trainer.plan
    job_id = uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(job=job_id)
    spec = serde.WireJobSpec.of(trainer.job_spec, plan.model)
    try:
        if len(cluster.alive) < plan.threshold:
            raise NotEnoughWorkers(f"{len(cluster.alive)} workers but R = {plan.threshold} are needed")
        upload = await _distribute(settings, trainer, cluster, job_id, spec)
        remaining = plan.iterations - trainer.round
        stream_deadline = settings.timeouts.round * max(remaining, 1) + settings.timeouts.upload
        rejoiner = Rejoiner(cluster, trainer, job_id, spec, settings.chunk_bytes)
        async with (
            ComputeStreams(
                cluster.workers,
                job_id,
                plan.moduli,
                tuple(spec.result_cols(stage) for stage in range(spec.stages)),
                plan.threshold,
                settings.timeouts.round,
                stream_deadline,
            ) as streams,
            contextlib.aclosing(rejoiner),
        ):
            with rounds:
                recorder = _Recorder(rounds, trainer, target_scale)
                try:
                    while not trainer.done:
                        for worker in rejoiner.ready():
                            worker.revive()
                            streams.add(worker)
                        await _one_round(trainer, streams, rejoiner, recorder)
                finally:
                    await recorder.wait()  # the last finished round is logged, also on the way out
    except BaseException:
        rounds.save()  # the last finished round
        raise
    finally:
        # On every way out (done, below R, a timeout, SIGTERM, a crash in here) the workers free the share at
        # once, so a --resume on the same workers finds room; a worker that died just fails this call.
        await cluster.end_job(job_id)
        structlog.contextvars.unbind_contextvars("job")
    return upload


async def _distribute(
    settings: TrainSettings, trainer: CodedTrainer, cluster: Cluster, job_id: str, spec: serde.WireJobSpec
) -> UploadStats:
    """Upload the shares; when fewer than R workers had room (another job got there first), back off and retry."""
    threshold = trainer.plan.threshold
    deadline = time.monotonic() + settings.timeouts.upload
    rows = serde.rows_per_chunk(spec.cols, settings.chunk_bytes)
    jitter = random.Random()  # back-off only: nothing secret depends on it
    while True:
        upload = await cluster.upload(job_id, spec, trainer.share_chunks(rows), settings.chunk_bytes)
        if len(cluster.alive) >= threshold:
            return upload
        # RESOURCE_EXHAUSTED: no room now. gRPC can also report a refusal that arrives while the chunks are still
        # streaming as "INTERNAL: Internal error from Core"; both are worth another try once the others are gone.
        full = [
            w for w in cluster.workers if not w.alive and ("RESOURCE_EXHAUSTED" in w.failure or "INTERNAL" in w.failure)
        ]
        if not full or time.monotonic() > deadline:
            raise NotEnoughWorkers(
                f"only {len(cluster.alive)} workers stored their share but R = {threshold} are needed: "
                + "; ".join(f"{w.address}: {w.failure}" for w in cluster.workers if not w.alive)
            )
        # Holding a partial set of workers while another master does the same would deadlock both: release
        # the shares stored, wait a random moment, and try all of them again (the same shares: keyed masks).
        log.warning(
            "fewer than R workers had room for the share; releasing and retrying",
            stored=len(cluster.alive),
            needed=threshold,
            full=len(full),
        )
        await cluster.end_job(job_id)
        for worker in full:
            worker.revive()
        await asyncio.sleep(jitter.uniform(0.2, 2.0))


# Metrics over at most this many values (about 5 ms) run on the event loop while the replies are awaited; larger
# ones on a thread. On small data the metrics are many short numpy calls, and beside the master's own they queue
# on the interpreter lock: a 50,000-row round took 54-68 ms with a thread against 39-52 ms inline.
INLINE_METRICS_ELEMENTS = 1 << 23


class _Recorder:
    """Records each finished round (its metrics while the next round is out), before the next round steps."""

    # The metrics pass over all the data: computed once the next round's requests are sent (the master would
    # otherwise hold the workers up each round), so not beside the master's encoding. A round is recorded before
    # the next one steps, so its checkpoint holds its own state.

    def __init__(self, rounds: RoundsLog, trainer: CodedTrainer, target_scale: float) -> None:
        self._rounds, self._trainer, self._target_scale = rounds, trainer, target_scale
        self._pending: tuple[RoundStats, dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, stats: RoundStats, measured: dict[str, Any]) -> None:
        """A round just finished: record it when `start` is called (at the latest in `wait`)."""
        self._pending = (stats, measured)

    def start(self) -> None:
        """Begin recording the finished round, if one waits."""
        if self._pending is not None:
            (stats, measured), self._pending = self._pending, None
            self._task = asyncio.create_task(self._record(stats, measured))

    async def wait(self) -> None:
        """Finish recording the last finished round."""
        self.start()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def _record(self, stats: RoundStats, measured: dict[str, Any]) -> None:
        # The trainer's round and weights stay this round's until the next round steps, which waits for this task.
        if self._trainer.metrics_due:
            if self._trainer.evaluation_elements <= INLINE_METRICS_ELEMENTS:
                metrics = self._trainer.stats(stats.workers_used)
            else:
                metrics = await asyncio.to_thread(self._trainer.stats, stats.workers_used)
            stats = replace(metrics, wrong_workers=stats.wrong_workers)
        self._rounds.record(round_record(stats, self._target_scale, **measured))


async def _one_round(trainer: CodedTrainer, streams: ComputeStreams, rejoiner: Rejoiner, recorder: _Recorder) -> None:
    """Run one round's exchanges and step; the previous round is recorded while this one is out."""
    began = time.perf_counter()
    round_number = trainer.round
    shares = trainer.weight_shares()
    encoded = time.perf_counter()
    replies, traffic = await streams.run_round(
        round_number, shares, trainer.replies_needed, rejoiner.in_flight, on_sent=recorder.start
    )
    received = time.perf_counter()
    try:
        if trainer.plan.exact_sigmoid:  # decode X̄w̄, encode the sigmoid values, and a second exchange for X̄ᵀē
            shares, wrong = trainer.sigmoid_shares(round_number, replies)
            for index in wrong:
                streams.drop(index, f"sent a wrong result in round {round_number + 1} (corrected)")
            sigmoid_encoded = time.perf_counter()
            replies, second = await streams.run_round(
                round_number, shares, trainer.replies_needed, rejoiner.in_flight, stage=1
            )
            encoded += sigmoid_encoded - received
            traffic = traffic.plus(second)
            received = time.perf_counter()
        await recorder.wait()
        stats = trainer.finish_round(round_number, replies, evaluate=False)
    except TooManyErrors as exc:
        raise WrongResults(
            f"{exc}; the round was not applied (the checkpoint holds the last good one). Rerun with "
            f"--resume and --byzantine A (N >= R + 2A) to correct them, or without the workers named "
            f"in the log"
        ) from None
    for index in stats.wrong_workers:
        streams.drop(index, f"sent a wrong result in round {round_number + 1} (corrected)")
    done = time.perf_counter()
    recorder.add(
        stats,
        {
            "encode_seconds": encoded - began,
            "send_seconds": traffic.send_seconds,
            "wait_seconds": traffic.wait_seconds,
            "worker_compute_seconds": traffic.worker_compute_seconds,
            "decode_update_seconds": done - received,
            "total_seconds": done - began,
            "bytes_sent": traffic.bytes_sent,
            "bytes_received": traffic.bytes_received,
            "late_replies": traffic.late_replies,
        },
    )


def _finish(
    settings: TrainSettings,
    trainer: CodedTrainer,
    data: Dataset,
    history: list[RoundRecord],
    upload: UploadStats,
    dropped: dict[int, str],
) -> TrainReport:
    plan = trainer.plan
    upload_summary = {
        "seconds": upload.seconds,
        "encode_seconds": upload.encode_seconds,
        "bytes_sent": upload.bytes_sent,
        "chunks": upload.chunks,
    }
    write_outputs(
        settings,
        trainer,
        data,
        history,
        {
            "threshold": plan.threshold,
            "upload": upload_summary,
            "dropped_workers": {str(k): v for k, v in dropped.items()},
        },
        title=f"N={plan.n_workers} K={plan.k} T={plan.t} {plan.sigmoid_label}",
    )
    return TrainReport(
        plan=plan,
        weights=trainer.weights.copy(),
        history=tuple(history),
        upload=upload_summary,
        dropped_workers=dropped,
        out=settings.out,
        notes=data.notes,
    )

"""The master's side of the BGW / BH08 baselines over gRPC: join the groups, share, drive rounds, report.

The workers of a group talk to each other through their Mpc service; the master only sends the data
and weight shares (Deliver) and reads each worker's gradient shares (Results). Quantization, weight
rounding and the update are CodedPrivateML's (cpml.mpc.MpcSession), so `--protocol bgw|bh08` trains
the same model as `--protocol cpml` on the same data, seed and precision (the same residue moduli, chosen
automatically from public facts unless --residues/--lx/--lw/--lc fix them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import structlog

import cpml.errors as errors
from cpml.master.cluster import Cluster, NotEnoughWorkers, WorkerHandle
from cpml.master.job import (
    ROUNDS_LOG,
    RoundRecord,
    RoundsLog,
    TrainReport,
    choose_precision,
    data_fingerprint,
    in_flag_terms,
    load_training_data,
    open_cluster,
    precision_fields,
    resume_point,
    round_record,
    run_inputs,
    write_outputs,
)
from cpml.master.rounds import RoundTimeout
from cpml.master.settings import TrainSettings
from cpml.mpc import Message, MpcPlan, MpcSession, Traffic
from cpml.protocol import Plan
from cpml.wire import mpc_serde, serde
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

_DELIVERIES_IN_FLIGHT = 64


class MpcJobFailed(errors.CpmlError, RuntimeError):
    """A worker reported that the job broke (a peer unreachable, a message refused)."""


@dataclass(frozen=True)
class MpcJobReport:
    """What one baseline job cost: the rounds, the data sharing, and each worker's own account."""

    history: tuple[RoundRecord, ...]
    setup: dict[str, float]  # seconds, encode_seconds, bytes_sent, messages
    master_traffic: dict[str, dict[str, int]]
    workers: dict[int, dict[str, Any]]  # per worker: messages/bytes it sent, compute seconds
    notes: tuple[str, ...] = ()  # how the data was read, labelled, split and scaled


def make_mpc_plans(settings: TrainSettings, protocol: str, x_train: np.ndarray) -> tuple[MpcPlan, Plan]:
    """The baseline's groups (T from --t, else the paper's floor((N-3)/6)) and the quantization plan."""
    n = settings.n_workers
    mpc = MpcPlan(protocol, n, settings.t) if settings.t is not None else MpcPlan.paper(protocol, n)
    try:
        plan = Plan.for_privacy(
            n,
            mpc.t,
            settings.r,
            p=settings.prime,
            iterations=settings.iterations,
            model=settings.model,
            learning_rate=settings.learning_rate,
            weight_bound=settings.weight_bound,
            sigmoid_interval=settings.sigmoid_interval,
        )
        # Parties see the precision in what they are sent: as for CodedPrivateML, planned from public facts.
        return mpc, choose_precision(settings, plan, x_train)
    except ValueError as exc:
        raise ValueError(in_flag_terms(str(exc))) from None


async def run_mpc_job(
    session: MpcSession,
    cluster: Cluster,
    chunk_bytes: int,
    round_timeout: float,
    on_round: Callable[[RoundRecord], None] | None = None,
    target_scale: float = 1.0,
) -> MpcJobReport:
    """Run a baseline job on the cluster's first G(2T+1) workers until the session is done."""
    # target_scale turns the test RMSE of linear regression into the targets' units (their std).
    mpc, control = session.mpc, cluster.timeouts.control
    if len(cluster.alive) < mpc.active_workers:
        raise NotEnoughWorkers(
            f"{len(cluster.alive)} workers but {protocol_name(mpc)} needs G(2T+1) = {mpc.active_workers}"
        )
    workers = cluster.workers[: mpc.active_workers]
    stubs: dict[int, pb_grpc.MpcAsyncStub] = {w.index: pb_grpc.MpcStub(w.channel) for w in workers}
    job_id = uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(job=job_id)
    replies: asyncio.Queue[Message | MpcJobFailed] = asyncio.Queue()
    traffic = Traffic()
    readers: list[asyncio.Task[None]] = []
    worker_stats: dict[int, dict[str, Any]] = {}
    try:
        await _join_all(stubs, workers, job_id, session, cluster, control)
        for w in workers:
            readers.append(asyncio.create_task(_read_results(stubs[w.index], job_id, session.plan.moduli, replies)))
        limit = asyncio.Semaphore(_DELIVERIES_IN_FLIGHT)

        async def deliver(message: Message) -> None:
            async with limit:
                traffic.record(message)
                await stubs[message.receiver].Deliver(
                    mpc_serde.envelope_to_proto(job_id, message), timeout=cluster.timeouts.upload
                )

        began = time.perf_counter()
        # one data message carries the rows in every residue field: residues x rows x d elements
        rows = serde.rows_per_chunk(session.partitions.shape[2] * session.plan.residues, chunk_bytes)
        chunks = session.data_messages(rows)
        encode_seconds, sends = 0.0, []
        while True:
            encode_began = time.perf_counter()
            message = await asyncio.to_thread(next, chunks, None)  # sharing is CPU work: off the event loop
            encode_seconds += time.perf_counter() - encode_began
            if message is None:
                break
            sends.append(asyncio.create_task(deliver(message)))
            if len(sends) >= _DELIVERIES_IN_FLIGHT:
                await asyncio.gather(*sends)
                sends = []
        await asyncio.gather(*sends)
        setup = {
            "seconds": time.perf_counter() - began,
            "encode_seconds": encode_seconds,
            "bytes_sent": traffic.bytes["setup"],
            "messages": traffic.messages["setup"],
        }
        log.info(
            "mpc shares distributed",
            protocol=mpc.protocol,
            workers=len(workers),
            bytes=setup["bytes_sent"],
            seconds=round(setup["seconds"], 3),
        )
        history = []
        while not session.done:
            record = await _one_round(session, deliver, replies, traffic, round_timeout, target_scale)
            history.append(record)
            if on_round is not None:
                on_round(record)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for w in workers:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stubs[w.index].Leave(mpc_serde.leave_request(job_id), timeout=control)
                worker_stats[w.index] = mpc_serde.leave_from_proto(reply)
        structlog.contextvars.unbind_contextvars("job")
    return MpcJobReport(tuple(history), setup, traffic.as_dict(), worker_stats)


async def _join_all(
    stubs: dict[int, pb_grpc.MpcAsyncStub],
    workers: list[WorkerHandle],
    job_id: str,
    session: MpcSession,
    cluster: Cluster,
    timeout: float,
) -> None:
    # Every Join is settled before a refusal is raised: the Leaves that follow must not overtake a Join
    # still in flight, or that worker would keep an orphan job (its share buffer) until it expires.
    outcomes = await asyncio.gather(
        *(_join(stubs[w.index], w.address, job_id, session, cluster, timeout) for w in workers), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def _join(
    stub: pb_grpc.MpcAsyncStub, address: str, job_id: str, session: MpcSession, cluster: Cluster, timeout: float
) -> None:
    worker = next(w.index for w in cluster.workers if w.address == address)
    peers = [cluster.workers[m].address for m in session.mpc.members(session.mpc.locate(worker)[0])]
    try:
        await stub.Join(mpc_serde.join_to_proto(job_id, session.party_spec(worker), peers), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        hint = (
            "; it runs a cpml-worker without the Mpc service: upgrade it"
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED
            else ""
        )
        raise MpcJobFailed(
            f"worker {worker} at {address} refused to join the {session.mpc.protocol} job: "
            f"{exc.code().name}: {exc.details()}{hint}"
        ) from None


def protocol_name(mpc: MpcPlan) -> str:
    """BGW or BH08, as the paper writes them."""
    return mpc.protocol.upper()


async def _read_results(
    stub: pb_grpc.MpcAsyncStub, job_id: str, moduli: tuple[int, ...], replies: asyncio.Queue[Message | MpcJobFailed]
) -> None:
    try:
        async for envelope in stub.Results(mpc_serde.results_request(job_id)):
            replies.put_nowait(mpc_serde.envelope_from_proto(envelope, moduli))
    except asyncio.CancelledError:
        raise
    except grpc.aio.AioRpcError as exc:
        replies.put_nowait(MpcJobFailed(f"{exc.code().name}: {exc.details()}"))
    except serde.WireError as exc:
        replies.put_nowait(MpcJobFailed(f"a worker sent a malformed gradient share: {exc}"))


async def _one_round(
    session: MpcSession,
    deliver: Callable[[Message], Any],
    replies: asyncio.Queue[Message | MpcJobFailed],
    traffic: Traffic,
    round_timeout: float,
    target_scale: float = 1.0,
) -> RoundRecord:
    began = time.perf_counter()
    round_number = session.round
    messages = session.weight_messages()
    encoded = time.perf_counter()
    await asyncio.gather(*(deliver(m) for m in messages))
    sent_at = time.perf_counter()
    received, late, stats = 0, 0, None
    deadline = asyncio.get_running_loop().time() + round_timeout
    while stats is None:
        try:
            async with asyncio.timeout_at(deadline):
                item = await replies.get()
        except TimeoutError:
            raise RoundTimeout(
                f"round {round_number}: not every worker's gradient share arrived within "
                f"{round_timeout:g}s; the baselines need all G(2T+1) (raise --round-timeout)"
            ) from None
        if isinstance(item, MpcJobFailed):
            raise item
        received += item.nbytes
        traffic.record(item)
        late += item.round != round_number
        stats = session.receive(item)
    decoded = time.perf_counter()
    return round_record(
        stats,
        target_scale,
        encode_seconds=encoded - began,
        send_seconds=sent_at - encoded,
        wait_seconds=decoded - sent_at,
        decode_update_seconds=0.0,
        total_seconds=decoded - began,
        bytes_sent=sum(m.nbytes for m in messages),
        bytes_received=received,
        late_replies=late,
    )


async def train_baseline(settings: TrainSettings, on_round: Callable[[RoundRecord], None] | None = None) -> TrainReport:
    """`cpml-master train --protocol bgw|bh08`: the baseline run, reported like a CodedPrivateML run."""
    session, report = await train_mpc(settings, settings.protocol, on_round)
    return TrainReport(
        plan=session.plan,
        weights=session.weights.copy(),
        history=report.history,
        upload=report.setup,
        dropped_workers={},
        out=settings.out,
        notes=report.notes,
    )


async def train_mpc(
    settings: TrainSettings, protocol: str, on_round: Callable[[RoundRecord], None] | None = None
) -> tuple[MpcSession, MpcJobReport]:
    """`cpml-master train --protocol bgw|bh08`: one baseline job end to end, outputs in settings.out."""
    data = load_training_data(settings)
    if data.y_train.ndim == 2:
        raise ValueError(
            f"Argument 'protocol' must be cpml for {data.y_train.shape[1]} classes (one-vs-rest runs "
            f"in CodedPrivateML only; the {protocol.upper()} baseline trains two-class models), not "
            f"{protocol!r}."
        )
    settings.out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    mpc, plan = make_mpc_plans(settings, protocol, data.x_train)
    point = resume_point(settings.out, fingerprint) if settings.resume else None
    if point is None:
        (settings.out / ROUNDS_LOG).unlink(missing_ok=True)
    else:
        if point.saved.get("protocol") != protocol:
            raise ValueError(
                f"Argument 'protocol' must match the checkpoint's ({point.saved.get('protocol')!r}) to "
                f"resume, not {protocol!r}."
            )
        restored = ("lx", "lw", "lc", "p", "residues", "learning_rate", "weight_bound", "sigmoid_interval")
        plan = plan.with_(**{k: v for k, v in point.saved["plan"].items() if k in restored})
    session = MpcSession.create(mpc, run_inputs(plan, data, settings.seed, point))
    history = [] if point is None else point.history
    plan = session.plan
    log.info(
        "plan",
        protocol=protocol,
        n=mpc.n_workers,
        t=mpc.t,
        groups=mpc.groups,
        group_size=mpc.group_size,
        r=plan.r,
        **precision_fields(plan),
    )
    rounds = RoundsLog(settings, session, fingerprint, history, on_round)
    async with contextlib.AsyncExitStack() as stack:
        cluster = await open_cluster(settings, stack)
        await cluster.wait_healthy()
        try:
            with rounds:
                report = await run_mpc_job(
                    session, cluster, settings.chunk_bytes, settings.timeouts.round, rounds.record, data.target_std
                )
        except BaseException:
            rounds.save()
            raise
    write_outputs(
        settings,
        session,
        data,
        history,
        {
            "protocol": mpc.protocol,
            "mpc": {k: getattr(mpc, k) for k in mpc.__dataclass_fields__},
            "moduli": list(plan.moduli),
            "upload": report.setup,
            "master_traffic": report.master_traffic,
            "workers": {str(k): v for k, v in report.workers.items()},
        },
        title=f"{protocol_name(mpc)} N={mpc.n_workers} T={mpc.t} G={mpc.groups}",
        protocol=mpc.protocol,
    )
    return session, MpcJobReport(tuple(history), report.setup, report.master_traffic, report.workers, tuple(data.notes))

"""Hostile and malformed messages to the three daemons (cpml.v1.Worker, Mpc, Aggregation) over a raw gRPC
channel to 127.0.0.1:0, as bytes or as messages. Every case expects one precise status code and a message
that says what to fix; then a correct job on the same daemon must still give the right answer, nothing the
refusal reserved may stay held, and no log line may carry the values the message carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from helpers_cluster import DEADLINE, MODULI, P, compute, running_worker, small_job, upload
from sklearn.datasets import load_breast_cancer
from structlog.testing import capture_logs

from cpml.dp.accountant import Budget
from cpml.dp.dpgd import LocalSettings
from cpml.dp.server import AggregationServer, Coordinator
from cpml.dp.session import AggregationSession, RunSettings
from cpml.master.cluster import Cluster, Timeouts
from cpml.master.mpc_train import run_mpc_job
from cpml.master.rounds import ComputeStreams
from cpml.mpc import MASTER, Kind, Message, MpcPlan, MpcSession, PartySpec
from cpml.protocol import Plan, RunInputs, simulate
from cpml.wire import aggregation_serde as dp_serde
from cpml.wire import mpc_serde, serde
from cpml.wire.generated.v1 import aggregation_pb2 as agg_pb
from cpml.wire.generated.v1 import aggregation_pb2_grpc as agg_grpc
from cpml.wire.generated.v1 import mpc_pb2 as mpc_pb
from cpml.wire.generated.v1 import mpc_pb2_grpc, worker_pb2_grpc
from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.worker import compute as compute_scheduler

SECRET = 31337123  # a field element (< every modulus of MODULI) every hostile payload carries; never logged
Q = MODULI[1]  # residue 1's modulus: below P, so Q itself is an element of residue 0 but not of residue 1
SECRET_WEIGHT = 0.123456789
GARBAGE = b"\xff\xff\xff\xff"  # not protobuf: field 31, wire type 7 does not exist
NOT_UTF8_ID = b"\x0a\x02\xff\xfe"  # field 1 (a string: job_id, run_id) holding bytes that are not UTF-8
U32, U64 = 2**32 - 1, 2**64 - 1


def _identity(data: bytes) -> bytes:
    return data


async def _raw_unary(channel: grpc.aio.Channel, method: str, frame: bytes) -> bytes:
    return await channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)(
        frame, timeout=DEADLINE
    )


async def _raw_upload(channel: grpc.aio.Channel, frames: list[bytes]) -> bytes:
    call = channel.stream_unary(
        "/cpml.v1.Worker/UploadShare", request_serializer=_identity, response_deserializer=_identity
    )
    return await call(iter(frames), timeout=DEADLINE)


async def _raw_compute(channel: grpc.aio.Channel, frames: list[bytes]) -> list[bytes]:
    call = channel.stream_stream(
        "/cpml.v1.Worker/Compute", request_serializer=_identity, response_deserializer=_identity
    )
    return [reply async for reply in call(iter(frames), timeout=DEADLINE)]


def _frames(messages: list) -> list[bytes]:
    return [m.SerializeToString() for m in messages]


async def _hang_after(*messages):
    """Send the messages, then hang: a master that dies halfway through a stream."""
    for message in messages:
        yield message
    await asyncio.Event().wait()


def _assert_nothing_secret_logged(logs: list[dict], secrets: set[str]) -> None:
    for event in logs:
        for key, value in event.items():
            assert not isinstance(value, (np.ndarray, bytes, list, tuple)), (key, event)
        text = repr(event)
        leaked = [s for s in secrets if s in text]
        assert not leaked, (leaked, event)


@dataclass(frozen=True)
class Case:
    """One hostile exchange: `send` must fail with `code`, and the details must contain `says`."""

    id: str
    send: Callable[..., Awaitable[object]]
    code: grpc.StatusCode
    says: str
    settings: dict = field(default_factory=dict)


def _params(cases: list[Case]) -> list:
    return [pytest.param(c, id=c.id) for c in cases]


# --- cpml.v1.Worker ------------------------------------------------------------------------------------------


def _spec_chunk(
    job_id: str = "hostile",
    moduli: list[int] | tuple[int, ...] = MODULI,
    modulus: int = 0,
    degree: int = 1,
    rows: int = 2,
    cols: int = 4,
    coefficients: np.ndarray | None = None,
    model: str = "logistic",
    data: bytes | None = None,
    block_rows: int | None = None,
    row_offset: int = 0,
    residue: int = 0,
) -> pb.ShareChunk:
    """A first chunk whose every field can be set to anything (the serde functions would refuse to).

    `modulus` is the single-field format of cpml 0.1 (field 1), never set by a current master.
    """
    if coefficients is None:
        coefficients = np.full((max(len(moduli), 1), degree + 1), 7, dtype=np.uint32)
    block_rows = rows if block_rows is None else block_rows
    if data is None:
        data = np.full((block_rows, cols), SECRET, dtype="<u4").tobytes()
    chunk = pb.ShareChunk(
        job_id=job_id,
        row_offset=row_offset,
        crc32=serde.checksum(data),
        residue=residue,
        block=pb.FieldBlock(rows=block_rows, cols=cols, data=data),
    )
    chunk.spec.CopyFrom(
        pb.JobSpec(
            modulus=modulus,
            moduli=moduli,
            degree=degree,
            rows=rows,
            cols=cols,
            model=model,
            coefficients=pb.FieldBlock(
                rows=coefficients.shape[0], cols=coefficients.shape[1], data=coefficients.astype("<u4").tobytes()
            ),
        )
    )
    return chunk


def _bad_upload(**fields) -> Callable[..., Awaitable[object]]:
    return lambda channel, worker: _raw_upload(channel, _frames([_spec_chunk(**fields)]))


def _next_chunk(
    row_offset: int,
    rows: int,
    cols: int = 4,
    data: bytes | None = None,
    crc: int | None = None,
    job_id: str = "hostile",
    residue: int = 0,
    value: int = SECRET,
) -> pb.ShareChunk:
    data = np.full((rows, cols), value, dtype="<u4").tobytes() if data is None else data
    return pb.ShareChunk(
        job_id=job_id,
        row_offset=row_offset,
        block=pb.FieldBlock(rows=rows, cols=cols, data=data),
        crc32=serde.checksum(data) if crc is None else crc,
        residue=residue,
    )


def _upload_then(*later: pb.ShareChunk, rows: int = 4, first_rows: int = 2) -> Callable[..., Awaitable[object]]:
    """A valid first chunk (rows 0..first_rows-1 of residue 0 of a `rows`-row share), then the given chunks."""
    first = _spec_chunk(rows=rows, block_rows=first_rows)
    return lambda channel, worker: _raw_upload(channel, _frames([first, *later]))


async def _stored_then_upload_again(channel: grpc.aio.Channel, worker) -> None:
    job = small_job("hostile")
    await upload(_stub(channel), job.chunks())
    try:
        await upload(_stub(channel), job.chunks())
    finally:
        await _stub(channel).EndJob(pb.EndJobRequest(job_id="hostile"), timeout=DEADLINE)


@contextlib.asynccontextmanager
async def _upload_in_progress(channel: grpc.aio.Channel, worker):
    """Job "hostile" half uploaded (its first chunk in, the stream held open); it completes on exit."""
    job = small_job("hostile", rows=6)
    chunks = job.chunks(max_chunk_bytes=16)  # one row per chunk
    go_on = asyncio.Event()

    async def held():
        yield chunks[0]
        await go_on.wait()
        for chunk in chunks[1:]:
            yield chunk

    call = _stub(channel).UploadShare(held(), timeout=DEADLINE)
    for _ in range(200):
        if worker.store.used_bytes:
            break
        await asyncio.sleep(0.005)
    try:
        yield job
    finally:
        go_on.set()
        reply = await call
        assert reply.stored_bytes == job.share.nbytes  # the first upload was not disturbed
        await _stub(channel).EndJob(pb.EndJobRequest(job_id="hostile"), timeout=DEADLINE)


async def _concurrent_upload(channel: grpc.aio.Channel, worker) -> None:
    async with _upload_in_progress(channel, worker) as job:
        await upload(_stub(channel), job.chunks())


async def _compute_during_upload(channel: grpc.aio.Channel, worker) -> None:
    async with _upload_in_progress(channel, worker) as job:
        await compute(_stub(channel), [serde.round_request_to_proto("hostile", 0, job.weights(0))])


async def _stored_then_compute(channel: grpc.aio.Channel, requests: list[bytes]) -> None:
    job = small_job("hostile")
    await upload(_stub(channel), job.chunks())
    try:
        await _raw_compute(channel, requests)
    finally:  # the refused stream left the stored job intact
        results = await compute(_stub(channel), [serde.round_request_to_proto("hostile", 9, job.weights(9))])
        np.testing.assert_array_equal(serde.round_result_from_proto(results[0], MODULI, 4), job.expected(9))
        await _stub(channel).EndJob(pb.EndJobRequest(job_id="hostile"), timeout=DEADLINE)


def _compute_on_stored(*requests: pb.RoundRequest) -> Callable[..., Awaitable[object]]:
    return lambda channel, worker: _stored_then_compute(channel, _frames(list(requests)))


def _weights(
    round_number: int, rows: int = 2 * 4, cols: int = 1, value: int = SECRET, data: bytes | None = None
) -> pb.RoundRequest:
    """Weights for the stored 4-column job: (residues x d) x r = 8 x 1 unless told otherwise."""
    data = np.full((rows, cols), value, dtype="<u4").tobytes() if data is None else data
    return pb.RoundRequest(job_id="hostile", round=round_number, weights=pb.FieldBlock(rows=rows, cols=cols, data=data))


async def _end_job_while_computing(channel: grpc.aio.Channel, worker) -> None:
    job = small_job("hostile")
    await upload(_stub(channel), job.chunks())
    # No second round ever comes: only the EndJob can end this stream.
    call = _stub(channel).Compute(
        _hang_after(serde.round_request_to_proto("hostile", 0, job.weights(0))), timeout=DEADLINE
    )
    async for reply in call:
        assert reply.round == 0
        await _stub(channel).EndJob(pb.EndJobRequest(job_id="hostile"), timeout=DEADLINE)


async def _silent_compute(channel: grpc.aio.Channel, worker) -> None:
    await _stub(channel).Compute(_hang_after(), timeout=DEADLINE).read()


async def _stalled_upload(channel: grpc.aio.Channel, worker) -> None:
    first_chunk = small_job("hostile", rows=6).chunks(max_chunk_bytes=16)[0]
    await _stub(channel).UploadShare(_hang_after(first_chunk), timeout=DEADLINE)


def _stub(channel: grpc.aio.Channel) -> worker_pb2_grpc.WorkerStub:
    return worker_pb2_grpc.WorkerStub(channel)


BAD_ARG, NOT_FOUND, EXISTS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
)
WORKER_CASES = [
    # bytes that are not the message, and messages with every field missing
    Case(
        "upload-undecodable", lambda c, w: _raw_upload(c, [GARBAGE]), BAD_ARG, "not a valid cpml.v1.ShareChunk message"
    ),
    Case("upload-job-id-not-utf8", lambda c, w: _raw_upload(c, [NOT_UTF8_ID]), BAD_ARG, "not UTF-8"),
    Case("upload-all-fields-zero", lambda c, w: _raw_upload(c, [b""]), BAD_ARG, "empty job_id"),
    Case("upload-no-messages", lambda c, w: _raw_upload(c, []), BAD_ARG, "stream was empty"),
    Case(
        "upload-no-spec",
        lambda c, w: _raw_upload(c, _frames([pb.ShareChunk(job_id="hostile")])),
        BAD_ARG,
        "carries no job spec",
    ),
    Case(
        "compute-undecodable",
        lambda c, w: _raw_compute(c, [GARBAGE]),
        BAD_ARG,
        "not a valid cpml.v1.RoundRequest message",
    ),
    Case("compute-all-fields-zero", lambda c, w: _raw_compute(c, [b""]), BAD_ARG, "empty job_id"),
    Case(
        "end-job-undecodable",
        lambda c, w: _raw_unary(c, "/cpml.v1.Worker/EndJob", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.EndJobRequest message",
    ),
    Case("end-job-all-fields-zero", lambda c, w: _raw_unary(c, "/cpml.v1.Worker/EndJob", b""), BAD_ARG, "empty job_id"),
    Case(
        "status-undecodable",
        lambda c, w: _raw_unary(c, "/cpml.v1.Worker/Status", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.StatusRequest message",
    ),
    # job ids
    Case(
        "job-id-too-long",
        _bad_upload(job_id="j" * 100_000),
        BAD_ARG,
        "(100000 characters) must be 1 to 128 printable characters",
    ),
    Case("job-id-control-characters", _bad_upload(job_id="a\nb\x1b[31m"), BAD_ARG, "printable characters"),
    Case(
        "compute-unknown-job",
        lambda c, w: compute(
            _stub(c), [serde.round_request_to_proto("never-uploaded", 0, np.zeros((2, 4, 1), dtype=np.uint32))]
        ),
        NOT_FOUND,
        "is not stored on this worker",
    ),
    # the job spec: the residue moduli
    Case(
        "spec-of-cpml-0.1-single-modulus",
        _bad_upload(modulus=P, moduli=[]),
        BAD_ARG,
        "job spec names the single modulus 33554393 (the cpml 0.1 format); this worker computes in several "
        "residue fields and needs the list `moduli`: upgrade the master",
    ),
    Case("spec-with-both-modulus-and-moduli", _bad_upload(modulus=P), BAD_ARG, "names the single modulus 33554393"),
    Case("moduli-empty", _bad_upload(moduli=[]), BAD_ARG, "job spec declares 0 residue moduli; send 1 to 8"),
    Case(
        "moduli-duplicate",
        _bad_upload(moduli=[P, Q, P]),
        BAD_ARG,
        f"job spec repeats a residue modulus ({P}, {Q}, {P}); the moduli must be distinct primes",
    ),
    Case("moduli-9", _bad_upload(moduli=list(range(3, 21, 2))), BAD_ARG, "declares 9 residue moduli; send 1 to 8"),
    Case("moduli-100000", _bad_upload(moduli=[P] * 100_000), BAD_ARG, "declares 100000 residue moduli; send 1 to 8"),
    Case("modulus-0", _bad_upload(moduli=[0]), BAD_ARG, "modulus 0 cannot travel as uint32"),
    Case("modulus-1", _bad_upload(moduli=[1]), BAD_ARG, "modulus 1 cannot travel as uint32"),
    Case("modulus-composite", _bad_upload(moduli=[33554395]), BAD_ARG, "Argument 'p' must be prime, not 33554395"),
    Case(
        "second-modulus-composite",
        _bad_upload(moduli=[P, 33554395]),
        BAD_ARG,
        f"moduli {P}, 33554395 are not supported: Argument 'p' must be prime, not 33554395",
    ),
    Case("modulus-2^31-or-more", _bad_upload(moduli=[2**31 + 11]), BAD_ARG, "must be an odd prime below 2^31"),
    Case(
        "second-modulus-a-32-bit-prime",
        _bad_upload(moduli=[P, 2**32 - 5]),
        BAD_ARG,
        "must be an odd prime below 2^31, not 4294967291",
    ),
    Case("modulus-2^64-1", _bad_upload(moduli=[P, U64]), BAD_ARG, f"modulus {U64} cannot travel as uint32"),
    # degree 0 is the exact sigmoid: no coefficients, logistic regression only
    Case("degree-0-with-coefficients", _bad_upload(degree=0), BAD_ARG, "needs 2x0 (one row per residue modulus"),
    Case(
        "degree-0-linear",
        _bad_upload(degree=0, model="linear"),
        BAD_ARG,
        "sigmoid degree 0 (the exact sigmoid) for model 'linear'; only logistic regression has a sigmoid",
    ),
    Case(
        "degree-huge",
        _bad_upload(degree=U32, coefficients=np.ones((2, 2), dtype=np.uint32)),
        BAD_ARG,
        f"sigmoid degree {U32}; the degree r must be between 0 and 32",
    ),
    # the job spec: the coefficient block, residues x (r+1)
    Case(
        "coefficients-wrong-length",
        _bad_upload(degree=2, coefficients=np.ones((2, 2), dtype=np.uint32)),
        BAD_ARG,
        "sigmoid coefficients are 2x2 but this job needs 2x3",
    ),
    Case(
        "coefficients-one-row-for-two-moduli",
        _bad_upload(coefficients=np.ones((1, 2), dtype=np.uint32)),
        BAD_ARG,
        "sigmoid coefficients are 1x2 but this job needs 2x2 (one row per residue modulus, r+1 columns",
    ),
    Case(
        "coefficients-one-row-too-many",
        _bad_upload(coefficients=np.ones((3, 2), dtype=np.uint32)),
        BAD_ARG,
        "sigmoid coefficients are 3x2 but this job needs 2x2",
    ),
    Case(
        "coefficients-flattened",
        _bad_upload(coefficients=np.ones((1, 4), dtype=np.uint32)),
        BAD_ARG,
        "sigmoid coefficients are 1x4 but this job needs 2x2",
    ),
    Case(
        "coefficients-bytes-disagree-with-shape",
        lambda c, w: _raw_upload(c, _frames([_short_coefficients()])),
        BAD_ARG,
        "the sigmoid coefficients has 12 bytes but shape 2x2 needs 16",
    ),
    Case(
        "coefficients-not-field-elements",
        _bad_upload(coefficients=np.array([[1, P], [1, 1]], dtype=np.uint32)),
        BAD_ARG,
        "1 value(s) >= the modulus 33554393",
    ),
    Case(
        "coefficients-not-below-residue-1s-modulus",
        _bad_upload(coefficients=np.array([[Q, Q], [1, Q]], dtype=np.uint32)),
        BAD_ARG,
        f"the sigmoid coefficients holds 1 value(s) >= the modulus {Q} of residue 1",
    ),
    Case("model-unknown", _bad_upload(model=""), BAD_ARG, "model ''; use one of logistic, linear"),
    Case(
        "shape-2^32-allocation-bomb",
        _bad_upload(rows=U32, cols=U32, data=b""),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "needs 147573952520956936200 bytes",
    ),  # 2 residues x (2^32-1)^2 x 4
    Case(
        "share-over-the-cap",
        _bad_upload(rows=100),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "needs 3200 bytes for its 100x4 share in 2 residue field(s)",
        settings={"share_bytes_cap": 1000},
    ),
    # blocks
    Case(
        "block-rows-times-cols-disagree-with-bytes",
        _bad_upload(data=b"\0" * 28),
        BAD_ARG,
        "has 28 bytes but shape 2x4 needs 32",
    ),
    Case(
        "block-odd-byte-count",
        _bad_upload(rows=1, cols=1, data=b"\0" * 5),
        BAD_ARG,
        "has 5 bytes but shape 1x1 needs 4",
    ),
    Case(
        "block-values-not-below-p",
        _bad_upload(data=np.full((2, 4), P, dtype="<u4").tobytes()),
        BAD_ARG,
        "share chunk at row 0 of residue 0 holds 8 value(s) >= the modulus 33554393",
    ),
    Case(
        "block-values-not-below-residue-1s-modulus",
        _upload_then(_next_chunk(0, 2, residue=1, value=Q)),
        BAD_ARG,
        f"share chunk at row 0 of residue 1 holds 8 value(s) >= the modulus {Q}",
    ),
    Case(
        "first-chunk-of-residue-1-not-below-its-modulus",
        _bad_upload(residue=1, data=np.full((2, 4), Q, dtype="<u4").tobytes()),
        BAD_ARG,
        f"of residue 1 holds 8 value(s) >= the modulus {Q}",
    ),
    Case(
        "chunk-residue-2-of-2",
        _upload_then(_next_chunk(0, 2, residue=2)),
        BAD_ARG,
        "share chunk at row 0 names residue 2 but job 'hostile' declared 2 moduli (residues 0..1)",
    ),
    Case(
        "chunk-residue-near-2^32",
        _upload_then(_next_chunk(2, 2, residue=U32)),
        BAD_ARG,
        f"names residue {U32} but job 'hostile' declared 2 moduli",
    ),
    Case(
        "first-chunk-residue-out-of-range",
        _bad_upload(residue=5),
        BAD_ARG,
        "names residue 5 but job 'hostile' declared 2 moduli",
    ),
    Case(
        "block-rows-near-2^32",
        _bad_upload(block_rows=U32, data=b""),
        BAD_ARG,
        "chunks must be non-empty and inside the share",
    ),
    Case(
        "chunk-row-offset-near-2^32",
        _upload_then(_next_chunk(U32, 1)),
        BAD_ARG,
        f"covers rows [{U32}, {U32 + 1}) but job 'hostile' declared 4 rows",
    ),
    Case(
        "chunk-wrong-columns",
        _upload_then(_next_chunk(2, 2, cols=3)),
        BAD_ARG,
        "has 3 columns but job 'hostile' declared 4",
    ),
    Case(
        "chunk-overlapping",
        _upload_then(_next_chunk(1, 2)),
        BAD_ARG,
        "share chunk at row 1 of residue 0 overlaps rows already received",
    ),
    Case(
        "chunk-overlapping-in-residue-1",
        _upload_then(_next_chunk(0, 4, residue=1), _next_chunk(3, 1, residue=1)),
        BAD_ARG,
        "share chunk at row 3 of residue 1 overlaps rows already received",
    ),
    Case(
        "chunk-repeated", _upload_then(_next_chunk(2, 1), _next_chunk(2, 1)), BAD_ARG, "overlaps rows already received"
    ),
    Case(
        "chunk-bad-crc32",
        _upload_then(_next_chunk(2, 2, crc=12345)),
        grpc.StatusCode.DATA_LOSS,
        "fails its CRC-32 check",
    ),
    Case(
        "upload-truncated",
        _upload_then(),
        grpc.StatusCode.DATA_LOSS,
        "6 of 8 rows missing (truncated stream: residue 0 lacks 2 of its 4 rows, residue 1 lacks 4 of its 4 rows)",
    ),
    Case(
        "upload-without-residue-1",
        _upload_then(first_rows=4),
        grpc.StatusCode.DATA_LOSS,
        "ended with 4 of 8 rows missing (truncated stream: residue 1 lacks 4 of its 4 rows); upload the whole share",
    ),
    Case(
        "upload-residue-1-truncated",
        _upload_then(_next_chunk(2, 2), _next_chunk(0, 3, residue=1)),
        grpc.StatusCode.DATA_LOSS,
        "1 of 8 rows missing (truncated stream: residue 1 lacks 1 of its 4 rows)",
    ),
    Case(
        "chunk-of-another-job",
        _upload_then(_next_chunk(2, 2, job_id="other")),
        BAD_ARG,
        "upload each job's share on its own stream",
    ),
    # uploads racing each other and the compute stream
    Case("upload-of-a-stored-job", _stored_then_upload_again, EXISTS, "'hostile' is already stored"),
    Case("concurrent-upload-of-one-job", _concurrent_upload, EXISTS, "'hostile' is already being uploaded"),
    Case(
        "compute-before-upload-finished",
        _compute_during_upload,
        grpc.StatusCode.FAILED_PRECONDITION,
        "still being uploaded; wait for UploadShare's reply",
    ),
    # rounds
    Case(
        "weights-shape-near-2^32",
        _compute_on_stored(_weights(0, rows=U32, cols=U32, data=b"")),
        BAD_ARG,
        f"round 0 weights are {U32}x{U32} but this job needs 8x1 (residues x d rows, classes x r columns)",
    ),
    Case(
        "weights-of-one-field-only",
        _compute_on_stored(_weights(0, rows=4)),
        BAD_ARG,
        "round 0 weights are 4x1 but this job needs 8x1",
    ),
    Case(
        "weights-bytes-disagree-with-shape",
        _compute_on_stored(_weights(0, data=b"\0" * 28)),
        BAD_ARG,
        "round 0 weights has 28 bytes but shape 2x4x1 needs 32",
    ),
    Case(
        "weights-not-field-elements",
        _compute_on_stored(_weights(0, value=U32)),
        BAD_ARG,
        "round 0 weights holds 8 value(s) >= the modulus",
    ),
    Case(
        "weights-not-below-residue-1s-modulus",
        _compute_on_stored(_weights(0, data=np.repeat(np.array([SECRET, Q], dtype="<u4"), 4).tobytes())),
        BAD_ARG,
        f"round 0 weights holds 4 value(s) >= the modulus {Q} of residue 1",
    ),
    Case(
        "round-repeated",
        _compute_on_stored(_weights(3), _weights(3)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "round 3 stage 0 of job 'hostile' arrived after round 3 stage 0",
    ),
    Case(
        "round-backwards",
        _compute_on_stored(_weights(5), _weights(2)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "(round, stage) on a stream must strictly increase",
    ),
    Case(
        "stage-1-of-a-polynomial-job",
        _compute_on_stored(pb.RoundRequest(job_id="hostile", round=0, stage=1)),
        BAD_ARG,
        "round 0 asks for stage 1, but this job's rounds have stage 0 only",
    ),
    Case(
        "round-huge-then-any",
        _compute_on_stored(_weights(U32), _weights(0)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"arrived after round {U32}",
    ),
    Case(
        "two-jobs-on-one-compute-stream",
        _compute_on_stored(_weights(0), pb.RoundRequest(job_id="other", round=1)),
        BAD_ARG,
        "open one stream per job",
    ),
    Case(
        "job-ended-while-computing",
        _end_job_while_computing,
        NOT_FOUND,
        "was ended or expired while its compute stream was open",
    ),
    # streams that stall hold nothing for long
    Case(
        "compute-stream-that-never-sends",
        _silent_compute,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the compute stream sent nothing for 0.3 s (--job-idle-seconds)",
        settings={"job_idle_seconds": 0.3},
    ),
    Case(
        "upload-that-stalls-halfway",
        _stalled_upload,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the share upload stream sent nothing for 0.3 s",
        settings={"job_idle_seconds": 0.3},
    ),
]


def _short_coefficients() -> pb.ShareChunk:
    chunk = _spec_chunk()
    chunk.spec.coefficients.data = chunk.spec.coefficients.data[:12]
    return chunk


async def _good_worker_job(channel: grpc.aio.Channel, worker) -> None:
    """Upload a share, compute a round, check it against the protocol function, end the job."""
    job = small_job("good-job", rows=9, seed=7)
    stub = _stub(channel)
    await upload(stub, job.chunks(max_chunk_bytes=32))
    results = await compute(stub, [serde.round_request_to_proto("good-job", 1, job.weights(1))])
    np.testing.assert_array_equal(serde.round_result_from_proto(results[0], MODULI, job.spec.cols), job.expected(1))
    assert (await stub.EndJob(pb.EndJobRequest(job_id="good-job"), timeout=DEADLINE)).existed
    assert worker.store.used_bytes == 0 and len(worker.store) == 0  # the refusal left nothing reserved


@pytest.mark.parametrize("case", _params(WORKER_CASES))
async def test_worker_refuses_with_a_precise_status_and_keeps_serving(case):
    good = small_job("good-job", rows=9, seed=7)
    with capture_logs() as logs:
        async with running_worker(**case.settings) as worker, grpc.aio.insecure_channel(worker.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await case.send(channel, worker)
            assert err.value.code() == case.code, err.value.details()
            assert case.says in err.value.details()
            await _good_worker_job(channel, worker)
    secrets = {str(SECRET)} | {str(v) for v in good.share.ravel() if v > 10**6}
    _assert_nothing_secret_logged(logs, secrets)


# --- the master reading a hostile worker's results -------------------------------------------------------


class _LyingWorker(worker_pb2_grpc.WorkerServicer):
    """A compromised worker: answers every round at once with the same result block, whatever it was sent."""

    def __init__(self, result: pb.FieldBlock) -> None:
        self.result = result

    async def Compute(self, request_iterator, context):
        async for request in request_iterator:
            yield pb.RoundResult(job_id=request.job_id, round=request.round, result=self.result)


@contextlib.asynccontextmanager
async def _lying_worker(result: pb.FieldBlock):
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(_LyingWorker(result), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _result_block(rows: int = 2, cols: int = 4, residue_1_value: int = 0, data: bytes | None = None):
    values = np.zeros((rows, cols), dtype="<u4")
    values[-1, 0] = residue_1_value
    return pb.FieldBlock(rows=rows, cols=cols, data=values.tobytes() if data is None else data)


@pytest.mark.parametrize(
    ("result", "says"),
    [
        pytest.param(
            _result_block(residue_1_value=Q),
            f"round 0 result holds 1 value(s) >= the modulus {Q} of residue 1",
            id="residue-1-element-not-below-its-modulus",
        ),
        pytest.param(_result_block(residue_1_value=U32), f"1 value(s) >= the modulus {P}", id="not-a-uint32-element"),
        pytest.param(
            _result_block(rows=1),
            "round 0 result is 1x4 but this job needs 2x4 (one row per residue modulus)",
            id="one-field-only",
        ),
        pytest.param(_result_block(rows=3), "round 0 result is 3x4 but this job needs 2x4", id="a-residue-too-many"),
        pytest.param(
            _result_block(data=b"\0" * 28),
            "round 0 result has 28 bytes but shape 2x4 needs 32",
            id="bytes-disagree-with-shape",
        ),
    ],
)
async def test_the_master_drops_a_worker_whose_result_is_not_the_jobs_residues(result, says):
    job = small_job("lied-to")
    async with contextlib.AsyncExitStack() as stack:
        # the honest workers answer late, so the liar's reply is always read first
        honest = [await stack.enter_async_context(running_worker(fault_reply_delay=0.3)) for _ in range(3)]
        liar = await stack.enter_async_context(_lying_worker(result))
        for server in honest:
            async with grpc.aio.insecure_channel(server.address) as channel:
                await upload(_stub(channel), job.chunks())
        cluster = await stack.enter_async_context(Cluster([liar, *(s.address for s in honest)]))
        streams = await stack.enter_async_context(
            ComputeStreams(
                cluster.workers,
                job.job_id,
                job.moduli,
                (job.spec.cols,),
                threshold=3,
                round_timeout=5,
                stream_timeout=30,
            )
        )
        with capture_logs() as logs:
            replies, _ = await streams.run_round(0, np.stack([job.weights(0)] * 4))
    assert sorted(replies) == [1, 2, 3]  # decoded from the honest three; nothing of the liar's mixed in
    for reply in replies.values():
        np.testing.assert_array_equal(reply, job.expected(0))
    liar_handle = cluster.workers[0]
    assert not liar_handle.alive and liar_handle.failure.startswith("sent a malformed result: ")
    assert not liar_handle.rejoinable  # a worker that misbehaved is never taken back
    assert says in liar_handle.failure
    assert [e["worker"] for e in logs if e["event"] == "worker dropped"] == [0]


async def test_a_refused_upload_is_read_to_its_end_so_the_refusal_arrives_intact():
    # a grpc.aio client whose write is under way as the server ends the stream reports "INTERNAL: Internal error
    # from Core", not the server's status (grpc/grpc#36066): the worker reads a refused upload to its end first
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        chunks = small_job("hostile").chunks()
        await upload(_stub(channel), chunks)
        sent = []

        async def slowly():
            for chunk in chunks:
                sent.append(chunk)
                yield chunk
                await asyncio.sleep(0.1)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _stub(channel).UploadShare(slowly(), timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, err.value.details()
    assert len(chunks) > 2 and len(sent) == len(chunks)


async def test_chunks_out_of_order_are_placed_by_their_offset():
    job = small_job("shuffled", rows=9, seed=3)
    chunks = job.chunks(max_chunk_bytes=16)
    shuffled = [chunks[0], *reversed(chunks[1:])]  # the spec still comes first
    assert {c.residue for c in shuffled[1:5]} == {1}  # residue 1's rows arrive before most of residue 0's
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        await upload(_stub(channel), shuffled)
        results = await compute(_stub(channel), [serde.round_request_to_proto("shuffled", 0, job.weights(0))])
    np.testing.assert_array_equal(serde.round_result_from_proto(results[0], MODULI, 4), job.expected(0))


def _chunk_of_exactly(size: int) -> bytes:
    """A serialized ShareChunk (spec included) of exactly `size` bytes: rows of one column, id length tuned."""
    for rows in range(max(1, (size - 200) // 4), size // 4 + 1):
        for id_length in range(1, 9):
            chunk = _spec_chunk(job_id="x" * id_length, moduli=(P,), rows=rows, cols=1)  # one chunk: a whole share
            if chunk.ByteSize() == size:
                return chunk.SerializeToString()
    raise AssertionError(f"no chunk of exactly {size} bytes")


async def test_a_message_at_the_size_limit_is_served_and_one_byte_more_is_resource_exhausted():
    limit = 4096
    async with running_worker(max_message_bytes=limit) as worker, grpc.aio.insecure_channel(worker.address) as channel:
        reply = pb.UploadReply.FromString(await _raw_upload(channel, [_chunk_of_exactly(limit)]))
        assert reply.stored_bytes > 3900
        await _stub(channel).EndJob(pb.EndJobRequest(job_id=reply.job_id), timeout=DEADLINE)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _raw_upload(channel, [_chunk_of_exactly(limit + 1)])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await _good_worker_job(channel, worker)


async def test_abandoned_streams_leave_no_task_and_no_reservation_behind():
    job = small_job("abandoned", rows=9)
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        await upload(_stub(channel), job.chunks())
        baseline = len(asyncio.all_tasks())
        for attempt in range(10):
            call = _stub(channel).Compute(
                _hang_after(serde.round_request_to_proto("abandoned", 0, job.weights(0))), timeout=DEADLINE
            )
            assert (await call.read()).round == 0
            call.cancel()
            first_chunk = small_job(f"half-{attempt}", rows=9).chunks(max_chunk_bytes=16)[0]
            half = _stub(channel).UploadShare(_hang_after(first_chunk), timeout=DEADLINE)
            await asyncio.sleep(0.02)
            half.cancel()
        for _ in range(200):
            if len(asyncio.all_tasks()) <= baseline and worker.store.used_bytes == job.share.nbytes:
                break
            await asyncio.sleep(0.01)
        assert len(asyncio.all_tasks()) <= baseline
        assert worker.store.used_bytes == job.share.nbytes  # only the stored job: every half upload was freed
        await _stub(channel).EndJob(pb.EndJobRequest(job_id="abandoned"), timeout=DEADLINE)
        await _good_worker_job(channel, worker)


async def test_concurrent_compute_streams_share_one_prepared_share(monkeypatch):
    calls = []
    prepare = compute_scheduler.prepare_share
    monkeypatch.setattr(compute_scheduler, "prepare_share", lambda *args: calls.append(1) or prepare(*args))
    job = small_job("shared", rows=9)
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        await upload(_stub(channel), job.chunks())
        streams = [
            compute(_stub(channel), [serde.round_request_to_proto("shared", k, job.weights(k))]) for k in range(6)
        ]
        for k, results in enumerate(await asyncio.gather(*streams)):
            np.testing.assert_array_equal(serde.round_result_from_proto(results[0], MODULI, 4), job.expected(k))
    assert len(calls) == 1  # six streams, one float64 copy of the share (not six)


# --- allocation bombs: refused before anything is allocated ---------------------------------------------------


def _mpc_join(job_id: str = "hostile", addresses: list[str] | None = None, **fields) -> mpc_pb.MpcJoinRequest:
    spec = _party_spec()
    request = mpc_serde.join_to_proto(job_id, spec, addresses or ["127.0.0.1:1"] * 3)
    for name, value in fields.items():
        if name in ("peers", "moduli"):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


@pytest.mark.parametrize("service", ["worker-upload", "mpc-join", "mpc-join-bh08-rounds", "aggregation-join"])
async def test_allocation_bombs_are_refused_before_allocating(service):
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        if service == "worker-upload":  # 16 GiB: more than the cap, but a size malloc might grant
            send = _raw_upload(channel, _frames([_spec_chunk(rows=2**20, cols=2**12, data=b"")]))
        elif service == "mpc-join":
            send = _raw_unary(channel, "/cpml.v1.Mpc/Join", _mpc_join(rows=2**20, cols=2**12).SerializeToString())
        elif service == "mpc-join-bh08-rounds":
            send = _raw_unary(channel, "/cpml.v1.Mpc/Join", _mpc_join(protocol="bh08", rounds=U32).SerializeToString())
        else:
            send = _aggregation_bomb()
        tracemalloc.start()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await send
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        assert peak < 16 << 20, peak  # the server never tried to build the array it was asked for
        await _good_worker_job(channel, worker)


async def _aggregation_bomb() -> None:
    async with _aggregation(dimension=None) as (stub, _):
        await stub.Join(agg_pb.JoinRequest(run_id="svc", name="a", records=3, dimension=U32), timeout=DEADLINE)


# --- cpml.v1.Mpc ---------------------------------------------------------------------------------------------


@functools.cache
def _mpc_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0) / 8
    return x[:60], y[:60]


def _mpc_plan() -> Plan:
    return Plan.case2(9, iterations=1)


def _mpc_session(protocol: str = "bgw") -> MpcSession:
    x, y = _mpc_data()
    return MpcSession.create(MpcPlan(protocol, 3, 1, groups=1), RunInputs(_mpc_plan(), x, y, seed=3))


@functools.cache
def _party_spec() -> PartySpec:
    """Worker 0's part in the bgw job the hostile messages are about."""
    return _mpc_session().party_spec(0)


@pytest.fixture(scope="module")
def mpc_reference() -> np.ndarray:
    x, y = _mpc_data()
    return simulate(RunInputs(_mpc_plan(), x, y, seed=3)).weights


async def _good_mpc_job(addresses: list[str], reference: np.ndarray) -> None:
    session = _mpc_session("bh08")
    async with Cluster(addresses, timeouts=Timeouts(connect=10, upload=30, round=30, control=5)) as cluster:
        await cluster.wait_healthy()
        await run_mpc_job(session, cluster, chunk_bytes=4096, round_timeout=30.0)
    assert np.array_equal(session.weights, reference)


def _envelope(
    sender: int = MASTER,
    receiver: int = 0,
    kind: Kind = Kind.WEIGHTS,
    round_number: int = 0,
    step: int = 0,
    payload: np.ndarray | None = None,
    job_id: str = "hostile",
) -> mpc_pb.MpcEnvelope:
    rows, residues = _party_spec().rows, _party_spec().residues
    if payload is None:  # every payload has a leading residue axis
        payload = np.full((residues, 30, 1) if kind is Kind.WEIGHTS else (residues, rows, 1), SECRET, dtype=np.uint32)
    return mpc_serde.envelope_to_proto(job_id, Message(sender, receiver, kind, round_number, step, payload))


def _raw_envelope(**fields) -> mpc_pb.MpcEnvelope:
    """An envelope with a field set to what envelope_to_proto would never write (crc32 kept right)."""
    envelope = _envelope()
    for name, value in fields.items():
        if name == "shape":
            del envelope.payload.shape[:]
            envelope.payload.shape.extend(value)
        else:
            setattr(envelope, name, value)
    return envelope


async def _joined_then(
    channel: grpc.aio.Channel, addresses: list[str], *envelopes: Callable[[], mpc_pb.MpcEnvelope]
) -> None:
    """Join job "hostile" on worker 0, deliver the envelopes (the last must be refused), then Leave."""
    stub = mpc_pb2_grpc.MpcStub(channel)
    await stub.Join(_mpc_join(addresses=addresses), timeout=DEADLINE)
    try:
        for envelope in envelopes:
            await stub.Deliver(envelope(), timeout=DEADLINE)
    finally:
        assert (await stub.Leave(mpc_pb.MpcLeaveRequest(job_id="hostile"), timeout=DEADLINE)).existed


def _deliver(*envelopes: Callable[[], mpc_pb.MpcEnvelope]) -> Callable[..., Awaitable[object]]:
    return lambda channel, addresses: _joined_then(channel, addresses, *envelopes)


def _join(**fields) -> Callable[..., Awaitable[object]]:
    return lambda channel, addresses: _raw_unary(
        channel, "/cpml.v1.Mpc/Join", _mpc_join(addresses=addresses, **fields).SerializeToString()
    )


async def _results_twice(channel: grpc.aio.Channel, addresses: list[str]) -> None:
    stub = mpc_pb2_grpc.MpcStub(channel)
    await stub.Join(_mpc_join(addresses=addresses), timeout=DEADLINE)
    first = stub.Results(mpc_pb.MpcResultsRequest(job_id="hostile"), timeout=DEADLINE)
    try:
        await asyncio.sleep(0.05)  # the first stream is open
        await stub.Results(mpc_pb.MpcResultsRequest(job_id="hostile"), timeout=DEADLINE).read()
    finally:
        first.cancel()
        await stub.Leave(mpc_pb.MpcLeaveRequest(job_id="hostile"), timeout=DEADLINE)


async def _join_same_job_twice(channel: grpc.aio.Channel, addresses: list[str]) -> None:
    stub = mpc_pb2_grpc.MpcStub(channel)
    await stub.Join(_mpc_join(addresses=addresses), timeout=DEADLINE)
    try:
        await stub.Join(_mpc_join(addresses=addresses), timeout=DEADLINE)
    finally:
        await stub.Leave(mpc_pb.MpcLeaveRequest(job_id="hostile"), timeout=DEADLINE)


def _data_rows(first_row: int, rows: int) -> mpc_pb.MpcEnvelope:
    d, residues = _party_spec().d, _party_spec().residues
    return _envelope(kind=Kind.DATA, step=first_row, payload=np.full((residues, rows, d), SECRET, dtype=np.uint32))


_RESHARE = {"sender": 1, "kind": Kind.RESHARE}
MPC_CASES = [
    Case(
        "join-undecodable",
        lambda c, a: _raw_unary(c, "/cpml.v1.Mpc/Join", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.MpcJoinRequest message",
    ),
    Case("join-all-fields-zero", lambda c, a: _raw_unary(c, "/cpml.v1.Mpc/Join", b""), BAD_ARG, "empty job_id"),
    Case("join-job-id-not-utf8", lambda c, a: _raw_unary(c, "/cpml.v1.Mpc/Join", NOT_UTF8_ID), BAD_ARG, "not UTF-8"),
    Case("join-job-id-too-long", _join(job_id="j" * 5000), BAD_ARG, "(5000 characters) must be 1 to 128"),
    Case(
        "join-of-cpml-0.1-single-modulus",
        _join(modulus=P, moduli=[]),
        BAD_ARG,
        "names the single modulus 33554393 (the cpml 0.1 format)",
    ),
    Case("join-no-moduli", _join(moduli=[]), BAD_ARG, "declares 0 residue moduli; send 1 to 8"),
    Case("join-moduli-duplicate", _join(moduli=[P, P]), BAD_ARG, "repeats a residue modulus"),
    Case(
        "join-coefficients-for-other-moduli",
        _join(moduli=[P]),
        BAD_ARG,
        "coefficients holds 2 residue slice(s) but the job computes modulo 1 prime(s)",
    ),
    Case("join-modulus-0", _join(moduli=[P, 0]), BAD_ARG, "modulus 0 cannot travel as uint32"),
    Case("join-modulus-1", _join(moduli=[P, 1]), BAD_ARG, "modulus 1 cannot travel as uint32"),
    Case("join-modulus-composite", _join(moduli=[P, 33554395]), BAD_ARG, "Argument 'p' must be prime, not 33554395"),
    Case("join-modulus-2^31-or-more", _join(moduli=[P, 2**31 + 11]), BAD_ARG, "must be an odd prime below 2^31"),
    Case("join-modulus-2^64-1", _join(moduli=[P, U64]), BAD_ARG, "cannot travel as uint32"),
    Case("join-degree-0", _join(degree=0), BAD_ARG, "sigmoid degree 0; the degree r must be between 1 and 32"),
    Case("join-degree-huge", _join(degree=U32), BAD_ARG, "the degree r must be between 1 and 32"),
    Case("join-coefficients-wrong-length", _join(degree=2), BAD_ARG, "'coefficients' must hold r+1 = 3 values"),
    Case("join-shape-near-2^32", _join(rows=U32, cols=U32), grpc.StatusCode.RESOURCE_EXHAUSTED, "bytes for its party"),
    Case(
        "join-bh08-rounds-near-2^32",
        _join(protocol="bh08", rounds=U32),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "fewer rounds per job",
    ),
    Case("join-unknown-protocol", _join(protocol="spdz"), BAD_ARG, "'protocol' must be one of bgw, bh08"),
    Case("join-first-index-near-2^32", _join(first=U32 - 2), BAD_ARG, "worker indices must stay below 2^31"),
    Case("join-group-of-401", _join(t=200, peers=["127.0.0.1:1"] * 401), BAD_ARG, "groups have at most 255"),
    Case("join-peers-disagree-with-t", _join(peers=["127.0.0.1:1"] * 2), BAD_ARG, "'group_size' must be 2T+1 = 3"),
    Case(
        "join-peer-address-empty",
        _join(peers=["", "127.0.0.1:1", "127.0.0.1:1"]),
        BAD_ARG,
        "every peer must be a host:port",
    ),
    Case("join-same-job-twice", _join_same_job_twice, EXISTS, "already exists on this worker; Leave it first"),
    Case(
        "deliver-undecodable",
        lambda c, a: _raw_unary(c, "/cpml.v1.Mpc/Deliver", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.MpcEnvelope message",
    ),
    Case(
        "deliver-to-a-job-never-joined",
        lambda c, a: _raw_unary(c, "/cpml.v1.Mpc/Deliver", _envelope(job_id="never").SerializeToString()),
        NOT_FOUND,
        "Join it first",
    ),
    Case(
        "deliver-all-fields-zero",
        _deliver(lambda: mpc_pb.MpcEnvelope(job_id="hostile")),
        BAD_ARG,
        "envelope kind 0 is not a known MPC message kind",
    ),
    Case(
        "deliver-kind-out-of-range",
        _deliver(lambda: _raw_envelope(kind=99)),
        BAD_ARG,
        "envelope kind 99 is not a known",
    ),
    Case(
        "deliver-bad-crc32",
        _deliver(lambda: _raw_envelope(crc32=1)),
        grpc.StatusCode.DATA_LOSS,
        "failed its CRC-32 check",
    ),
    Case(
        "deliver-shape-near-2^32",
        _deliver(lambda: _raw_envelope(shape=[U32, U32])),
        BAD_ARG,
        "needs 73786976260478468100 (4-byte",
    ),
    Case("deliver-rank-4", _deliver(lambda: _raw_envelope(shape=[1, 1, 1, 30])), BAD_ARG, "has rank 4"),
    Case(
        "deliver-values-not-below-p",
        _deliver(lambda: _envelope(payload=np.full((2, 30, 1), P, dtype=np.uint32))),
        BAD_ARG,
        "not field elements",
    ),
    Case(
        "deliver-value-of-residue-0-in-residue-1",
        _deliver(
            lambda: _envelope(payload=np.stack([np.full((30, 1), SECRET), np.full((30, 1), Q)]).astype(np.uint32))
        ),
        BAD_ARG,
        f"value(s) >= the modulus {Q} of residue 1",
    ),
    Case(
        "deliver-single-field-payload",
        _deliver(lambda: _envelope(payload=np.zeros((30, 1), dtype=np.uint32))),
        BAD_ARG,
        "weights payload holds 30 residue slice(s) but the job computes modulo 2 prime(s)",
    ),
    Case(
        "deliver-wrong-shape-for-kind",
        _deliver(lambda: _envelope(payload=np.zeros((2, 29, 1), dtype=np.uint32))),
        BAD_ARG,
        "weights payload must have shape (2, 30, 1)",
    ),
    Case(
        "deliver-sender-out-of-range",
        _deliver(lambda: _envelope(sender=7, kind=Kind.RESHARE)),
        BAD_ARG,
        "does not accept reshare from sender 7",
    ),
    Case(
        "deliver-receiver-out-of-range",
        _deliver(lambda: _envelope(receiver=2**31 - 1)),
        BAD_ARG,
        "message for worker 2147483647 delivered to worker 0",
    ),
    Case(
        "deliver-sender-equals-receiver",
        _deliver(lambda: _envelope(sender=0, kind=Kind.RESHARE)),
        BAD_ARG,
        "a party's own share never leaves it",
    ),
    Case(
        "deliver-master-kind-from-a-peer",
        _deliver(lambda: _envelope(sender=1)),
        BAD_ARG,
        "does not accept weights from sender 1",
    ),
    Case(
        "deliver-kind-of-the-other-protocol",
        _deliver(lambda: _envelope(sender=1, kind=Kind.MASKED)),
        BAD_ARG,
        "a bgw worker does not accept masked messages",
    ),
    Case(
        "deliver-round-near-2^32",
        _deliver(lambda: _envelope(**_RESHARE, round_number=U32)),
        grpc.StatusCode.OUT_OF_RANGE,
        f"reshare for round {U32} reached worker 0, which is on round 0",
    ),
    Case(
        "deliver-round-two-ahead",
        _deliver(lambda: _envelope(**_RESHARE, round_number=2)),
        grpc.StatusCode.OUT_OF_RANGE,
        "never more than one round ahead",
    ),
    Case(
        "deliver-step-out-of-range",
        _deliver(lambda: _envelope(**_RESHARE, step=5)),
        BAD_ARG,
        "multiplication step must be between 0 and 0, not 5",
    ),
    Case(
        "deliver-duplicate",
        _deliver(lambda: _envelope(**_RESHARE), lambda: _envelope(**_RESHARE)),
        EXISTS,
        "already has the reshare message of round 0, step 0 from sender 1",
    ),
    Case(
        "deliver-data-rows-twice",
        _deliver(lambda: _data_rows(0, 2), lambda: _data_rows(1, 2)),
        EXISTS,
        "rows 1..2 of the data share of MPC job 'hostile' were already delivered",
    ),
    Case(
        "deliver-data-rows-outside-the-share",
        _deliver(lambda: _data_rows(U32 - 1, 1)),
        BAD_ARG,
        "data rows must lie inside",
    ),
    Case(
        "results-for-a-job-never-joined",
        lambda c, a: _raw_stream_read(
            c, "/cpml.v1.Mpc/Results", mpc_pb.MpcResultsRequest(job_id="never").SerializeToString()
        ),
        NOT_FOUND,
        "Join it first",
    ),
    Case("results-twice", _results_twice, grpc.StatusCode.FAILED_PRECONDITION, "already has an open Results stream"),
    Case(
        "leave-undecodable",
        lambda c, a: _raw_unary(c, "/cpml.v1.Mpc/Leave", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.MpcLeaveRequest message",
    ),
]


async def _raw_stream_read(channel: grpc.aio.Channel, method: str, frame: bytes) -> list[bytes]:
    call = channel.unary_stream(method, request_serializer=_identity, response_deserializer=_identity)
    return [reply async for reply in call(frame, timeout=DEADLINE)]


@pytest.mark.parametrize("case", _params(MPC_CASES))
async def test_mpc_refuses_with_a_precise_status_and_keeps_serving(case, mpc_reference):
    with capture_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(running_worker()) for _ in range(3)]
            addresses = [w.address for w in workers]
            async with grpc.aio.insecure_channel(addresses[0]) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await case.send(channel, addresses)
            assert err.value.code() == case.code, err.value.details()
            assert case.says in err.value.details()
            assert not workers[0].mpc._jobs and workers[0].store.used_bytes == 0
            await _good_mpc_job(addresses, mpc_reference)
            assert all(not w.mpc._jobs and w.store.used_bytes == 0 for w in workers)
    _assert_nothing_secret_logged(logs, {str(SECRET)})


async def test_mpc_late_and_future_messages_are_not_buffered():
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        stub = mpc_pb2_grpc.MpcStub(channel)
        await stub.Join(_mpc_join(addresses=[worker.address, "127.0.0.1:1", "127.0.0.1:1"]), timeout=DEADLINE)
        job = worker.mpc._jobs["hostile"]
        job.party._round = 5  # as if five rounds were done: what a flood of old or far-ahead messages meets
        for round_number in range(5):
            await stub.Deliver(_envelope(**_RESHARE, round_number=round_number), timeout=DEADLINE)  # late: dropped
        for round_number in range(7, 60):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Deliver(_envelope(**_RESHARE, round_number=round_number), timeout=DEADLINE)
            assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        await asyncio.sleep(0.05)
        assert job.inbox.qsize() == 0 and job.compute_seconds == 0.0  # the party never saw any of them
        await stub.Deliver(_envelope(**_RESHARE, round_number=6), timeout=DEADLINE)  # one ahead: kept
        assert job.seen == {(Kind.RESHARE, 6, 0, 1)} and job.failure is None
        await stub.Leave(mpc_pb.MpcLeaveRequest(job_id="hostile"), timeout=DEADLINE)


async def test_leaving_a_job_ends_its_open_results_stream():
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        stub = mpc_pb2_grpc.MpcStub(channel)
        await stub.Join(_mpc_join(addresses=[worker.address, "127.0.0.1:1", "127.0.0.1:1"]), timeout=DEADLINE)
        results = stub.Results(mpc_pb.MpcResultsRequest(job_id="hostile"), timeout=DEADLINE)
        for _ in range(200):
            if worker.mpc._jobs["hostile"].results_open:
                break
            await asyncio.sleep(0.005)
        assert (await stub.Leave(mpc_pb.MpcLeaveRequest(job_id="hostile"), timeout=DEADLINE)).existed
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await results.read()  # it used to wait for its deadline, holding the party's arrays
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "MPC job 'hostile' was left or expired on this worker" in err.value.details()
        assert worker.store.used_bytes == 0


# --- cpml.v1.Aggregation -------------------------------------------------------------------------------------

SIZES = (30, 90)


@contextlib.asynccontextmanager
async def _aggregation(dimension: int | None = None):
    """A WD-DP run for two parties (the first to join fixes the dimension unless given); yields (stub, rounds)."""
    # no server momentum: the next task's weights are then the weighted average itself
    settings = RunSettings("svc", len(SIZES), 3, Budget(2.0, 1e-5), LocalSettings(l2=0.0), momentum=0.0)
    rounds: list = []
    coordinator = Coordinator(
        AggregationSession(settings, dimension), round_timeout=5.0, join_timeout=10.0, on_round=rounds.append
    )
    server = AggregationServer(coordinator, "127.0.0.1:0")
    address = await server.start()
    driver = asyncio.create_task(coordinator.run())
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield _Stub(channel), rounds
    finally:
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
        await server.stop(0)


def _update(
    party_id: str,
    round_number: int = 1,
    records: int = SIZES[0],
    weights=None,
    vector: agg_pb.Vector | None = None,
    run_id: str = "svc",
) -> agg_pb.UpdateRequest:
    if vector is None:
        vector = dp_serde.vector_to_proto(np.full(3, SECRET_WEIGHT) if weights is None else np.asarray(weights))
    return agg_pb.UpdateRequest(run_id=run_id, party_id=party_id, round=round_number, records=records, weights=vector)


def _join_request(name: str = "intruder", records: int = 10, dimension: int = 3, run_id: str = "svc"):
    return agg_pb.JoinRequest(run_id=run_id, name=name, records=records, dimension=dimension)


@dataclass(frozen=True)
class AggCase:
    """A hostile call, before the honest parties join (`early`) or during round 1 (gets their ids)."""

    id: str
    send: Callable[..., Awaitable[object]]
    code: grpc.StatusCode
    says: str
    early: bool = False
    submitted_first: bool = False  # the case itself made party 1's honest submission


def _early_join(**fields) -> Callable[..., Awaitable[object]]:
    return lambda stub, ids: stub.Join(_join_request(**fields), timeout=DEADLINE)


def _submit(make: Callable[[list[str]], agg_pb.UpdateRequest]) -> Callable[..., Awaitable[object]]:
    return lambda stub, ids: stub.SubmitUpdate(make(ids), timeout=DEADLINE)


async def _submit_twice(stub, ids) -> None:
    honest = _update(ids[1], records=SIZES[1], weights=[5.0, 5.0, 5.0])
    await stub.SubmitUpdate(honest, timeout=DEADLINE)
    await stub.SubmitUpdate(honest, timeout=DEADLINE)


AGG_CASES = [
    AggCase(
        "join-undecodable",
        lambda stub, ids: _raw_agg_call(stub, "Join", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.JoinRequest message",
        early=True,
    ),
    AggCase(
        "join-run-id-not-utf8",
        lambda stub, ids: _raw_agg_call(stub, "Join", NOT_UTF8_ID),
        BAD_ARG,
        "not UTF-8",
        early=True,
    ),
    AggCase(
        "join-all-fields-zero",
        lambda stub, ids: stub.Join(agg_pb.JoinRequest(), timeout=DEADLINE),
        NOT_FOUND,
        "Run '' is not served here",
        early=True,
    ),
    AggCase(
        "join-run-id-of-2-mb",
        _early_join(run_id="r" * 2_000_000),
        NOT_FOUND,
        "(2000000 characters) is not served here",
        early=True,
    ),
    AggCase(
        "join-name-of-1-mb",
        _early_join(name="n" * 1_000_000),
        BAD_ARG,
        "(1000000 characters) must be 1 to 128 printable characters",
        early=True,
    ),
    AggCase("join-name-control-characters", _early_join(name="a\x1b[2J"), BAD_ARG, "printable characters", early=True),
    AggCase("join-dimension-0", _early_join(dimension=0), BAD_ARG, "has 0 features (with bias)", early=True),
    AggCase("join-dimension-near-2^32", _early_join(dimension=U32), BAD_ARG, "so at most 523776", early=True),
    AggCase("join-records-0", _early_join(records=0), BAD_ARG, "must hold at least 1 record, not 0", early=True),
    AggCase(
        "join-records-2^64-1", _early_join(records=U64), BAD_ARG, "at most 2^53 = 9007199254740992 records", early=True
    ),
    AggCase(
        "join-after-the-run-started",
        lambda stub, ids: stub.Join(_join_request(), timeout=DEADLINE),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "has started; no more parties can join",
    ),
    AggCase(
        "task-for-a-round-far-ahead",
        lambda stub, ids: stub.NextTask(
            agg_pb.TaskRequest(run_id="svc", party_id=ids[0], after_round=U32), timeout=DEADLINE
        ),
        grpc.StatusCode.OUT_OF_RANGE,
        f"asks for a round after {U32}, but run 'svc' is at round 1",
    ),
    AggCase(
        "task-for-a-party-never-issued",
        lambda stub, ids: stub.NextTask(agg_pb.TaskRequest(run_id="svc", party_id="f" * 32), timeout=DEADLINE),
        NOT_FOUND,
        "call Join first",
    ),
    AggCase(
        "submit-undecodable",
        lambda stub, ids: _raw_agg_call(stub, "SubmitUpdate", GARBAGE),
        BAD_ARG,
        "not a valid cpml.v1.UpdateRequest message",
    ),
    AggCase(
        "submit-party-never-issued",
        _submit(lambda ids: _update("0" * 32)),
        NOT_FOUND,
        "is not registered in run 'svc'; call Join first",
    ),
    AggCase(
        "submit-unknown-run",
        _submit(lambda ids: _update(ids[0], run_id="other")),
        NOT_FOUND,
        "Run 'other' is not served here",
    ),
    AggCase(
        "submit-wrong-dimension",
        _submit(lambda ids: _update(ids[0], weights=np.full(5, SECRET_WEIGHT))),
        BAD_ARG,
        "has 5 values, expected 3",
    ),
    AggCase(
        "submit-nan",
        _submit(lambda ids: _update(ids[0], weights=[SECRET_WEIGHT, np.nan, 0.0])),
        BAD_ARG,
        "NaN or infinite",
    ),
    AggCase(
        "submit-inf",
        _submit(lambda ids: _update(ids[0], weights=[np.inf, SECRET_WEIGHT, 0.0])),
        BAD_ARG,
        "NaN or infinite",
    ),
    AggCase(
        "submit-truncated-vector",
        _submit(lambda ids: _update(ids[0], vector=agg_pb.Vector(size=3, data=b"\0" * 16))),
        BAD_ARG,
        "declares 3 float64 values but carries 16 bytes",
    ),
    AggCase(
        "submit-size-near-2^32",
        _submit(lambda ids: _update(ids[0], vector=agg_pb.Vector(size=U32))),
        BAD_ARG,
        f"declares {U32} float64 values but carries 0 bytes",
    ),
    AggCase(
        "submit-over-the-message-limit",
        _submit(lambda ids: _update(ids[0], weights=np.full(600_000, 1.0))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    AggCase(
        "submit-records-0",
        _submit(lambda ids: _update(ids[0], records=0)),
        BAD_ARG,
        "registered 30 records but reports 0",
    ),
    AggCase(
        "submit-records-2^64-1",
        _submit(lambda ids: _update(ids[0], records=U64)),
        BAD_ARG,
        f"registered 30 records but reports {U64}",
    ),
    AggCase(
        "submit-old-round",
        _submit(lambda ids: _update(ids[0], round_number=0)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is for round 0, but round 1 is open",
    ),
    AggCase(
        "submit-round-near-2^32",
        _submit(lambda ids: _update(ids[0], round_number=U32)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"is for round {U32}, but round 1 is open",
    ),
    AggCase(
        "submit-twice-in-one-round",
        _submit_twice,
        grpc.StatusCode.FAILED_PRECONDITION,
        "already submitted round 1",
        submitted_first=True,
    ),
]


async def _raw_agg_call(stub, method: str, frame: bytes) -> bytes:
    return await _raw_unary(stub.channel, f"/cpml.v1.Aggregation/{method}", frame)


class _Stub(agg_grpc.AggregationStub):
    """The generated stub, remembering its channel so a case can also send raw bytes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.channel = channel


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in AGG_CASES])
async def test_aggregation_refuses_with_a_precise_status_and_the_round_goes_on(case):
    with capture_logs() as logs:
        async with _aggregation() as (stub, rounds):
            if case.early:
                await _expect(case, stub, None)
            ids = [
                (await stub.Join(_join_request(f"p{k}", n, 3), timeout=DEADLINE)).party_id for k, n in enumerate(SIZES)
            ]
            task = await stub.NextTask(agg_pb.TaskRequest(run_id="svc", party_id=ids[0]), timeout=DEADLINE)
            assert task.round == 1 and not task.finished
            if not case.early:
                await _expect(case, stub, ids)
            await stub.SubmitUpdate(_update(ids[0], weights=[1.0, 1.0, 1.0]), timeout=DEADLINE)
            if not case.submitted_first:
                await stub.SubmitUpdate(_update(ids[1], records=SIZES[1], weights=[5.0, 5.0, 5.0]), timeout=DEADLINE)
            task = await stub.NextTask(
                agg_pb.TaskRequest(run_id="svc", party_id=ids[0], after_round=1), timeout=DEADLINE
            )
            assert task.round == 2
            np.testing.assert_allclose(dp_serde.vector_from_proto(task.weights, "task"), 4.0)  # (30*1 + 90*5)/120
            assert rounds[0].dropped == () and rounds[0].released
    _assert_nothing_secret_logged(logs, {repr(SECRET_WEIGHT)[:8]})


async def _expect(case: AggCase, stub, ids) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await case.send(stub, ids)
    assert err.value.code() == case.code, err.value.details()
    assert case.says in err.value.details()


async def test_one_reaper_frees_an_idle_mpc_party_and_an_idle_share():
    job = small_job("idle-share")
    async with running_worker(job_idle_seconds=1.0) as worker, grpc.aio.insecure_channel(worker.address) as channel:
        await upload(_stub(channel), job.chunks())
        await mpc_pb2_grpc.MpcStub(channel).Join(
            _mpc_join(addresses=[worker.address, "127.0.0.1:1", "127.0.0.1:1"]), timeout=DEADLINE
        )
        assert worker.mpc._jobs and len(worker.store) == 1 and worker.store.used_bytes > job.share.nbytes
        for _ in range(100):  # the reaper runs every second; both are idle for longer than 1 s after 2 s at most
            if not worker.mpc._jobs and len(worker.store) == 0 and worker.store.used_bytes == 0:
                break
            await asyncio.sleep(0.1)
        assert not worker.mpc._jobs and len(worker.store) == 0 and worker.store.used_bytes == 0

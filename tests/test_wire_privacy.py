"""What T colluding workers see on the wire, captured byte for byte during real training runs.

`cpml.master.train` drives N real cpml-worker daemons (subprocesses on 127.0.0.1) with the default plan
machinery (min-max scaling, automatic quantization, T = 2 so K = 2 on N = 10). A TCP proxy in front of T of
them records every byte both ways; the capture is parsed back (HTTP/2 frames, HPACK headers, gRPC
length-prefixed messages, protobuf) and examined:

(a) the dataset shares the T workers hold are jointly uniform on [0, p) and do not depend on the data
    (the same job on an all-zero dataset of the same shape is the reference);
(b) the same for every round's weight shares, which are also fresh from round to round;
(c) no run of 8 consecutive quantized data values, labels, X̄ᵀy or (quantized) weights appears in the raw
    bytes, in the reassembled messages, or in what the T workers get by interpolating their shares as if
    the masks were zero (the attack the masks defeat);
(d) every message and header is of a known kind, and its fields are public parameters: identical for two
    datasets of the same shape (this is what caught quantization levels chosen from the data's norms);
(e) the workers' structlog output (debug level) holds none of the field elements they received or sent.

The same examination of a capture made with the masks switched off (train's test-only `mask_source`) must
find the leak, so the examination is shown to be able to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import hpack
import numpy as np
import pytest
import structlog
from grpc_health.v1 import health_pb2
from scipy import stats

from cpml.data import load_dataset, load_raw
from cpml.field import PrimeField, interpolation_matrix
from cpml.master.cluster import Timeouts
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.master.train import DATA_DEPENDENT_QUANTIZATION, make_plan, train, unit_range_profile
from cpml.protocol import CodingScheme, DataProfile, Plan, auto_quantization, simulate
from cpml.protocol.models import lipschitz_learning_rate
from cpml.protocol.quantize import quantize_data
from cpml.protocol.sigmoid import model_coefficients, scaled_coefficients
from cpml.protocol.trainer import round_weights
from cpml.wire.generated.v1 import worker_pb2 as pb

N = 10
T = 2  # Plan.for_privacy(10, 2) takes K = 2: R = 3(K+T-1)+1 = 10
COLLUDERS = (3, 8)
DATASET = "digits-4v9"
ITERATIONS = 10
CHUNK_BYTES = 8192  # several share chunks per worker, so only the first may carry the spec
SEED = 0
RUN = 8  # consecutive values that make a plaintext run
UNIFORM = 1e-6  # a masked capture must not be rejected at this level (a handful of tests: ~1e-5 flakes)
LEAK = 1e-12  # an unmasked capture must be rejected at this level

PATHS = {
    "/cpml.v1.Worker/UploadShare": (pb.ShareChunk, pb.UploadReply),
    "/cpml.v1.Worker/Compute": (pb.RoundRequest, pb.RoundResult),
    "/cpml.v1.Worker/EndJob": (pb.EndJobRequest, pb.EndJobReply),
    "/cpml.v1.Worker/Status": (pb.StatusRequest, pb.StatusReply),
    "/grpc.health.v1.Health/Check": (health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse),
}
# HTTP/2 request headers a gRPC client sends; each is public (see docs/protocol.md).
REQUEST_HEADERS = {":method", ":scheme", ":path", ":authority", "te", "content-type", "user-agent",
                   "grpc-accept-encoding", "grpc-timeout"}


def zero_masks(field: PrimeField, shape: tuple[int, ...]) -> np.ndarray:
    """The protection switched off: every mask is 0."""
    return np.zeros(shape, dtype=np.uint32)


# --- the tap: a TCP proxy that records both directions ---------------------------------------------------

@dataclass
class Connection:
    """The bytes of one TCP connection through the tap."""

    to_worker: bytearray = field(default_factory=bytearray)
    from_worker: bytearray = field(default_factory=bytearray)


class WireTap:
    """A loopback TCP proxy in front of one worker; every connection's bytes are kept, in order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.address = ""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.settle()
        await self._server.wait_closed()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every connection through the tap has closed (the master closes its channels)."""
        if self._pumps:
            await asyncio.wait_for(asyncio.gather(*self._pumps), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        conn = Connection()
        self.connections.append(conn)
        for task in (asyncio.create_task(_pump(reader, up_writer, conn.to_worker)),
                     asyncio.create_task(_pump(up_reader, writer, conn.from_worker))):
            self._pumps.add(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
    try:
        while data := await reader.read(1 << 16):
            record += data
            writer.write(data)
            await writer.drain()
    except OSError:  # the other side reset the connection: what was recorded stands
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):  # already shut down or closed
            if writer.can_write_eof():
                writer.write_eof()
        writer.close()


# --- parsing the capture: HTTP/2 frames, HPACK, gRPC messages ---------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20


@dataclass
class Stream:
    """One direction of one HTTP/2 stream: its header blocks (headers, then trailers) and its DATA bytes."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)


def http2_streams(raw: bytes, from_client: bool) -> dict[int, Stream]:
    """Split one direction of an HTTP/2 connection into streams, decoding header blocks with HPACK."""
    pos = 0
    if from_client:
        assert raw.startswith(PREFACE), "not an HTTP/2 connection (is the tap in front of a TLS port?)"
        pos = len(PREFACE)
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 1 << 20  # whatever SETTINGS the peers agreed, never refuse to decode
    streams: dict[int, Stream] = {}
    block = bytearray()
    while pos < len(raw):
        assert pos + 9 <= len(raw), "capture ends inside a frame header"
        length = int.from_bytes(raw[pos:pos + 3], "big")
        kind, flags = raw[pos + 3], raw[pos + 4]
        stream_id = int.from_bytes(raw[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        payload = bytes(raw[pos + 9:pos + 9 + length])
        assert len(payload) == length, "capture ends inside a frame"
        pos += 9 + length
        if kind in (DATA, HEADERS) and flags & PADDED:
            payload = payload[1:len(payload) - payload[0]]
        if kind == DATA:
            streams.setdefault(stream_id, Stream()).data += payload
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                block = bytearray(payload[5:] if flags & PRIORITY else payload)
            else:
                block += payload
            if flags & END_HEADERS:
                streams.setdefault(stream_id, Stream()).headers.extend(decoder.decode(bytes(block)))
    return streams


def grpc_messages(data: bytes) -> list[bytes]:
    """The length-prefixed gRPC messages of one stream direction."""
    messages, pos = [], 0
    while pos < len(data):
        compressed, length = data[pos], int.from_bytes(data[pos + 1:pos + 5], "big")
        assert compressed == 0, "a compressed gRPC message: the tap would not see its fields"
        messages.append(bytes(data[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(data), "a stream ends inside a gRPC message"
    return messages


@dataclass
class Call:
    """One RPC as the worker saw it: what it was sent and what it answered."""

    path: str
    request_headers: list[tuple[str, str]]
    requests: list[bytes]
    response_headers: list[tuple[str, str]]
    replies: list[bytes]

    def parsed(self) -> tuple[list, list]:
        """Requests and replies as protobuf messages (by the path's types)."""
        request_type, reply_type = PATHS[self.path]
        return ([request_type.FromString(m) for m in self.requests],
                [reply_type.FromString(m) for m in self.replies])


@dataclass
class WorkerView:
    """Everything one colluding worker received and sent during one run."""

    index: int
    raw_in: list[bytes]
    raw_out: list[bytes]
    calls: list[Call]

    def of(self, path: str) -> Iterator[Call]:
        return (c for c in self.calls if c.path == path)

    @property
    def chunks(self) -> list[pb.ShareChunk]:
        return [m for c in self.of("/cpml.v1.Worker/UploadShare") for m in c.parsed()[0]]

    @property
    def spec(self) -> pb.JobSpec:
        return self.chunks[0].spec

    @property
    def share(self) -> np.ndarray:
        """The worker's share (rows x d) assembled from the chunks it received."""
        spec = self.spec
        share = np.full((spec.rows, spec.cols), -1, dtype=np.int64)
        for chunk in self.chunks:
            block = np.frombuffer(chunk.block.data, dtype="<u4").reshape(chunk.block.rows, chunk.block.cols)
            share[chunk.row_offset:chunk.row_offset + chunk.block.rows] = block
        assert (share >= 0).all(), "the chunks do not cover the share"
        return share.astype(np.uint32)

    @property
    def rounds(self) -> list[pb.RoundRequest]:
        return [m for c in self.of("/cpml.v1.Worker/Compute") for m in c.parsed()[0]]

    @property
    def results(self) -> list[pb.RoundResult]:
        return [m for c in self.of("/cpml.v1.Worker/Compute") for m in c.parsed()[1]]

    def weight_shares(self) -> np.ndarray:
        """Every round's encoded weights, shape (rounds, d, r)."""
        return np.stack([np.frombuffer(m.weights.data, dtype="<u4").reshape(m.weights.rows, m.weights.cols)
                         for m in self.rounds])

    def elements(self) -> np.ndarray:
        """Every field element this worker received or sent (share, weight shares, results)."""
        results = [np.frombuffer(m.result.data, dtype="<u4") for m in self.results]
        return np.concatenate([self.share.ravel(), self.weight_shares().ravel(), *results])


def worker_view(index: int, connections: Iterable[Connection]) -> WorkerView:
    """Parse the tapped connections of one worker into its calls."""
    view = WorkerView(index, [], [], [])
    for conn in connections:
        view.raw_in.append(bytes(conn.to_worker))
        view.raw_out.append(bytes(conn.from_worker))
        requests = http2_streams(conn.to_worker, from_client=True)
        replies = http2_streams(conn.from_worker, from_client=False)
        for stream_id, request in sorted(requests.items()):
            if stream_id == 0:
                continue
            reply = replies.get(stream_id, Stream())
            path = dict(request.headers)[":path"]
            view.calls.append(Call(path, request.headers, grpc_messages(request.data), reply.headers,
                                   grpc_messages(reply.data)))
    return view


# --- the runs --------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One training job as the colluders saw it, with the master's own view to compare against."""

    name: str
    plan: Plan
    x: np.ndarray  # the training split, scaled
    y: np.ndarray
    trajectory: np.ndarray  # weights at the start of every round, then the final weights
    colluders: dict[int, WorkerView]

    @property
    def job_id(self) -> str:
        ids = {m.job_id for v in self.colluders.values() for m in v.chunks}
        assert len(ids) == 1
        return ids.pop()


@dataclass
class Captures:
    runs: dict[str, Run]
    worker_logs: dict[int, list[dict]]


def _reference_dataset(directory: Path) -> Path:
    """An all-zero dataset of the same shape as DATASET, with its labels (a stratified split of equal size)."""
    x, y, _ = load_raw(DATASET)
    path = directory / "zeros.npz"
    np.savez(path, x=np.zeros_like(x), y=y)
    return path


async def _run(name: str, dataset: str, addresses: list[str], taps: dict[int, WireTap], out: Path,
               learning_rate: float, masks: bool) -> Run:
    seen = {i: len(tap.connections) for i, tap in taps.items()}
    settings = TrainSettings(dataset=dataset, workers=tuple(addresses), insecure=True, t=T, iterations=ITERATIONS,
                             learning_rate=learning_rate, seed=SEED, chunk_bytes=CHUNK_BYTES, out=out / name,
                             timeouts=Timeouts(connect=60, upload=60, round=60), progress=False)
    extra = {} if masks else {"mask_source": zero_masks}
    report = await train(settings, **extra)
    for tap in taps.values():
        await tap.settle()
    data = load_dataset(dataset, seed=SEED)
    reference = simulate(report.plan, data.x_train, data.y_train, SEED)
    assert report.weights.tobytes() == reference.weights.tobytes()  # so the trajectory is the run's
    views = {i: worker_view(i, tap.connections[seen[i]:]) for i, tap in taps.items()}
    return Run(name, report.plan, data.x_train, data.y_train, reference.trajectory, views)


async def _capture(directory: Path) -> Captures:
    zeros = str(_reference_dataset(directory))
    learning_rate = lipschitz_learning_rate(load_dataset(DATASET, seed=SEED).x_train, "logistic")
    workdir = directory / "workers"
    async with LocalWorkers(N, workdir, 60.0, ("--log-level", "debug")) as local, \
            contextlib.AsyncExitStack() as stack:
        taps = {i: await stack.enter_async_context(WireTap(local.addresses[i])) for i in COLLUDERS}
        addresses = [taps[i].address if i in taps else a for i, a in enumerate(local.addresses)]
        runs = {}
        for name, dataset, masks in (("data", DATASET, True), ("zeros", zeros, True),
                                     ("data-unmasked", DATASET, False), ("zeros-unmasked", zeros, False)):
            runs[name] = await _run(name, dataset, addresses, taps, directory, learning_rate, masks)
    logs = {i: [json.loads(line) for line in (workdir / f"worker-{i}.log").read_text().splitlines() if line]
            for i in COLLUDERS}
    return Captures(runs, logs)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Captures:
    return asyncio.run(_capture(tmp_path_factory.mktemp("wire")))


# --- the examination -------------------------------------------------------------------------------------

def _bins(values: np.ndarray, p: int, bins: int) -> np.ndarray:
    return (values.astype(np.int64) * bins) // p


def uniform_p(values: np.ndarray, p: int, bins: int) -> float:
    """Chi-square p-value that the values are uniform on [0, p) (equal-width bins)."""
    return float(stats.chisquare(np.bincount(_bins(values, p, bins), minlength=bins)).pvalue)


def joint_p(a: np.ndarray, b: np.ndarray, p: int, bins: int) -> float:
    """Chi-square p-value that the pairs (a_i, b_i) are uniform on [0, p)^2 (bins x bins cells)."""
    cells = _bins(a, p, bins) * bins + _bins(b, p, bins)
    return float(stats.chisquare(np.bincount(cells, minlength=bins * bins)).pvalue)


def collision_p(values: np.ndarray, p: int) -> float:
    """Birthday test: p-value of at least this many repeated values among n uniform draws from [0, p)."""
    n = len(values)
    repeats = n - len(np.unique(values))
    return float(stats.poisson.sf(repeats - 1, n * (n - 1) / (2 * p)))


def two_sample_p(a: np.ndarray, b: np.ndarray, p: int, bins: int) -> float:
    """Chi-square p-value that two samples come from the same distribution (binned contingency table)."""
    table = np.array([np.bincount(_bins(v, p, bins), minlength=bins) for v in (a, b)])
    table = table[:, table.sum(axis=0) > 0]
    return 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table).pvalue)


def share_statistics(run: Run, reference: Run) -> dict[str, float]:
    """(a): the dataset shares the colluders hold, against uniform and against the reference run's."""
    p = run.plan.p
    a, b = (run.colluders[i].share.ravel() for i in COLLUDERS)
    ref = np.concatenate([reference.colluders[i].share.ravel() for i in COLLUDERS])
    both = np.concatenate([a, b])
    return {"uniform": uniform_p(both, p, 64), "joint": joint_p(a, b, p, 16), "collisions": collision_p(both, p),
            "vs reference": two_sample_p(both, ref, p, 64)}


def weight_statistics(run: Run, reference: Run) -> dict[str, float]:
    """(b): every round's weight shares, against uniform, across colluders, across rounds, against the reference."""
    p = run.plan.p
    wa, wb = (run.colluders[i].weight_shares() for i in COLLUDERS)  # (rounds, d, r)
    both = np.concatenate([wa.ravel(), wb.ravel()])
    ref = np.concatenate([reference.colluders[i].weight_shares().ravel() for i in COLLUDERS])
    now = np.concatenate([wa[:-1].ravel(), wb[:-1].ravel()])
    then = np.concatenate([wa[1:].ravel(), wb[1:].ravel()])
    return {"uniform": uniform_p(both, p, 16), "joint": joint_p(wa.ravel(), wb.ravel(), p, 4),
            "next round": joint_p(now, then, p, 8), "collisions": collision_p(both, p),
            "vs reference": two_sample_p(both, ref, p, 16)}


def _u32_runs(values: np.ndarray, p: int) -> Iterator[bytes]:
    """Runs of RUN consecutive entries (along the last axis) as packed little-endian field elements, phi applied."""
    field = PrimeField(p)
    rows = field.phi(np.asarray(values, dtype=np.int64)).reshape(-1, values.shape[-1]).astype("<u4")
    yield from _runs(rows)


def _f64_runs(values: np.ndarray) -> Iterator[bytes]:
    yield from _runs(np.asarray(values, dtype="<f8").reshape(-1, values.shape[-1]))


def _runs(rows: np.ndarray) -> Iterator[bytes]:
    for row in rows:
        for start in range(len(row) - RUN + 1):
            window = row[start:start + RUN]
            if len(np.unique(window)) > 1:  # a run of one repeated value says nothing about the data
                yield window.tobytes()


def plaintext_needles(run: Run) -> dict[str, set[bytes]]:
    """The runs the colluders must not see, by what they would reveal, in every layout the code uses."""
    plan = run.plan
    xbar = quantize_data(run.x, plan.lx)
    qweights = np.stack([round_weights(plan, run.trajectory[t], SEED, t) for t in range(plan.iterations)])
    xty = xbar.astype(np.float64).T @ run.y
    return {
        "quantized data (rows)": set(_u32_runs(xbar, plan.p)),
        "quantized data (columns)": set(_u32_runs(xbar.T, plan.p)),
        "features as float64": set(_f64_runs(run.x)),
        "labels as field elements": set(_u32_runs(run.y.astype(np.int64)[None, :], plan.p)),
        "labels as float64": set(_f64_runs(run.y[None, :])),
        "X̄ᵀy": set(_f64_runs(xty[None, :])) | set(_u32_runs(np.rint(xty).astype(np.int64)[None, :], plan.p)),
        "quantized weights": set(_u32_runs(qweights.transpose(0, 2, 1), plan.p)),
        "weights as float64": set(_f64_runs(run.trajectory)),
    }


def _grams(haystacks: Iterable[bytes], width: int) -> set[bytes]:
    return {h[i:i + width] for h in haystacks for i in range(len(h) - width + 1)}


def zero_mask_decoding(run: Run) -> list[bytes]:
    """What the colluders compute by interpolating their shares as if the masks were zero (needs T >= K)."""
    plan = run.plan
    scheme = CodingScheme(PrimeField(plan.p), plan.n_workers, plan.k, plan.t)
    alphas, betas = scheme.points  # public: every party knows the points
    assert plan.k <= plan.t, "T colluders can only interpolate K + T points when T >= K"
    known = tuple(alphas[i] for i in COLLUDERS) + betas[plan.k:]  # their shares, and the masks taken as 0
    decoder = interpolation_matrix(scheme.field, known, betas[:plan.k]).astype(np.int64)

    def decode(shares: list[np.ndarray]) -> list[bytes]:
        stacked = np.stack([s.ravel().astype(np.int64) for s in shares])
        parts = (decoder[:, :len(shares)] @ stacked) % plan.p  # p^2 * (K+T) stays below 2^63
        return [part.astype("<u4").tobytes() for part in parts]

    found = decode([run.colluders[i].share for i in COLLUDERS])
    weights = [run.colluders[i].weight_shares() for i in COLLUDERS]
    for t in range(weights[0].shape[0]):
        found += decode([w[t].T for w in weights])  # d x r on the wire; one quantization per row here
    return found


def plaintext_hits(run: Run) -> dict[str, int]:
    """(c): how many plaintext runs of each kind occur in the bytes, the messages or the zero-mask decoding."""
    views = run.colluders.values()
    raw = [b for v in views for b in (*v.raw_in, *v.raw_out)]
    messages = [m for v in views for c in v.calls for m in (*c.requests, *c.replies)]
    decoded = zero_mask_decoding(run)
    hits = {}
    for where, haystacks in (("wire", raw + messages), ("zero-mask decoding", decoded)):
        grams = {w: _grams(haystacks, w) for w in (4 * RUN, 8 * RUN)}
        for what, needles in plaintext_needles(run).items():
            hits[f"{what} in {where}"] = sum(n in grams[len(n)] for n in needles)
    return hits


# --- (a), (b), (c): masked captures pass, unmasked captures fail ----------------------------------------

@pytest.mark.slow
def test_the_tap_saw_the_whole_job(captures):
    for run in captures.runs.values():
        assert run.plan.threshold == N  # R = N: the master waits for every worker, so none skips a round
        for view in run.colluders.values():
            assert sum(c.block.rows for c in view.chunks) == view.spec.rows
            assert [m.round for m in view.rounds] == list(range(ITERATIONS))
            assert [m.round for m in view.results] == list(range(ITERATIONS))
            assert {c.path for c in view.calls} == set(PATHS)


@pytest.mark.slow
def test_the_shares_t_workers_hold_are_uniform_and_independent_of_the_data(captures):
    statistics = share_statistics(captures.runs["data"], captures.runs["zeros"])
    assert min(statistics.values()) > UNIFORM, statistics


@pytest.mark.slow
def test_the_weight_shares_are_uniform_fresh_every_round_and_independent_of_the_data(captures):
    statistics = weight_statistics(captures.runs["data"], captures.runs["zeros"])
    assert min(statistics.values()) > UNIFORM, statistics


@pytest.mark.slow
def test_no_plaintext_run_reaches_the_colluders(captures):
    run = captures.runs["data"]
    assert all(needles for needles in plaintext_needles(run).values())  # every search has something to find
    hits = plaintext_hits(run)
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}


@pytest.mark.slow
def test_without_masks_the_same_examination_finds_the_leak(captures):
    run, reference = captures.runs["data-unmasked"], captures.runs["zeros-unmasked"]
    shares, weights = share_statistics(run, reference), weight_statistics(run, reference)
    assert max(shares.values()) < LEAK, shares
    assert max(weights.values()) < LEAK, weights
    hits = plaintext_hits(run)
    assert hits["quantized data (rows) in zero-mask decoding"] > 0
    assert hits["quantized weights in zero-mask decoding"] > 0


# --- (d) metadata: public parameters only -----------------------------------------------------------------

def _fields(msg) -> set[str]:
    return {f.name for f, _ in msg.ListFields()}


@pytest.mark.slow
def test_every_message_round_trips_with_no_hidden_fields(captures):
    # Re-serializing each parsed message gives back the captured bytes: nothing rides in unknown fields.
    for run in captures.runs.values():
        for view in run.colluders.values():
            for call in view.calls:
                requests, replies = call.parsed()
                for raw, msg in zip(call.requests + call.replies, requests + replies, strict=True):
                    assert msg.SerializeToString(deterministic=True) == raw, call.path


@pytest.mark.slow
def test_the_colluders_receive_only_public_parameters(captures):
    public = {}
    for name in ("data", "zeros"):
        run = captures.runs[name]
        plan = run.plan
        rows = math.ceil(len(run.x) / plan.k)
        for view in run.colluders.values():
            chunks = view.chunks
            assert [_fields(c.spec) for c in chunks] == [{"modulus", "degree", "rows", "cols", "coefficients",
                                                          "model"}] + [set()] * (len(chunks) - 1)
            spec = view.spec
            assert (spec.modulus, spec.degree, spec.rows, spec.cols, spec.model) == (
                plan.p, plan.r, rows, run.x.shape[1], plan.model)
            expected = scaled_coefficients(model_coefficients(plan.model, plan.r, plan.sigmoid_interval),
                                           plan.lx, plan.lw, plan.lc)
            coefficients = np.frombuffer(spec.coefficients.data, dtype="<u4")
            np.testing.assert_array_equal(coefficients, PrimeField(plan.p).phi(expected))
            for chunk in chunks:
                assert _fields(chunk) <= {"job_id", "spec", "row_offset", "block", "crc32"}
                assert chunk.crc32 == zlib.crc32(chunk.block.data)  # a function of the share bytes it guards
            assert re.fullmatch(r"[0-9a-f]{32}", run.job_id)  # uuid4: random, says nothing about the job
            for msg in view.rounds:
                assert _fields(msg) <= {"job_id", "round", "weights"} and msg.job_id == run.job_id
            end_requests = [m for c in view.of("/cpml.v1.Worker/EndJob") for m in c.parsed()[0]]
            assert [(m.job_id, _fields(m)) for m in end_requests] == [(run.job_id, {"job_id"})]
            for call in (*view.of("/cpml.v1.Worker/Status"), *view.of("/grpc.health.v1.Health/Check")):
                assert all(_fields(m) <= {"service"} for m in call.parsed()[0])
                assert {m.service for m in call.parsed()[0] if m.ListFields()} <= {"cpml.v1.Worker"}
            for call in view.calls:
                names = {name for name, _ in call.request_headers}
                assert names <= REQUEST_HEADERS, names - REQUEST_HEADERS
                assert dict(call.request_headers)["content-type"] == "application/grpc"
            # Everything but the job id, the share bytes' checksum and the deadlines' remaining time.
            headers = [[h for h in c.request_headers if h[0] != "grpc-timeout"] for c in view.calls]
            public.setdefault(view.index, []).append(
                (spec.SerializeToString(deterministic=True), [(c.row_offset, c.block.rows, c.block.cols)
                                                              for c in chunks],
                 [(m.round, m.weights.rows, m.weights.cols) for m in view.rounds], headers))
    # Two datasets of the same shape: the colluders receive the very same metadata.
    for index, (data, zeros) in public.items():
        assert data == zeros, f"worker {index}: the job metadata depends on the data"


def test_unit_range_profile_is_the_profile_of_a_matrix_of_ones():
    for m, d, k in ((288, 64, 2), (7, 3, 3), (2, 5, 3), (10, 1, 10)):
        assert unit_range_profile(m, d, k) == DataProfile.of(np.ones((m, d)), k)


def test_automatic_quantization_depends_on_the_shape_alone():
    x = load_dataset(DATASET, seed=SEED).x_train
    others = (np.zeros_like(x), np.random.default_rng(1).random(x.shape), x[::-1] ** 2)
    plan = make_plan(TrainSettings(dataset=DATASET, t=T), N, x)
    assert all(make_plan(TrainSettings(dataset=DATASET, t=T), N, other) == plan for other in others)
    # Planned from the data's own norms (the protection removed), the levels, and so the coefficients the
    # workers receive, differ between these datasets of one shape.
    levels = {(q.lx, q.lw, q.lc) for q in (auto_quantization(plan, DataProfile.of(v, plan.k)) for v in (x, *others))}
    assert len(levels) > 1


def test_data_dependent_quantization_is_announced():
    x = load_dataset(DATASET, scaling="standard", seed=SEED).x_train
    with structlog.testing.capture_logs() as logs:
        make_plan(TrainSettings(dataset=DATASET, scaling="standard", t=T), N, x)
        make_plan(TrainSettings(dataset=DATASET, scaling="standard", t=T, lx=1, lw=4, lc=5), N, x)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [DATA_DEPENDENT_QUANTIZATION]


# --- (e) logs ---------------------------------------------------------------------------------------------

BIG = 1 << 20  # log numbers below this are counts, sizes, ports and times; field elements are mostly above


def _numbers(value: object) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, float) and value.is_integer():
        yield int(value)
    elif isinstance(value, str):
        yield from (int(t) for t in re.findall(r"\d+", value))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def logged_values(events: list[dict], secrets: set[int]) -> list[tuple[str, int]]:
    """(event, number) for every logged number >= BIG that is one of the given field elements."""
    return [(e.get("event", "?"), n) for e in events for n in _numbers(e) if n >= BIG and n in secrets]


@pytest.mark.slow
def test_worker_logs_hold_none_of_the_values_the_workers_saw(captures):
    for index, events in captures.worker_logs.items():
        seen = {int(v) for run in captures.runs.values() for v in run.colluders[index].elements()}
        assert sum(v >= BIG for v in seen) > 10_000
        jobs = {e.get("job") for e in events}
        assert {run.job_id for run in captures.runs.values()} <= jobs  # the log covers every run
        assert any(e.get("event") == "round computed" for e in events)  # at debug level
        assert not any(isinstance(v, (list, dict)) for e in events for v in e.values())
        assert logged_values(events, seen) == []
        # The same check on a line that does log a share value finds it.
        leaky = {"event": "round computed", "share": str(sorted(v for v in seen if v >= BIG)[:4])}
        assert logged_values([leaky], seen)

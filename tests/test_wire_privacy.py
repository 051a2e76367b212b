"""What T colluding workers see on the wire, captured byte for byte during real training runs.

`cpml.master.train` drives N real cpml-worker daemons (subprocesses on 127.0.0.1) with the default plan
machinery (standard scaling with an intercept, automatic precision: several residue primes, the exact sigmoid,
T = 2 so K = 2 on N = 7). A TCP proxy in front of T of them records every byte both ways; the capture is parsed back (HTTP/2
frames, HPACK headers, gRPC length-prefixed messages, protobuf) and examined:

(a) the dataset shares the T workers hold are jointly uniform on [0, p_j) in every residue field, jointly
    across the residues (pairs of residues of one element, and their CRT lift uniform on Z_P), and do not
    depend on the data (the same job on an all-zero dataset of the same shape is the reference);
(b) the same for every round's weight shares and every round's shares of the sigmoid values the master
    encodes (the second exchange of the exact sigmoid), which are also fresh from round to round;
(c) no run of 8 consecutive quantized data values, labels, X̄ᵀy, (quantized) weights or sigmoid values
    appears in the raw
    bytes, in the reassembled messages, or in what the T workers get by interpolating their shares as if
    the masks were zero (the attack the masks defeat), in any residue field;
(d) every message and header is of a known kind, and its fields are public parameters: identical for two
    datasets of the same shape under standard and under min-max scaling (this is what caught quantization
    levels chosen from the data's norms); the moduli and the coefficients in particular;
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
from helpers_privacy import zero_masks
from scipy import stats

from cpml.data import load_raw, scale
from cpml.field import PrimeField, ResidueBasis, interpolation_matrix
from cpml.master.cluster import Timeouts
from cpml.master.job import DATA_DEPENDENT_QUANTIZATION, load_training_data
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.master.train import make_plan, train
from cpml.protocol import CodingScheme, DataProfile, Plan, RunInputs, auto_precision, public_profile, simulate
from cpml.protocol.models import lookahead
from cpml.protocol.quantize import quantize_data, round_half_up
from cpml.protocol.run import round_weights
from cpml.protocol.sigmoid import model_coefficients, scaled_coefficients, sigmoid
from cpml.wire.generated.v1 import worker_pb2 as pb

N = 7
T = 2  # Plan.for_privacy(7, 2, r=0) takes K = 2: R = 2(K+T-1)+1 = 7
COLLUDERS = (3, 6)
DATASET = "digits-4v9"
ITERATIONS = 10
CHUNK_BYTES = 8192  # several share chunks per worker and residue, so only the first may carry the spec
SEED = 0
RUN = 8  # consecutive values that make a plaintext run
UNIFORM = 1e-6  # a masked capture must not be rejected at this level (a handful of tests: ~1e-5 flakes)
LEAK = 1e-12  # an unmasked capture must be rejected at this level
SCALINGS = ("standard", "minmax")  # standard is the default; both give every worker a shape-only plan

PATHS = {
    "/cpml.v1.Worker/UploadShare": (pb.ShareChunk, pb.UploadReply),
    "/cpml.v1.Worker/Compute": (pb.RoundRequest, pb.RoundResult),
    "/cpml.v1.Worker/EndJob": (pb.EndJobRequest, pb.EndJobReply),
    "/cpml.v1.Worker/Status": (pb.StatusRequest, pb.StatusReply),
    "/grpc.health.v1.Health/Check": (health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse),
}
# HTTP/2 request headers a gRPC client sends; each is public (see docs/protocol.md).
REQUEST_HEADERS = {
    ":method",
    ":scheme",
    ":path",
    ":authority",
    "te",
    "content-type",
    "user-agent",
    "grpc-accept-encoding",
    "grpc-timeout",
}


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
        for task in (
            asyncio.create_task(_pump(reader, up_writer, conn.to_worker)),
            asyncio.create_task(_pump(up_reader, writer, conn.from_worker)),
        ):
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
        length = int.from_bytes(raw[pos : pos + 3], "big")
        kind, flags = raw[pos + 3], raw[pos + 4]
        stream_id = int.from_bytes(raw[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        payload = bytes(raw[pos + 9 : pos + 9 + length])
        assert len(payload) == length, "capture ends inside a frame"
        pos += 9 + length
        if kind in (DATA, HEADERS) and flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
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
        compressed, length = data[pos], int.from_bytes(data[pos + 1 : pos + 5], "big")
        assert compressed == 0, "a compressed gRPC message: the tap would not see its fields"
        messages.append(bytes(data[pos + 5 : pos + 5 + length]))
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
        return ([request_type.FromString(m) for m in self.requests], [reply_type.FromString(m) for m in self.replies])


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
    def moduli(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.spec.moduli)

    @property
    def share(self) -> np.ndarray:
        """The worker's share (residues x rows x d) assembled from the chunks it received."""
        spec = self.spec
        share = np.full((len(spec.moduli), spec.rows, spec.cols), -1, dtype=np.int64)
        for chunk in self.chunks:
            block = np.frombuffer(chunk.block.data, dtype="<u4").reshape(chunk.block.rows, chunk.block.cols)
            share[chunk.residue, chunk.row_offset : chunk.row_offset + chunk.block.rows] = block
        assert (share >= 0).all(), "the chunks do not cover the share"
        return share.astype(np.uint32)

    @property
    def requests(self) -> list[pb.RoundRequest]:
        return [m for c in self.of("/cpml.v1.Worker/Compute") for m in c.parsed()[0]]

    @property
    def rounds(self) -> list[pb.RoundRequest]:
        """The first exchange of every round: the encoded weights."""
        return [m for m in self.requests if m.stage == 0]

    @property
    def sigmoid_rounds(self) -> list[pb.RoundRequest]:
        """The second exchange of every round (the exact sigmoid): the encoded sigmoid values."""
        return [m for m in self.requests if m.stage == 1]

    @property
    def results(self) -> list[pb.RoundResult]:
        return [m for c in self.of("/cpml.v1.Worker/Compute") for m in c.parsed()[1]]

    def weight_shares(self) -> np.ndarray:
        """Every round's encoded weights, shape (rounds, residues, d, r); the wire stacks (residues * d) x r."""
        residues = len(self.moduli)
        return np.stack(
            [np.frombuffer(m.weights.data, dtype="<u4").reshape(residues, -1, m.weights.cols) for m in self.rounds]
        )

    def sigmoid_shares(self) -> np.ndarray:
        """Every round's encoded sigmoid values, (rounds, residues, rows, C); the wire stacks (residues * rows) x C."""
        residues = len(self.moduli)
        return np.stack(
            [
                np.frombuffer(m.sigmoid_values.data, dtype="<u4").reshape(residues, -1, m.sigmoid_values.cols)
                for m in self.sigmoid_rounds
            ]
        )

    def elements(self) -> np.ndarray:
        """Every field element this worker received or sent (share, weight and sigmoid shares, results)."""
        results = [np.frombuffer(m.result.data, dtype="<u4") for m in self.results]
        received = [self.share.ravel(), self.weight_shares().ravel(), self.sigmoid_shares().ravel()]
        return np.concatenate([*received, *results])


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
            view.calls.append(
                Call(path, request.headers, grpc_messages(request.data), reply.headers, grpc_messages(reply.data))
            )
    return view


# --- the runs --------------------------------------------------------------------------------------------

# name: (dataset, scaling, masks). Each masked run has a reference: the same job on zeros of the same shape.
RUNS = {
    "data": ("data", "standard", True),
    "zeros": ("zeros", "standard", True),
    "data-minmax": ("data", "minmax", True),
    "zeros-minmax": ("zeros", "minmax", True),
    "data-unmasked": ("data", "standard", False),
    "zeros-unmasked": ("zeros", "standard", False),
}
PAIRS = {"standard": ("data", "zeros"), "minmax": ("data-minmax", "zeros-minmax")}  # (run, reference)


@dataclass
class Run:
    """One training job as the colluders saw it, with the master's own view to compare against."""

    name: str
    plan: Plan
    x: np.ndarray  # the training split, scaled, with the intercept column
    y: np.ndarray
    trajectory: np.ndarray  # weights at the start of every round, then the final weights
    colluders: dict[int, WorkerView]

    @property
    def job_id(self) -> str:
        ids = {m.job_id for v in self.colluders.values() for m in v.chunks}
        assert len(ids) == 1
        return ids.pop()

    def quantized_weights(self) -> np.ndarray:
        """The r quantizations of every round's query point (Nesterov's look-ahead), (rounds, d, r)."""
        plan, w = self.plan, self.trajectory
        queries = [lookahead(w[t], w[max(t - 1, 0)], t, plan.weight_bound) for t in range(plan.iterations)]
        return np.stack([round_weights(plan, q, SEED, t) for t, q in enumerate(queries)])

    def sigmoid_values(self) -> np.ndarray:
        """ē = Round(2^lc s(X̄w̄ 2^-(lx+lw))) of every round, (rounds, m): what the master encodes (r = 0)."""
        plan = self.plan
        z = quantize_data(self.x, plan.lx).astype(np.float64) @ self.quantized_weights()[:, :, 0].T  # exact
        return round_half_up(np.ldexp(sigmoid(np.ldexp(z, -plan.product_scale)), plan.lc)).T


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


async def _run(
    name: str, dataset: str, scaling: str, addresses: list[str], taps: dict[int, WireTap], out: Path, masks: bool
) -> Run:
    seen = {i: len(tap.connections) for i, tap in taps.items()}
    settings = TrainSettings(
        dataset=dataset,
        scaling=scaling,
        workers=tuple(addresses),
        insecure=True,
        t=T,
        iterations=ITERATIONS,
        seed=SEED,
        chunk_bytes=CHUNK_BYTES,
        out=out / name,
        timeouts=Timeouts(connect=60, upload=60, round=60),
        progress=False,
    )
    extra = {} if masks else {"mask_source": zero_masks}
    report = await train(settings, **extra)
    for tap in taps.values():
        await tap.settle()
    data = load_training_data(settings)
    reference = simulate(RunInputs(report.plan, data.x_train, data.y_train, SEED))
    assert report.weights.tobytes() == reference.weights.tobytes()  # so the trajectory is the run's
    views = {i: worker_view(i, tap.connections[seen[i] :]) for i, tap in taps.items()}
    return Run(name, report.plan, data.x_train, data.y_train, reference.trajectory, views)


async def _capture(directory: Path) -> Captures:
    datasets = {"data": DATASET, "zeros": str(_reference_dataset(directory))}
    workdir = directory / "workers"
    async with LocalWorkers(N, workdir, 60.0, ("--log-level", "debug")) as local, contextlib.AsyncExitStack() as stack:
        taps = {i: await stack.enter_async_context(WireTap(local.addresses[i])) for i in COLLUDERS}
        addresses = [taps[i].address if i in taps else a for i, a in enumerate(local.addresses)]
        runs = {}
        for name, (dataset, scaling, masks) in RUNS.items():
            runs[name] = await _run(name, datasets[dataset], scaling, addresses, taps, directory, masks)
    logs = {
        i: [json.loads(line) for line in (workdir / f"worker-{i}.log").read_text().splitlines() if line]
        for i in COLLUDERS
    }
    return Captures(runs, logs)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Captures:
    return asyncio.run(_capture(tmp_path_factory.mktemp("wire")))


# --- the examination -------------------------------------------------------------------------------------


def _bins(values: np.ndarray, modulus: int, bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, modulus); Python ints when value * bins could pass 2^63."""
    if modulus * bins < 1 << 63:
        return (np.asarray(values).astype(np.int64) * bins) // modulus
    return np.array([int(v) * bins // modulus for v in np.asarray(values).ravel().tolist()], dtype=np.int64)


def uniform_p(values: np.ndarray, modulus: int, bins: int) -> float:
    """Chi-square p-value that the values are uniform on [0, modulus) (equal-width bins)."""
    return float(stats.chisquare(np.bincount(_bins(values, modulus, bins), minlength=bins)).pvalue)


def joint_p(a: np.ndarray, b: np.ndarray, moduli: tuple[int, int], bins: int) -> float:
    """Chi-square p-value that the pairs (a_i, b_i) are uniform on [0, m_a) x [0, m_b) (bins x bins cells)."""
    cells = _bins(a, moduli[0], bins) * bins + _bins(b, moduli[1], bins)
    return float(stats.chisquare(np.bincount(cells, minlength=bins * bins)).pvalue)


def collision_p(values: np.ndarray, modulus: int) -> float:
    """Birthday test: p-value of at least this many repeated values among n uniform draws from [0, modulus)."""
    n = len(values)
    repeats = n - len(np.unique(values))
    return float(stats.poisson.sf(repeats - 1, n * (n - 1) / (2 * modulus)))


def two_sample_p(a: np.ndarray, b: np.ndarray, modulus: int, bins: int) -> float:
    """Chi-square p-value that two samples come from the same distribution (binned contingency table)."""
    table = np.array([np.bincount(_bins(v, modulus, bins), minlength=bins) for v in (a, b)])
    table = table[:, table.sum(axis=0) > 0]
    return 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table).pvalue)


def lift(basis: ResidueBasis, residues: np.ndarray) -> np.ndarray:
    """The CRT lift of (residues, ...) elements, as values in [0, P) (int64 when P allows, else Python ints)."""
    values = np.mod(basis.combine(residues.reshape(len(basis.moduli), -1)), basis.product)
    return values.astype(np.int64) if basis.product < 1 << 63 else values


@dataclass(frozen=True)
class Bins:
    """How finely each statistic bins: one value, pairs of values, pairs of consecutive rounds."""

    single: int
    pair: int
    rounds: int = 0


def field_statistics(
    what: str, a: np.ndarray, b: np.ndarray, reference: np.ndarray, modulus: int, bins: Bins
) -> dict[str, float]:
    """One field (a residue, or Z_P for the CRT lifts): uniform, the colluders jointly, repeats, vs reference."""
    both = np.concatenate([a, b])
    return {
        f"{what}: uniform": uniform_p(both, modulus, bins.single),
        f"{what}: colluders jointly": joint_p(a, b, (modulus, modulus), bins.pair),
        f"{what}: collisions": collision_p(both, modulus),
        f"{what}: vs reference": two_sample_p(both, reference, modulus, bins.single),
    }


def residue_statistics(
    basis: ResidueBasis, a: np.ndarray, b: np.ndarray, ref: tuple[np.ndarray, np.ndarray], bins: Bins
) -> dict[str, float]:
    """Every residue field alone, the CRT lifts on Z_P, and pairs across residues; a, b: (residues, ...) each."""
    flat = [v.reshape(len(basis.moduli), -1) for v in (a, b, *ref)]
    a, b, ra, rb = flat
    out: dict[str, float] = {}
    for j, p in enumerate(basis.moduli):
        out |= field_statistics(f"residue {j}", a[j], b[j], np.concatenate([ra[j], rb[j]]), p, bins)
    lifts = [lift(basis, v) for v in flat]
    out |= field_statistics("CRT lift", lifts[0], lifts[1], np.concatenate(lifts[2:]), basis.product, bins)
    for j in range(1, len(basis.moduli)):
        moduli = (basis.moduli[0], basis.moduli[j])
        out[f"residues 0,{j} of one element"] = joint_p(
            np.concatenate([a[0], b[0]]), np.concatenate([a[j], b[j]]), moduli, bins.pair
        )
        out[f"residue 0 of one colluder, {j} of the other"] = joint_p(
            np.concatenate([a[0], b[0]]), np.concatenate([b[j], a[j]]), moduli, bins.pair
        )
    return out


def share_statistics(run: Run, reference: Run) -> dict[str, float]:
    """(a): the dataset shares the colluders hold, in every residue and across, against uniform and the reference."""
    a, b = (run.colluders[i].share for i in COLLUDERS)  # (residues, rows, d)
    ref = tuple(reference.colluders[i].share for i in COLLUDERS)
    return residue_statistics(run.plan.basis, a, b, ref, Bins(single=64, pair=16))


def weight_statistics(run: Run, reference: Run) -> dict[str, float]:
    """(b): every round's weight shares as (a), plus across rounds (fresh masks) in every residue and on Z_P."""
    basis = run.plan.basis
    wa, wb = (run.colluders[i].weight_shares().swapaxes(0, 1) for i in COLLUDERS)  # (residues, rounds, d, r)
    ref = tuple(reference.colluders[i].weight_shares().swapaxes(0, 1) for i in COLLUDERS)
    out = residue_statistics(basis, wa, wb, ref, Bins(single=16, pair=4))
    now = np.concatenate([wa[:, :-1].reshape(len(basis.moduli), -1), wb[:, :-1].reshape(len(basis.moduli), -1)], axis=1)
    then = np.concatenate([wa[:, 1:].reshape(len(basis.moduli), -1), wb[:, 1:].reshape(len(basis.moduli), -1)], axis=1)
    for j, p in enumerate(basis.moduli):
        out[f"residue {j}: next round"] = joint_p(now[j], then[j], (p, p), 8)
    out["CRT lift: next round"] = joint_p(lift(basis, now), lift(basis, then), (basis.product,) * 2, 8)
    return out


def sigmoid_statistics(run: Run, reference: Run) -> dict[str, float]:
    """(b): every round's shares of the sigmoid values as (a), plus across rounds (fresh masks)."""
    basis = run.plan.basis
    sa, sb = (run.colluders[i].sigmoid_shares().swapaxes(0, 1) for i in COLLUDERS)  # (residues, rounds, rows, C)
    ref = tuple(reference.colluders[i].sigmoid_shares().swapaxes(0, 1) for i in COLLUDERS)
    out = residue_statistics(basis, sa, sb, ref, Bins(single=64, pair=16))
    residues = len(basis.moduli)
    now = np.concatenate([sa[:, :-1].reshape(residues, -1), sb[:, :-1].reshape(residues, -1)], axis=1)
    then = np.concatenate([sa[:, 1:].reshape(residues, -1), sb[:, 1:].reshape(residues, -1)], axis=1)
    for j, p in enumerate(basis.moduli):
        out[f"residue {j}: next round"] = joint_p(now[j], then[j], (p, p), 16)
    return out


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
            window = row[start : start + RUN]
            if len(np.unique(window)) > 1:  # a run of one repeated value says nothing about the data
                yield window.tobytes()


def plaintext_needles(run: Run, moduli: tuple[int, ...]) -> dict[str, set[bytes]]:
    """The runs the colluders must not see, by what they would reveal, in every layout the code uses."""
    # Field elements are searched as their residues modulo each of `moduli`.
    plan = run.plan
    xbar = quantize_data(run.x, plan.lx)
    qweights = run.quantized_weights()
    xty = xbar.astype(np.float64).T @ run.y

    def elements(values: np.ndarray) -> set[bytes]:
        return {run for p in moduli for run in _u32_runs(values, p)}

    return {
        "quantized data (rows)": elements(xbar),
        "quantized data (columns)": elements(xbar.T),
        "features as float64": set(_f64_runs(run.x)),
        "labels as field elements": elements(run.y.astype(np.int64)[None, :]),
        "labels as float64": set(_f64_runs(run.y[None, :])),
        "X̄ᵀy": set(_f64_runs(xty[None, :])) | elements(np.rint(xty).astype(np.int64)[None, :]),
        "quantized weights": elements(qweights.transpose(0, 2, 1)),
        "weights as float64": set(_f64_runs(run.trajectory)),
        "sigmoid values": elements(run.sigmoid_values()),
    }


def _grams(haystacks: Iterable[bytes], width: int) -> set[bytes]:
    return {h[i : i + width] for h in haystacks for i in range(len(h) - width + 1)}


def zero_mask_decoding(run: Run) -> dict[int, list[bytes]]:
    """Per residue field: what the colluders compute by interpolating their shares with the masks taken as 0."""
    plan = run.plan
    assert plan.k <= plan.t, "T colluders can only interpolate K + T points when T >= K"
    views = [run.colluders[i] for i in COLLUDERS]
    weights = [v.weight_shares() for v in views]  # (rounds, residues, d, r)
    sigmoids = [v.sigmoid_shares() for v in views]  # (rounds, residues, rows, 1)
    found = {}
    for j, field_j in enumerate(plan.basis.fields):
        alphas, betas = CodingScheme(field_j, plan.n_workers, plan.k, plan.t).points  # public points
        known = tuple(alphas[i] for i in COLLUDERS) + betas[plan.k :]  # their shares, and the masks taken as 0
        decoder = interpolation_matrix(field_j, known, betas[: plan.k]).astype(np.int64)[:, : len(COLLUDERS)]

        def decode(shares: list[np.ndarray]) -> list[bytes]:
            stacked = np.stack([s.ravel().astype(np.int64) for s in shares])
            parts = (decoder @ stacked) % field_j.p  # p^2 * T stays below 2^63  # noqa: B023 (used in this iteration)
            return [part.astype("<u4").tobytes() for part in parts]

        found[j] = decode([v.share[j] for v in views])
        for t in range(weights[0].shape[0]):
            found[j] += decode([w[t, j].T for w in weights])  # d x r on the wire; one quantization per row here
            found[j] += decode([e[t, j] for e in sigmoids])
    return found


def plaintext_hits(run: Run) -> dict[str, int]:
    """(c): how many plaintext runs of each kind occur in the bytes, the messages or the zero-mask decodings."""
    views = run.colluders.values()
    raw = [b for v in views for b in (*v.raw_in, *v.raw_out)]
    messages = [m for v in views for c in v.calls for m in (*c.requests, *c.replies)]
    places = [("wire", raw + messages, run.plan.moduli)]
    places += [
        (f"zero-mask decoding (residue {j})", decoded, (run.plan.moduli[j],))
        for j, decoded in zero_mask_decoding(run).items()
    ]
    hits = {}
    for where, haystacks, moduli in places:
        grams = {w: _grams(haystacks, w) for w in (4 * RUN, 8 * RUN)}
        for what, needles in plaintext_needles(run, moduli).items():
            hits[f"{what} in {where}"] = sum(n in grams[len(n)] for n in needles)
    return hits


# --- (a), (b), (c): masked captures pass, unmasked captures fail ----------------------------------------


@pytest.mark.slow
def test_the_tap_saw_the_whole_job(captures):
    for run in captures.runs.values():
        assert run.plan.threshold == N  # R = N: the master waits for every worker, so none skips a round
        assert run.plan.residues >= 2  # what these tests are about: shares in several residue fields
        for view in run.colluders.values():
            assert view.moduli == run.plan.moduli
            for j in range(run.plan.residues):
                assert sum(c.block.rows for c in view.chunks if c.residue == j) == view.spec.rows
            assert [m.round for m in view.rounds] == list(range(ITERATIONS))
            assert [m.round for m in view.sigmoid_rounds] == list(range(ITERATIONS))
            assert [(m.round, m.stage) for m in view.results] == [(t, s) for t in range(ITERATIONS) for s in (0, 1)]
            assert {c.path for c in view.calls} == set(PATHS)


@pytest.mark.slow
@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_shares_t_workers_hold_are_uniform_in_every_residue_and_independent_of_the_data(captures, scaling):
    run, reference = PAIRS[scaling]
    statistics = share_statistics(captures.runs[run], captures.runs[reference])
    assert min(statistics.values()) > UNIFORM, statistics


@pytest.mark.slow
@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_weight_shares_are_uniform_in_every_residue_fresh_every_round_and_independent_of_the_data(
    captures, scaling
):
    run, reference = PAIRS[scaling]
    statistics = weight_statistics(captures.runs[run], captures.runs[reference])
    assert min(statistics.values()) > UNIFORM, statistics


@pytest.mark.slow
@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_sigmoid_value_shares_are_uniform_in_every_residue_fresh_every_round_and_independent_of_the_data(
    captures, scaling
):
    run, reference = PAIRS[scaling]
    statistics = sigmoid_statistics(captures.runs[run], captures.runs[reference])
    assert min(statistics.values()) > UNIFORM, statistics


@pytest.mark.slow
@pytest.mark.parametrize("scaling", SCALINGS)
def test_no_plaintext_run_reaches_the_colluders(captures, scaling):
    run = captures.runs[PAIRS[scaling][0]]
    assert all(needles for needles in plaintext_needles(run, run.plan.moduli).values())  # something to find
    hits = plaintext_hits(run)
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}


@pytest.mark.slow
def test_without_masks_the_same_examination_finds_the_leak(captures):
    run, reference = captures.runs["data-unmasked"], captures.runs["zeros-unmasked"]
    shares, weights = share_statistics(run, reference), weight_statistics(run, reference)
    sigmoids = sigmoid_statistics(run, reference)
    assert max(shares.values()) < LEAK, shares
    assert max(weights.values()) < LEAK, weights
    assert max(sigmoids.values()) < LEAK, sigmoids
    hits = plaintext_hits(run)
    for j in range(run.plan.residues):  # the data, the weights and the sigmoid values, in every residue field
        assert hits[f"quantized data (rows) in zero-mask decoding (residue {j})"] > 0, hits
        assert hits[f"quantized weights in zero-mask decoding (residue {j})"] > 0, hits
        assert hits[f"sigmoid values in zero-mask decoding (residue {j})"] > 0, hits


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


def check_public_fields(run: Run, view: WorkerView) -> None:
    """Every field the worker receives is a public parameter of the plan, the shape or the job id."""
    plan = run.plan
    rows = math.ceil(len(run.x) / plan.k)
    chunks = view.chunks
    # degree 0 (the exact sigmoid) is proto3's default, so it is not on the wire; the coefficients are residues x 0
    assert [_fields(c.spec) for c in chunks] == [{"moduli", "rows", "cols", "coefficients", "model"}] + [set()] * (
        len(chunks) - 1
    )
    spec = view.spec
    assert (view.moduli, spec.degree, spec.rows, spec.cols, spec.model) == (
        plan.moduli,
        plan.r,
        rows,
        run.x.shape[1],
        plan.model,
    )
    expected = scaled_coefficients(
        model_coefficients(plan.model, plan.r, plan.sigmoid_interval), plan.lx, plan.lw, plan.lc
    )
    coefficients = np.frombuffer(spec.coefficients.data, dtype="<u4")
    np.testing.assert_array_equal(
        coefficients.reshape(spec.coefficients.rows, spec.coefficients.cols), plan.basis.residues(expected)
    )
    for chunk in chunks:
        assert _fields(chunk) <= {"job_id", "spec", "residue", "row_offset", "block", "crc32"}
        assert chunk.residue < plan.residues
        assert chunk.crc32 == zlib.crc32(chunk.block.data)  # a function of the share bytes it guards
    assert re.fullmatch(r"[0-9a-f]{32}", run.job_id)  # uuid4: random, says nothing about the job
    for msg in view.rounds:
        assert _fields(msg) <= {"job_id", "round", "weights"} and msg.job_id == run.job_id
        assert (msg.weights.rows, msg.weights.cols) == (plan.residues * run.x.shape[1], 1)
    for msg in view.sigmoid_rounds:
        assert _fields(msg) <= {"job_id", "round", "stage", "sigmoid_values"} and msg.job_id == run.job_id
        assert (msg.sigmoid_values.rows, msg.sigmoid_values.cols) == (plan.residues * rows, 1)
    end_requests = [m for c in view.of("/cpml.v1.Worker/EndJob") for m in c.parsed()[0]]
    assert [(m.job_id, _fields(m)) for m in end_requests] == [(run.job_id, {"job_id"})]
    for call in (*view.of("/cpml.v1.Worker/Status"), *view.of("/grpc.health.v1.Health/Check")):
        assert all(_fields(m) <= {"service"} for m in call.parsed()[0])
        assert {m.service for m in call.parsed()[0] if m.ListFields()} <= {"cpml.v1.Worker"}
    for call in view.calls:
        names = {name for name, _ in call.request_headers}
        assert names <= REQUEST_HEADERS, names - REQUEST_HEADERS
        assert dict(call.request_headers)["content-type"] == "application/grpc"


def public_metadata(view: WorkerView) -> tuple:
    """Everything the worker receives but the job id, the share bytes' checksums and the deadlines' time left."""
    headers = [[h for h in c.request_headers if h[0] != "grpc-timeout"] for c in view.calls]
    return (
        view.spec.SerializeToString(deterministic=True),
        [(c.residue, c.row_offset, c.block.rows, c.block.cols) for c in view.chunks],
        [(m.round, m.stage, m.weights.rows, m.weights.cols, m.sigmoid_values.rows) for m in view.requests],
        headers,
    )


@pytest.mark.slow
@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_colluders_receive_only_public_parameters(captures, scaling):
    data, zeros = (captures.runs[name] for name in PAIRS[scaling])
    for index in COLLUDERS:
        for run in (data, zeros):
            check_public_fields(run, run.colluders[index])
        # Two datasets of the same shape: the same moduli and coefficients (the precision), the same metadata.
        a, b = data.colluders[index], zeros.colluders[index]
        assert a.moduli == b.moduli, f"worker {index}: the residue moduli depend on the data"
        assert a.spec.coefficients == b.spec.coefficients, f"worker {index}: the coefficients depend on the data"
        assert public_metadata(a) == public_metadata(b), f"worker {index}: the job metadata depends on the data"


def test_public_profile_bounds_every_matrix_the_scaling_can_produce():
    rng = np.random.default_rng(0)
    for m, d in ((288, 64), (7, 3), (2, 5), (10, 1)):
        spike = np.zeros((m, d))
        spike[0] = 1e6  # one outlying row: after standardising, its entries reach sqrt(m - 1)
        raws = (rng.normal(size=(m, d)), np.zeros((m, d)), spike, rng.integers(0, 17, (m, d)) ** 3.0)
        assert public_profile("none", m, d) is None  # no public range: planning would need the data
        for scaling in SCALINGS:
            for raw in raws:
                scaled, _, _ = scale(raw, raw[:1], scaling)
                for x in (scaled, np.hstack([scaled, np.ones((m, 1))])):  # with and without the intercept
                    bound, actual = public_profile(scaling, *x.shape), DataProfile.of(x, 1)
                    assert (bound.rows, bound.d) == x.shape
                    for name in ("max_column_norm", "frobenius", "max_row_norm"):
                        assert getattr(actual, name)[0] <= getattr(bound, name)[0], (scaling, name, m, d)
        # Min-max: the all-ones matrix, the worst case the range allows, attains the bound.
        ones, bound = DataProfile.of(np.ones((m, d)), 1), public_profile("minmax", m, d)
        for name in ("max_column_norm", "frobenius", "max_row_norm"):
            assert getattr(ones, name)[0] == pytest.approx(getattr(bound, name)[0], rel=1e-8)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_automatic_precision_depends_on_the_shape_alone(scaling):
    settings = TrainSettings(dataset=DATASET, scaling=scaling, t=T, seed=SEED)
    x = load_training_data(settings).x_train
    others = (np.zeros_like(x), np.random.default_rng(1).random(x.shape), x[::-1] ** 2)
    plan = make_plan(settings, N, x)
    assert plan.residues >= 2
    assert all(make_plan(settings, N, other) == plan for other in others)
    # Planned from the data's own norms (the protection removed, as --scaling none must), the precision, and
    # so the moduli and the coefficients the workers receive, differ between these datasets of one shape.
    chosen = {(q.moduli, q.lx, q.lw, q.lc) for q in (auto_precision(plan, DataProfile.of(v, 1)) for v in (x, *others))}
    assert len(chosen) > 1


def test_data_dependent_precision_is_announced():
    x = load_training_data(TrainSettings(dataset=DATASET, scaling="none", seed=SEED)).x_train
    levels = {"lx": 4, "lw": 6, "lc": 4}
    with structlog.testing.capture_logs() as logs:
        make_plan(TrainSettings(dataset=DATASET, scaling="none", t=T), N, x)  # everything from the data
        make_plan(TrainSettings(dataset=DATASET, scaling="none", t=T, **levels), N, x)  # the residues still
        make_plan(TrainSettings(dataset=DATASET, scaling="none", t=T, residues=3, **levels), N, x)  # nothing
        for scaling in SCALINGS:  # nothing: the shape and the scaling's range
            make_plan(TrainSettings(dataset=DATASET, scaling=scaling, t=T), N, x)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [DATA_DEPENDENT_QUANTIZATION] * 2


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


def logged_values(events: list[dict], secrets: set[int], job_ids: Iterable[str] = ()) -> list[tuple[str, int]]:
    """(event, number) for every logged number >= BIG that is one of the given field elements."""
    # A job id is a public random uuid; its runs of decimal digits (89412086469 in '...9a89412086469f0d...')
    # can equal one of the ~10^5 field elements seen (density ~0.3% below p) by chance: skip those values.
    public = set(job_ids)
    scanned = [{k: v for k, v in e.items() if not (isinstance(v, str) and v in public)} for e in events]
    return [(e.get("event", "?"), n) for e in scanned for n in _numbers(e) if n >= BIG and n in secrets]


@pytest.mark.slow
def test_worker_logs_hold_none_of_the_values_the_workers_saw(captures):
    for index, events in captures.worker_logs.items():
        seen = {int(v) for run in captures.runs.values() for v in run.colluders[index].elements()}
        assert sum(v >= BIG for v in seen) > 10_000
        jobs = {e.get("job") for e in events}
        assert {run.job_id for run in captures.runs.values()} <= jobs  # the log covers every run
        assert any(e.get("event") == "round computed" for e in events)  # at debug level
        assert not any(isinstance(v, (list, dict)) for e in events for v in e.values())
        job_ids = {run.job_id for run in captures.runs.values()}
        assert logged_values(events, seen, job_ids) == []
        # The same check on a line that does log a share value finds it.
        leaky = {
            "event": "round computed",
            "job": sorted(job_ids)[0],
            "share": str(sorted(v for v in seen if v >= BIG)[:4]),
        }
        assert logged_values([leaky], seen, job_ids)

"""Shared test helpers for the distributed system: in-process workers, small jobs, TLS certificates."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from cpml.field import ResidueBasis, residue_primes
from cpml.protocol import worker_compute
from cpml.wire import serde
from cpml.wire.certs import make_cluster_pki
from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc
from cpml.worker.server import WorkerServer
from cpml.worker.settings import WorkerSettings

P = 33554393
MODULI = residue_primes(P, 2)  # the default plan's residue primes: P and the next prime below it
DEADLINE = 10.0


@dataclass(frozen=True)
class SmallJob:
    """A random share and weights for a worker in every residue field; no training semantics, just elements."""

    job_id: str
    spec: serde.WireJobSpec
    share: np.ndarray  # residues x rows x cols

    @property
    def moduli(self) -> tuple[int, ...]:
        return self.spec.moduli

    def weights(self, round_number: int) -> np.ndarray:
        """This round's encoded weights, residues x cols x degree, each residue below its own modulus."""
        rng = np.random.default_rng(round_number)
        return _elements(rng, self.moduli, (self.spec.cols, self.spec.degree))

    def expected(self, round_number: int) -> np.ndarray:
        """What the worker must answer for this round: the protocol's worker function, residues x cols."""
        return worker_compute(ResidueBasis(self.moduli), self.share, self.weights(round_number), self.spec.coefficients)

    def chunks(self, max_chunk_bytes: int = 64) -> list[pb.ShareChunk]:
        """Every residue's rows as ShareChunks, residue by residue; the first chunk carries the spec."""
        return [
            chunk
            for residue in range(self.spec.residues)
            for chunk in serde.share_chunks_to_proto(
                self.job_id, 0, self.share[residue], self.spec if residue == 0 else None, max_chunk_bytes, residue
            )
        ]


def _elements(rng: np.random.Generator, moduli: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Uniform elements of shape (residues, *shape), residue j in [0, moduli[j])."""
    return np.stack([rng.integers(0, m, size=shape, dtype=np.uint32) for m in moduli])


def small_job(
    job_id: str = "job-1",
    rows: int = 6,
    cols: int = 4,
    degree: int = 1,
    moduli: tuple[int, ...] = MODULI,
    seed: int = 0,
) -> SmallJob:
    rng = np.random.default_rng(seed)
    spec = serde.WireJobSpec(
        moduli=tuple(moduli),
        degree=degree,
        rows=rows,
        cols=cols,
        coefficients=_elements(rng, moduli, (degree + 1,)),
        model="logistic",
    )
    return SmallJob(job_id, spec, _elements(rng, moduli, (rows, cols)))


@contextlib.asynccontextmanager
async def running_worker(**overrides) -> AsyncIterator[WorkerServer]:
    settings = WorkerSettings(**{"listen": "127.0.0.1:0", "insecure": True, "drain_seconds": 0.5, **overrides})
    server = WorkerServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.2)


@contextlib.asynccontextmanager
async def stub_for(
    address: str, credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None
) -> AsyncIterator[pb_grpc.WorkerStub]:
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    async with channel:
        yield pb_grpc.WorkerStub(channel)


async def upload(stub: pb_grpc.WorkerStub, chunks: Iterable[pb.ShareChunk]) -> pb.UploadReply:
    async def stream():
        for chunk in chunks:
            yield chunk

    return await stub.UploadShare(stream(), timeout=DEADLINE)


async def compute(stub: pb_grpc.WorkerStub, requests: Iterable[pb.RoundRequest]) -> list[pb.RoundResult]:
    async def stream():
        for request in requests:
            yield request

    call = stub.Compute(stream(), timeout=DEADLINE)
    return [reply async for reply in call]


# --- TLS material -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A CA, a worker certificate for localhost/127.0.0.1 and a master client certificate, as PEM files."""
    pki = make_cluster_pki(directory, ["localhost", "127.0.0.1"], ["master"], days=1, ca_name=f"{name} CA")
    client_cert, client_key = pki.clients["master"]
    return Pki(
        ca=pki.ca,
        server_cert=pki.worker_cert,
        server_key=pki.worker_key,
        client_cert=client_cert,
        client_key=client_key,
    )

"""Shared test helpers for the distributed system: in-process workers, small jobs, TLS certificates."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from cpml.wire import serde
from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc
from cpml.worker.server import WorkerServer
from cpml.worker.settings import WorkerSettings

P = 33554393
DEADLINE = 10.0


@dataclass(frozen=True)
class SmallJob:
    """A random share and weights for a worker; no training semantics, just valid field elements."""

    job_id: str
    spec: serde.WireJobSpec
    share: np.ndarray

    def weights(self, round_number: int) -> np.ndarray:
        rng = np.random.default_rng(round_number)
        return rng.integers(0, self.spec.modulus, size=(self.spec.cols, self.spec.degree), dtype=np.uint32)

    def chunks(self, max_chunk_bytes: int = 64) -> list[pb.ShareChunk]:
        return list(serde.share_chunks_to_proto(self.job_id, 0, self.share, self.spec, max_chunk_bytes))


def small_job(job_id: str = "job-1", rows: int = 6, cols: int = 4, degree: int = 1, modulus: int = P,
              seed: int = 0) -> SmallJob:
    rng = np.random.default_rng(seed)
    spec = serde.WireJobSpec(modulus=modulus, degree=degree, rows=rows, cols=cols,
                             coefficients=rng.integers(0, min(modulus, P), size=degree + 1, dtype=np.uint32),
                             model="logistic")
    share = rng.integers(0, min(modulus, P), size=(rows, cols), dtype=np.uint32)
    return SmallJob(job_id, spec, share)


@contextlib.asynccontextmanager
async def running_worker(**overrides) -> AsyncIterator[WorkerServer]:
    settings = WorkerSettings(**{"listen": "127.0.0.1:0", "insecure": True, "drain_seconds": 0.5,
                                 **overrides})
    server = WorkerServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.2)


@contextlib.asynccontextmanager
async def stub_for(address: str, credentials: grpc.ChannelCredentials | None = None,
                   server_name: str | None = None) -> AsyncIterator[pb_grpc.WorkerStub]:
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
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, usages=(), sans=None):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = cert(f"{name} CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    # a worker's certificate also allows client authentication: workers of the MPC baselines dial each other
    server_cert = cert("localhost", server_key, ca_name, ca_key, ca=False,
                       usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
                       sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = cert(f"{name} master", client_key, ca_name, ca_key, ca=False,
                       usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    files = {"ca": ca_cert.public_bytes(serialization.Encoding.PEM),
             "server_cert": server_cert.public_bytes(serialization.Encoding.PEM), "server_key": key_pem(server_key),
             "client_cert": client_cert.public_bytes(serialization.Encoding.PEM), "client_key": key_pem(client_key)}
    for stem, data in files.items():
        (directory / f"{stem}.pem").write_bytes(data)
    return Pki(**{stem: directory / f"{stem}.pem" for stem in files})

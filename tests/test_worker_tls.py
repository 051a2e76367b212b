"""TLS and mutual TLS between a client and a real worker server on 127.0.0.1."""

from __future__ import annotations

import grpc
import pytest
from helpers_cluster import DEADLINE, running_worker, stub_for

from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.wire.tls import channel_credentials


async def _status(address, credentials):
    async with stub_for(address, credentials) as stub:
        return await stub.Status(pb.StatusRequest(), timeout=DEADLINE)


async def test_mutual_tls_accepts_a_client_certificate_signed_by_the_ca(pki):
    async with running_worker(
        insecure=False, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    ) as worker:
        reply = await _status(worker.address, channel_credentials(pki.ca, pki.client_cert, pki.client_key))
        assert reply.version


@pytest.mark.parametrize("client", ["no-certificate", "foreign-certificate", "plaintext"])
async def test_mutual_tls_refuses_clients_without_a_valid_certificate(pki, stranger, client):
    credentials = {
        "no-certificate": channel_credentials(pki.ca),
        "foreign-certificate": channel_credentials(pki.ca, stranger.client_cert, stranger.client_key),
        "plaintext": None,
    }[client]
    async with running_worker(
        insecure=False, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    ) as worker:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _status(worker.address, credentials)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # and a good client is still served afterwards
        assert (await _status(worker.address, channel_credentials(pki.ca, pki.client_cert, pki.client_key))).version


async def test_client_refuses_a_server_its_ca_did_not_sign(pki, stranger):
    async with running_worker(insecure=False, tls_cert=stranger.server_cert, tls_key=stranger.server_key) as worker:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _status(worker.address, channel_credentials(pki.ca))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await _status(worker.address, channel_credentials(stranger.ca))).version  # server-only TLS


def test_unreadable_pem_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="Argument 'tls_ca' must be a readable PEM file, not"):
        channel_credentials(tmp_path / "missing.pem")

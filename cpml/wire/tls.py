"""gRPC credentials from PEM files: server (optionally demanding client certificates) and channel."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(
            f"Argument '{what}' must be a readable PEM file, not {str(path)!r} ({exc.strerror})."
        ) from None


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS for a server; with client_ca, mutual TLS: clients without a certificate signed by it are refused."""
    ca = _read(client_ca, "tls_client_ca")
    pair = (_read(key, "tls_key"), _read(cert, "tls_cert"))
    assert pair[0] is not None and pair[1] is not None  # both paths are given
    return grpc.ssl_server_credentials([(pair[0], pair[1])], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS for a client, trusting `ca` (system roots if None) and presenting cert/key for mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError(f"Argument 'tls_cert' must come with 'tls_key' (both or neither), not cert={cert} key={key}.")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "tls_ca"),
        private_key=_read(key, "tls_key"),
        certificate_chain=_read(cert, "tls_cert"),
    )


def client_channel(address: str, args: argparse.Namespace) -> grpc.Channel:
    """A blocking channel to `address` with the TLS settings of add_client_tls_arguments."""
    if args.tls_ca is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, channel_credentials(args.tls_ca, args.tls_cert, args.tls_key))

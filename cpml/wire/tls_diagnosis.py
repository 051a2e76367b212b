"""Why a TLS connection to a daemon fails, in words an operator can act on, within seconds.

gRPC reports a refused handshake only as UNAVAILABLE or a deadline: the master would wait its whole connect
timeout. When a worker does not answer, the master runs the handshake itself with Python's ssl module (the
same CA, client certificate and expected name) and names the cause: the worker speaks plaintext, its
certificate is not signed by --tls-ca, it is not issued for the name dialled, or the worker demands a client
certificate the master did not present (or signed by another CA).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class TlsSettings:
    """What the master dials with: the CA it trusts, its client certificate, the name it expects."""

    ca: Path | None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


def diagnose(address: str, tls: TlsSettings | None, timeout: float = 3.0) -> str | None:
    """The cause of a failing connection to `address` (host:port), or None when nothing TLS-related is wrong."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError) as exc:
        return f"nothing accepts connections at {address} ({exc})"
    with raw:
        raw.settimeout(timeout)
        if tls is None:
            return _plaintext_against_tls(raw, address, host)
        return _handshake(raw, address, host, tls)


def _plaintext_against_tls(raw: socket.socket, address: str, host: str) -> str | None:
    """A plaintext client: a gRPC server answers the HTTP/2 preface; one that hangs up may be speaking TLS."""
    try:
        raw.sendall(_HTTP2_PREFACE)
        if raw.recv(16):
            return None  # an HTTP/2 answer: plaintext is right
    except OSError:
        pass
    if not _speaks_tls(host, int(address.rpartition(":")[2]), raw.gettimeout() or 3.0):
        return None
    return (
        f"{address} serves TLS but the master connects in plaintext (--insecure): pass --tls-ca (and "
        f"--tls-cert/--tls-key if the worker demands client certificates)"
    )


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether the server completes (or gets far into) a TLS handshake, trusting anything."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw):
            return True
    except ssl.SSLError as exc:
        return "wrong version" not in str(exc).lower()
    except OSError:
        return False


def _handshake(raw: socket.socket, address: str, host: str, tls: TlsSettings) -> str | None:
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    context.set_alpn_protocols(["h2"])
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    name = tls.server_name or host
    try:
        with context.wrap_socket(raw, server_hostname=name) as conn:
            conn.sendall(_HTTP2_PREFACE)  # TLS 1.3: a refused client certificate shows on the first read
            if not conn.recv(1):  # the worker hung up after the handshake: it refused our certificate
                return _client_certificate_problem(address, tls)
    except ssl.SSLCertVerificationError as exc:
        if "hostname" in str(exc.verify_message).lower() or "mismatch" in str(exc).lower():
            return (
                f"{address}'s certificate is not issued for {name!r}: connect by a name it lists, or pass "
                f"--tls-server-name with one of them"
            )
        return (
            f"{address}'s certificate is not signed by the CA in --tls-ca ({exc.verify_message}): pass the "
            f"CA that issued the workers' certificates"
        )
    except ssl.SSLError as exc:
        text = f"{exc.reason or ''} {exc}".lower()
        if "wrong version" in text or "record layer" in text or "packet length" in text:
            return (
                f"{address} speaks plaintext but the master uses TLS: start the worker with --tls-cert/"
                f"--tls-key, or connect with --insecure on a network you trust"
            )
        if "certificate required" in text or "alert certificate required" in text or "handshake failure" in text:
            return _client_certificate_problem(address, tls)
        if "unknown ca" in text or "bad certificate" in text:
            return _client_certificate_problem(address, tls)
        return f"the TLS handshake with {address} failed: {exc.reason or exc}"
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        return _client_certificate_problem(address, tls) if tls.cert is None else None
    except OSError:
        return None
    return None


def _client_certificate_problem(address: str, tls: TlsSettings) -> str:
    if tls.cert is None:
        return (
            f"{address} demands a client certificate (mutual TLS) and the master presented none: pass "
            f"--tls-cert and --tls-key signed by the worker's --tls-client-ca"
        )
    return (
        f"{address} refused the master's client certificate {str(tls.cert)!r}: it must be signed by the CA "
        f"the worker was started with (--tls-client-ca)"
    )

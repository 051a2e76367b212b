"""A private certificate authority for one cluster: a CA, one worker certificate for every worker host
and one client certificate per master, as PEM files ready for --tls-* flags.

    python -m cpml.wire.certs --out certs --hosts w1.example.org,w2.example.org,10.0.0.7 --clients master

Writes ca.pem (give it to everyone), ca.key (keep it offline), worker.pem/worker.key (one certificate
whose names cover every worker host; it also allows client authentication, which worker-to-worker
channels need) and <client>.pem/<client>.key for each client. Private keys are created mode 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cpml.cli_args import comma_list


@dataclass(frozen=True)
class ClusterPki:
    """Paths of the PEM files of one cluster's PKI."""

    ca: Path
    ca_key: Path
    worker_cert: Path
    worker_key: Path
    clients: dict[str, tuple[Path, Path]]  # name -> (cert, key)


def _name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_cluster_pki(
    out: Path,
    hosts: Sequence[str],
    clients: Sequence[str] = ("master",),
    days: int = 365,
    ca_name: str = "cpml cluster CA",
) -> ClusterPki:
    """Create a CA, a worker certificate naming every host, and one client certificate per name."""
    if not hosts:
        raise ValueError("Argument 'hosts' must name at least one worker host, not [].")
    if days < 1:
        raise ValueError(f"Argument 'days' must be positive, not {days}.")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        *,
        ca: bool,
        usages: Sequence[x509.ObjectIdentifier] = (),
        sans: Sequence[x509.GeneralName] = (),
    ) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = _write(out / "ca.pem", issue(ca_name, ca_key, issuer, ca_key, ca=True))
    ca_key_path = _write(out / "ca.key", _key_pem(ca_key), private=True)
    worker_key = ec.generate_private_key(ec.SECP256R1())
    worker_cert = _write(
        out / "worker.pem",
        issue(
            hosts[0],
            worker_key,
            issuer,
            ca_key,
            ca=False,
            usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
            sans=[_name(h) for h in hosts],
        ),
    )
    worker_key_path = _write(out / "worker.key", _key_pem(worker_key), private=True)
    client_files = {}
    for client in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _write(
            out / f"{client}.pem",
            issue(client, key, issuer, ca_key, ca=False, usages=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
        )
        client_files[client] = (cert, _write(out / f"{client}.key", _key_pem(key), private=True))
    return ClusterPki(
        ca=ca, ca_key=ca_key_path, worker_cert=worker_cert, worker_key=worker_key_path, clients=client_files
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a cluster PKI into --out."""
    parser = argparse.ArgumentParser(
        prog="python -m cpml.wire.certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    parser.add_argument("--hosts", required=True, help="comma-separated worker host names or IP addresses")
    parser.add_argument("--clients", default="master", help="comma-separated client names (default: master)")
    parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing ca.pem in --out")
    args = parser.parse_args(argv)
    if (args.out / "ca.pem").exists() and not args.force:
        print(f"{args.out / 'ca.pem'} exists; keeping the existing PKI (pass --force to replace it)")
        return 0
    names = comma_list(args.clients)
    try:
        pki = make_cluster_pki(args.out, comma_list(args.hosts), names, args.days)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {pki.ca}, {pki.worker_cert} (+ keys) and client certificates for {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

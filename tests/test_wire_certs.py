"""The cluster PKI generator: file set, permissions, names, usages, and it refuses to clobber a CA."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cpml.wire import certs


def test_cli_writes_a_ca_worker_and_client_certificates(tmp_path, capsys):
    out = tmp_path / "pki"
    assert certs.main(["--out", str(out), "--hosts", "w1.example.org,10.0.0.7", "--clients", "master,ops"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "ca.pem",
        "ca.key",
        "worker.pem",
        "worker.key",
        "master.pem",
        "master.key",
        "ops.pem",
        "ops.key",
    }
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    worker = x509.load_pem_x509_certificate((out / "worker.pem").read_bytes())
    names = worker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["w1.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    usages = set(worker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    worker.verify_directly_issued_by(ca)
    # a second run keeps the existing CA unless told otherwise
    before = (out / "ca.pem").read_bytes()
    assert certs.main(["--out", str(out), "--hosts", "w1.example.org"]) == 0
    assert (out / "ca.pem").read_bytes() == before and "keeping the existing PKI" in capsys.readouterr().out
    assert certs.main(["--out", str(out), "--hosts", "w1.example.org", "--force"]) == 0
    assert (out / "ca.pem").read_bytes() != before


def test_bad_arguments_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="Argument 'hosts' must name at least one worker host, not"):
        certs.make_cluster_pki(tmp_path, [])
    with pytest.raises(ValueError, match="Argument 'days' must be positive, not 0."):
        certs.make_cluster_pki(tmp_path, ["w1"], days=0)

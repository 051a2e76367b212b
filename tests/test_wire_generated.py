"""The committed generated code matches proto/, and pyproject's floors match the generator."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) generates the code")
    run = subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--check"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def test_check_detects_stale_output(tmp_path, monkeypatch):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) generates the code")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_proto
    finally:
        sys.path.pop(0)
    stale = tmp_path / "generated"
    gen_proto.generate(stale)
    (stale / "v1" / "worker_pb2.py").write_text("# edited by hand\n")
    monkeypatch.setattr(gen_proto, "OUT_ROOT", stale)
    assert gen_proto.check() == 1


def test_generated_imports_are_package_relative():
    for path in (REPO / "cpml/wire/generated").rglob("*.py"):
        assert not re.search(r"^from cpml\.v1 import", path.read_text(), re.MULTILINE), path


def test_pyproject_floors_match_the_generator():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = dict(re.match(r"([\w-]+)>=([\d.]+)", dep).groups() for dep in project["dependencies"] if ">=" in dep)
    grpc_code = (REPO / "cpml/wire/generated/v1/worker_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code).group(1)
    pb_code = (REPO / "cpml/wire/generated/v1/worker_pb2.py").read_text()
    pb_version = re.search(r"Protobuf Python Version: ([\d.]+)", pb_code).group(1)

    def as_tuple(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    assert floors["grpcio"] == grpc_version
    assert floors["grpcio-health-checking"] == grpc_version
    assert as_tuple(floors["protobuf"]) >= as_tuple(pb_version)


def test_the_residue_contract_keeps_its_field_numbers():
    # Renumbering would make old and new peers misread each other silently; the worker must instead see an
    # old master's single `modulus` (field 1) and refuse it.
    from cpml.wire.generated.v1 import worker_pb2 as pb

    spec = pb.JobSpec.DESCRIPTOR.fields_by_name
    assert (spec["modulus"].number, spec["modulus"].type) == (1, spec["modulus"].TYPE_UINT64)
    moduli = spec["moduli"]
    assert (moduli.number, moduli.type, moduli.is_repeated, moduli.is_packed) == (7, moduli.TYPE_UINT64, True, True)
    residue = pb.ShareChunk.DESCRIPTOR.fields_by_name["residue"]
    assert (residue.number, residue.type, residue.is_repeated) == (6, residue.TYPE_UINT32, False)
    old_spec = b"\x08" + bytes([0xD9, 0xFF, 0xFF, 0x0F])  # field 1 varint 33554393, as cpml 0.1 wrote it
    assert pb.JobSpec.FromString(old_spec).modulus == 33554393 == 2**25 - 39


def test_the_test_extra_has_the_floor_the_pytest_settings_need():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    test_extra = dict(
        re.match(r"([\w-]+)>=([\d.]+)", dep).groups()
        for dep in pyproject["project"]["optional-dependencies"]["test"]
        if ">=" in dep
    )
    if "asyncio_default_fixture_loop_scope" in pyproject["tool"]["pytest"]["ini_options"]:
        assert tuple(int(x) for x in test_extra["pytest-asyncio"].split(".")) >= (0, 24)  # the option came in 0.24

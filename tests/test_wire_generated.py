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
    run = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=REPO,
                         check=False, capture_output=True, text=True, timeout=120)
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
    floors = dict(re.match(r"([\w-]+)>=([\d.]+)", dep).groups()
                  for dep in project["dependencies"] if ">=" in dep)
    grpc_code = (REPO / "cpml/wire/generated/v1/worker_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code).group(1)
    pb_code = (REPO / "cpml/wire/generated/v1/worker_pb2.py").read_text()
    pb_version = re.search(r"Protobuf Python Version: ([\d.]+)", pb_code).group(1)

    def as_tuple(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    assert floors["grpcio"] == grpc_version
    assert floors["grpcio-health-checking"] == grpc_version
    assert as_tuple(floors["protobuf"]) >= as_tuple(pb_version)

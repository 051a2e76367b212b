"""`python -m cpml.worker.jobs HOST:PORT [--end JOB_ID ...] [--end-all]`: list or end the jobs a worker holds.

For operators: a master that died without ending its job leaves the share on the workers until
`--orphan-seconds`; this lists every stored job (id, shape, bytes, idle time, open compute streams) and
ends the ones named. Plaintext unless --tls-ca is given (with mutual TLS, pass a client certificate).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from cpml.cli_args import add_client_tls_arguments
from cpml.wire import serde
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc
from cpml.wire.tls import client_channel

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    pass


def list_jobs(stub: pb_grpc.WorkerStub, timeout: float) -> list[serde.JobSummary]:
    """The jobs the worker holds."""
    return serde.jobs_from_proto(stub.ListJobs(serde.list_jobs_request(), timeout=timeout))


def end_job(stub: pb_grpc.WorkerStub, job_id: str, timeout: float) -> int:
    """End one job; the bytes it freed (0: it was not stored)."""
    return int(stub.EndJob(serde.end_job_request(job_id), timeout=timeout).freed_bytes)


def render(jobs: list[serde.JobSummary]) -> str:
    """One line per job, aligned, or a note that there are none."""
    if not jobs:
        return "no jobs"
    lines = [f"{'job':34} {'residues x rows x cols':>22} {'bytes':>12} {'idle s':>8} {'streams':>7}"]
    for j in jobs:
        shape = f"{j.residues} x {j.rows} x {j.cols}"
        lines.append(f"{j.job_id:34} {shape:>22} {j.bytes:>12} {j.idle_seconds:>8.0f} {j.compute_streams:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """List the jobs (after ending any named); exit 0, or 1 when the worker cannot be reached."""
    parser = argparse.ArgumentParser(prog="python -m cpml.worker.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of a cpml-worker")
    parser.add_argument("--end", action="append", default=[], metavar="JOB_ID", help="end this job (repeatable)")
    parser.add_argument("--end-all", action="store_true", help="end every job the worker holds")
    parser.add_argument("--timeout", type=float, default=5.0)
    add_client_tls_arguments(parser)
    args = parser.parse_args(argv)
    with client_channel(args.address, args) as channel:
        stub = pb_grpc.WorkerStub(channel)
        try:
            ids = [j.job_id for j in list_jobs(stub, args.timeout)] if args.end_all else args.end
            for job_id in ids:
                freed = end_job(stub, job_id, args.timeout)
                print(f"ended {job_id} ({freed} bytes freed)" if freed else f"{job_id}: no such job")
            print(render(list_jobs(stub, args.timeout)))
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except serde.MalformedMessage as exc:
            print(f"Argument 'end' {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

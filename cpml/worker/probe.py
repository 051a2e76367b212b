"""`python -m cpml.worker.probe HOST:PORT`: exit 0 if the worker's health service reports SERVING (for
container health checks and scripts); plaintext unless --tls-ca is given."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpml.cli_args import add_client_tls_arguments
from cpml.wire import names
from cpml.wire.tls import client_channel


def probe(channel: grpc.Channel, timeout: float = 3.0) -> str:
    """The worker's serving status name (SERVING, NOT_SERVING, ...) or the gRPC error code name."""
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=names.WORKER_SERVICE), timeout=timeout
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the status; exit 0 when SERVING, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m cpml.worker.probe", description=__doc__)
    parser.add_argument("address", help="host:port of a cpml-worker")
    parser.add_argument("--timeout", type=float, default=3.0)
    add_client_tls_arguments(parser)
    args = parser.parse_args(argv)
    status = probe(client_channel(args.address, args), args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())

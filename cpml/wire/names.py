"""Service and method names, read from the generated descriptors so that the .proto files are their only source."""

from cpml.wire.generated.v1 import aggregation_pb2, mpc_pb2, worker_pb2

WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
AGGREGATION_SERVICE = aggregation_pb2.DESCRIPTOR.services_by_name["Aggregation"].full_name


def method_path(service: str, method: str) -> str:
    """The HTTP/2 path of one RPC, e.g. /cpml.v1.Worker/UploadShare (checked against the descriptor)."""
    for module in (worker_pb2, mpc_pb2, aggregation_pb2):
        for descriptor in module.DESCRIPTOR.services_by_name.values():
            if descriptor.full_name == service:
                return f"/{service}/{descriptor.methods_by_name[method].name}"
    raise KeyError(f"no service {service!r} in cpml's protocol")

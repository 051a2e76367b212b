"""The Mpc gRPC servicer: decode with mpc_serde, call the worker's MPC runtime (cpml.worker.mpc_runtime), encode,
map its refusals to statuses; and `GrpcPeer`, the runtime's link to a peer worker's Mpc service.

A job computes in the residue fields its Join declares (every payload holds one slice per modulus); a Join
in the single-modulus format of cpml 0.1 is refused with INVALID_ARGUMENT rather than misread.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import structlog

import cpml.errors as errors
from cpml.mpc import Message
from cpml.wire import mpc_serde
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc
from cpml.wire.guard import status_of
from cpml.wire.serde import MAX_DEGREE, MalformedMessage, check_id
from cpml.wire.tls import channel_credentials
from cpml.worker.mpc_runtime import MpcRuntime, PeerRefused
from cpml.worker.settings import WorkerSettings

if TYPE_CHECKING:  # messages are built and read in cpml.wire; here they only annotate
    from cpml.wire.generated.v1 import mpc_pb2 as pb

log = structlog.get_logger(__name__)

PEER_TIMEOUT = 60.0  # seconds one Deliver to a peer may take before the job is failed


class MpcService(pb_grpc.MpcServicer):
    """Serves Join, Deliver, Results and Leave for the BGW and BH08 baselines. Every refusal is a CpmlError
    carrying its status; any other exception is a bug, which the guard (cpml.wire.guard) reports."""

    def __init__(self, runtime: MpcRuntime) -> None:
        self._runtime = runtime

    async def Join(self, request: pb.MpcJoinRequest, context: grpc.aio.ServicerContext) -> pb.MpcJoinReply:
        try:
            check_id(request.job_id)  # before the degree, whose check guards the decoding
            if not 1 <= request.degree <= MAX_DEGREE:
                raise MalformedMessage(
                    f"Join request declares sigmoid degree {request.degree}; the degree r must be "
                    f"between 1 and {MAX_DEGREE}"
                )
            spec, peers = mpc_serde.join_from_proto(request)
            job = self._runtime.join(request.job_id, spec, peers)
        except errors.CpmlError as exc:
            log.warning("mpc join refused", code=exc.status, reason=str(exc))
            await context.abort(status_of(exc), str(exc))
        return mpc_serde.join_reply(job.job_id)

    async def Deliver(self, request: pb.MpcEnvelope, context: grpc.aio.ServicerContext) -> pb.MpcDeliverReply:
        try:
            job = self._runtime.job(request.job_id)
            job.deliver(mpc_serde.envelope_from_proto(request, job.spec.moduli))
        except errors.CpmlError as exc:
            await context.abort(status_of(exc), str(exc))
        return mpc_serde.deliver_reply()

    async def Results(
        self, request: pb.MpcResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MpcEnvelope]:
        try:
            job = self._runtime.job(request.job_id)
            async with contextlib.aclosing(job.results()) as messages:  # closed with the call: no reader left
                async for message in messages:
                    yield mpc_serde.envelope_to_proto(job.job_id, message)
        except errors.CpmlError as exc:
            await context.abort(status_of(exc), str(exc))

    async def Leave(self, request: pb.MpcLeaveRequest, context: grpc.aio.ServicerContext) -> pb.MpcLeaveReply:
        try:
            job = await self._runtime.leave(request.job_id)
        except errors.CpmlError as exc:
            await context.abort(status_of(exc), str(exc))
        if job is None:
            return mpc_serde.leave_reply(existed=False)
        return mpc_serde.leave_reply(True, *job.sent_by_kind(), job.compute_seconds)


class GrpcPeer:
    """A PeerLink over its own channel to a peer's Mpc service."""

    def __init__(self, settings: WorkerSettings, address: str) -> None:
        limit = settings.max_message_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        if settings.tls:
            credentials = channel_credentials(settings.tls_client_ca, settings.tls_cert, settings.tls_key)
            self._channel = grpc.aio.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = pb_grpc.MpcStub(self._channel)
        self._tls = settings.tls

    async def send(self, job_id: str, message: Message) -> None:
        """Deliver one message; PeerRefused with the peer's status if it refuses or cannot be reached."""
        try:
            await self._stub.Deliver(mpc_serde.envelope_to_proto(job_id, message), timeout=PEER_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            hint = ""
            if self._tls and exc.code() is grpc.StatusCode.UNAVAILABLE:
                hint = (
                    " (over TLS a worker reaches its peers with its own certificate, so that certificate "
                    "must also allow client authentication and the peers must trust --tls-client-ca)"
                )
            raise PeerRefused(f"{exc.code().name}: {exc.details()}{hint}") from None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

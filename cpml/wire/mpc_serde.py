"""Paired x_to_proto / x_from_proto for the MPC baselines' wire contract (proto/cpml/v1/mpc.proto)."""

from __future__ import annotations

import numpy as np

from cpml.mpc import Kind, Message, PartySpec
from cpml.wire.generated.v1 import mpc_pb2 as pb
from cpml.wire.serde import MAX_WIRE_MODULUS, CorruptData, MalformedMessage, checksum, pack_elements, unpack_elements

_KIND_TO_WIRE = {kind: getattr(pb, f"MPC_KIND_{kind.name}") for kind in Kind}
_KIND_FROM_WIRE = {value: kind for kind, value in _KIND_TO_WIRE.items()}
_MAX_RANK = 3


def tensor_to_proto(values: np.ndarray) -> pb.MpcTensor:
    """A uint32 array of any rank as an MpcTensor."""
    return pb.MpcTensor(shape=list(values.shape), data=pack_elements(values))


def tensor_from_proto(msg: pb.MpcTensor, modulus: int, what: str) -> np.ndarray:
    """The tensor's elements, refusing wrong sizes and values >= modulus."""
    if len(msg.shape) > _MAX_RANK:
        raise MalformedMessage(f"{what} has rank {len(msg.shape)}; MPC payloads have rank at most {_MAX_RANK}")
    return unpack_elements(msg.data, tuple(int(s) for s in msg.shape), modulus, what)


def join_to_proto(job_id: str, spec: PartySpec, peers: list[str]) -> pb.MpcJoinRequest:
    """The master's request that a worker take its part in a job."""
    return pb.MpcJoinRequest(
        job_id=job_id, protocol=spec.protocol, modulus=spec.p, t=spec.t, first=spec.first, position=spec.position,
        rows=spec.rows, cols=spec.d, degree=spec.r,
        coefficients=tensor_to_proto(np.array(spec.coefficients, dtype=np.uint32)),
        start_round=spec.start_round, rounds=spec.rounds, peers=peers)


def join_from_proto(msg: pb.MpcJoinRequest) -> tuple[PartySpec, list[str]]:
    """The party's spec and its group's peer addresses; refuses anything inconsistent."""
    if not msg.job_id:
        raise MalformedMessage("Join request has no job_id; name the job")
    if not 3 <= msg.modulus < MAX_WIRE_MODULUS:
        raise MalformedMessage(f"Join request modulus {msg.modulus} does not fit the uint32 wire format")
    coefficients = tensor_from_proto(msg.coefficients, msg.modulus, "coefficients")
    try:
        spec = PartySpec(
            protocol=msg.protocol, p=int(msg.modulus), t=msg.t, group_size=len(msg.peers), first=msg.first,
            position=msg.position, rows=msg.rows, d=msg.cols, r=msg.degree,
            coefficients=tuple(int(c) for c in coefficients.ravel()), start_round=msg.start_round, rounds=msg.rounds)
    except ValueError as exc:
        raise MalformedMessage(f"Join request is inconsistent: {exc}") from exc
    return spec, list(msg.peers)


def envelope_to_proto(job_id: str, message: Message) -> pb.MpcEnvelope:
    """One protocol message with its checksum."""
    payload = tensor_to_proto(message.payload)
    return pb.MpcEnvelope(job_id=job_id, sender=message.sender, receiver=message.receiver,
                          kind=_KIND_TO_WIRE[message.kind], round=message.round, step=message.step,
                          payload=payload, crc32=checksum(payload.data))


def envelope_from_proto(msg: pb.MpcEnvelope, modulus: int) -> Message:
    """The protocol message, after checking its kind, checksum and elements."""
    kind = _KIND_FROM_WIRE.get(msg.kind)
    if kind is None:
        raise MalformedMessage(f"envelope kind {msg.kind} is not a known MPC message kind")
    if checksum(msg.payload.data) != msg.crc32:
        raise CorruptData(f"{kind.value} payload from {msg.sender} failed its CRC-32 check; resend it")
    payload = tensor_from_proto(msg.payload, modulus, f"{kind.value} payload")
    return Message(msg.sender, msg.receiver, kind, msg.round, msg.step, payload)

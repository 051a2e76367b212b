"""Paired x_to_proto / x_from_proto for the MPC baselines' wire contract (proto/cpml/v1/mpc.proto).

A job computes in several residue fields at once: the Join declares the moduli, and every payload (and
the coefficients) has a leading axis with one slice per modulus, each checked against its own prime.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cpml.field import field_for
from cpml.field.prime_field import MAX_PRIME_BITS
from cpml.mpc import Kind, Message, PartySpec
from cpml.wire.generated.v1 import mpc_pb2 as pb
from cpml.wire.serde import (
    CorruptData,
    MalformedMessage,
    check_moduli,
    checksum,
    pack_elements,
    unpack_elements,
    unpack_residues,
)

_KIND_TO_WIRE = {kind: getattr(pb, f"MPC_KIND_{kind.name}") for kind in Kind}
_KIND_FROM_WIRE = {value: kind for kind, value in _KIND_TO_WIRE.items()}
_MAX_RANK = 3


def tensor_to_proto(values: np.ndarray) -> pb.MpcTensor:
    """A uint32 array of any rank as an MpcTensor."""
    return pb.MpcTensor(shape=list(values.shape), data=pack_elements(values))


def tensor_from_proto(msg: pb.MpcTensor, moduli: tuple[int, ...], what: str) -> np.ndarray:
    """The tensor's elements (residues, ...), refusing wrong sizes, a wrong residue axis and values >= each modulus."""
    if not 1 <= len(msg.shape) <= _MAX_RANK:
        raise MalformedMessage(
            f"{what} has rank {len(msg.shape)}; MPC payloads have rank 1 to {_MAX_RANK} (a leading residue axis first)"
        )
    shape = tuple(int(s) for s in msg.shape)
    if shape[0] != len(moduli):
        unpack_elements(msg.data, shape, max(moduli), what)  # bytes that do not fit the shape are reported first
        raise MalformedMessage(
            f"{what} holds {shape[0]} residue slice(s) but the job computes modulo {len(moduli)} prime(s) "
            f"({', '.join(map(str, moduli))}); the sender does not use the job's residue moduli"
        )
    return unpack_residues(msg.data, shape, moduli, what)


def join_to_proto(job_id: str, spec: PartySpec, peers: list[str]) -> pb.MpcJoinRequest:
    """The master's request that a worker take its part in a job."""
    return pb.MpcJoinRequest(
        job_id=job_id,
        protocol=spec.protocol,
        moduli=list(spec.moduli),
        t=spec.t,
        first=spec.first,
        position=spec.position,
        rows=spec.rows,
        cols=spec.d,
        degree=spec.r,
        coefficients=tensor_to_proto(spec.coefficient_array()),
        start_round=spec.start_round,
        rounds=spec.rounds,
        peers=peers,
    )


def moduli_from_proto(msg: pb.MpcJoinRequest) -> tuple[int, ...]:
    """The Join's residue moduli; refuses the single-modulus format and primes a worker cannot compute over."""
    moduli = check_moduli(msg.modulus, msg.moduli, "Join request")
    for modulus in moduli:
        try:
            field_for(modulus)
        except ValueError as exc:
            raise MalformedMessage(
                f"modulus {modulus} is not supported: {exc} This worker computes over primes below 2^{MAX_PRIME_BITS}"
            ) from None
    return moduli


def join_from_proto(msg: pb.MpcJoinRequest) -> tuple[PartySpec, list[str]]:
    """The party's spec and its group's peer addresses; refuses anything inconsistent."""
    if not msg.job_id:
        raise MalformedMessage("Join request has no job_id; name the job")
    moduli = moduli_from_proto(msg)
    coefficients = tensor_from_proto(msg.coefficients, moduli, "coefficients")
    try:
        spec = PartySpec(
            protocol=msg.protocol,
            moduli=moduli,
            t=msg.t,
            group_size=len(msg.peers),
            first=msg.first,
            position=msg.position,
            rows=msg.rows,
            d=msg.cols,
            r=msg.degree,
            coefficients=tuple(tuple(int(c) for c in row) for row in coefficients.reshape(len(moduli), -1)),
            start_round=msg.start_round,
            rounds=msg.rounds,
        )
    except ValueError as exc:
        raise MalformedMessage(f"Join request is inconsistent: {exc}") from exc
    return spec, list(msg.peers)


def envelope_to_proto(job_id: str, message: Message) -> pb.MpcEnvelope:
    """One protocol message with its checksum."""
    payload = tensor_to_proto(message.payload)
    return pb.MpcEnvelope(
        job_id=job_id,
        sender=message.sender,
        receiver=message.receiver,
        kind=_KIND_TO_WIRE[message.kind],
        round=message.round,
        step=message.step,
        payload=payload,
        crc32=checksum(payload.data),
    )


def envelope_from_proto(msg: pb.MpcEnvelope, moduli: tuple[int, ...]) -> Message:
    """The protocol message, after checking its kind, checksum, residue axis and elements."""
    kind = _KIND_FROM_WIRE.get(msg.kind)
    if kind is None:
        raise MalformedMessage(f"envelope kind {msg.kind} is not a known MPC message kind")
    if checksum(msg.payload.data) != msg.crc32:
        raise CorruptData(f"{kind.value} payload from {msg.sender} failed its CRC-32 check; resend it")
    payload = tensor_from_proto(msg.payload, moduli, f"{kind.value} payload")
    return Message(msg.sender, msg.receiver, kind, msg.round, msg.step, payload)


def join_reply(job_id: str) -> pb.MpcJoinReply:
    """A worker's acceptance of a Join."""
    return pb.MpcJoinReply(job_id=job_id)


def deliver_reply() -> pb.MpcDeliverReply:
    """A worker's receipt for a delivered message."""
    return pb.MpcDeliverReply()


def results_request(job_id: str) -> pb.MpcResultsRequest:
    """The master opening a job's stream of gradient shares."""
    return pb.MpcResultsRequest(job_id=job_id)


def leave_request(job_id: str) -> pb.MpcLeaveRequest:
    """The master ending a job on one worker."""
    return pb.MpcLeaveRequest(job_id=job_id)


def leave_reply(
    existed: bool,
    messages: Mapping[str, int] | None = None,
    sent: Mapping[str, int] | None = None,
    compute_seconds: float = 0.0,
) -> pb.MpcLeaveReply:
    """A worker's account of a job it left: the protocol messages and bytes it sent by kind, its compute time."""
    messages, sent = messages or {}, sent or {}
    return pb.MpcLeaveReply(
        existed=existed,
        messages_sent=sum(messages.values()),
        bytes_sent=sum(sent.values()),
        compute_seconds=compute_seconds,
        messages_by_kind=dict(messages),
        bytes_by_kind=dict(sent),
    )


def leave_from_proto(reply: pb.MpcLeaveReply) -> dict[str, object]:
    """What a worker reported when it left a job, as plain values."""
    return {
        "messages_sent": reply.messages_sent,
        "bytes_sent": reply.bytes_sent,
        "compute_seconds": reply.compute_seconds,
        "messages_by_kind": dict(reply.messages_by_kind),
        "bytes_by_kind": dict(reply.bytes_by_kind),
    }

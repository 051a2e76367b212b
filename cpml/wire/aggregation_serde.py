"""Paired to_proto / from_proto functions for the Aggregation service's messages (WD-DP).

Generated message types stay inside cpml/wire; the servicer, the party client, the session and the party math
only see numpy arrays, plain values and frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from cpml.dp.dpgd import LocalSettings
from cpml.dp.session import InvalidUpdate, RoundTask
from cpml.wire.generated.v1 import aggregation_pb2 as pb

_FLOAT64 = np.dtype("<f8")


def vector_to_proto(values: np.ndarray) -> pb.Vector:
    """Pack a float64 vector little-endian."""
    values = np.ascontiguousarray(values, dtype=_FLOAT64).reshape(-1)
    return pb.Vector(size=values.size, data=values.tobytes())


def vector_from_proto(msg: pb.Vector, what: str) -> np.ndarray:
    """Unpack a Vector, refusing a byte length that does not match its declared size."""
    if len(msg.data) != 8 * msg.size:
        raise InvalidUpdate(
            f"{what} declares {msg.size} float64 values but carries {len(msg.data)} bytes (expected {8 * msg.size})."
        )
    return np.frombuffer(msg.data, dtype=_FLOAT64).astype(np.float64)


@dataclass(frozen=True)
class TaskView:
    """A PartyTask as the party sees it."""

    round: int
    finished: bool
    weights: np.ndarray
    noise_multiplier: float
    run_noise_multiplier: float
    total_records: int
    local: LocalSettings | None
    stop_reason: str
    release_epsilon: float
    party_epsilon: float


def task_to_proto(run_id: str, task: RoundTask, run_z: float, total: int) -> pb.PartyTask:
    """A round's task for one party."""
    assert task.local.learning_rate is not None  # the session resolves the step before it builds any task
    return pb.PartyTask(
        run_id=run_id,
        round=task.round,
        finished=False,
        weights=vector_to_proto(task.weights),
        noise_multiplier=task.noise_multiplier,
        run_noise_multiplier=run_z,
        total_records=total,
        **asdict(task.local),  # learning_rate, clip, l2, local_steps, sampling_rate: fields of the same names
    )


def finished_to_proto(
    run_id: str, round_: int, weights: np.ndarray, reason: str, release_epsilon: float, party_epsilon: float
) -> pb.PartyTask:
    """The end-of-run message: the released model and both guarantees."""
    return pb.PartyTask(
        run_id=run_id,
        round=round_,
        finished=True,
        weights=vector_to_proto(weights),
        stop_reason=reason,
        release_epsilon=release_epsilon,
        party_epsilon=party_epsilon,
    )


def task_from_proto(msg: pb.PartyTask) -> TaskView:
    """Decode a PartyTask."""
    local = None if msg.finished else LocalSettings(**{f.name: getattr(msg, f.name) for f in fields(LocalSettings)})
    return TaskView(
        round=msg.round,
        finished=msg.finished,
        weights=vector_from_proto(msg.weights, "task"),
        noise_multiplier=msg.noise_multiplier,
        run_noise_multiplier=msg.run_noise_multiplier,
        total_records=msg.total_records,
        local=local,
        stop_reason=msg.stop_reason,
        release_epsilon=msg.release_epsilon,
        party_epsilon=msg.party_epsilon,
    )


def join_request(
    run_id: str, name: str, records: int, dimension: int, token: str, feature_schema: str
) -> pb.JoinRequest:
    """A party's Join: who it is, how many records it holds, its model size and the schema it scaled with."""
    return pb.JoinRequest(
        run_id=run_id, name=name, records=records, dimension=dimension, token=token, feature_schema=feature_schema
    )


def join_reply(party_id: str, rounds: int, scheme: str, epsilon: float, delta: float) -> pb.JoinReply:
    """The server's answer to a Join: the party's id and the run's public settings."""
    return pb.JoinReply(party_id=party_id, rounds=rounds, scheme=scheme, epsilon=epsilon, delta=delta)


def task_request(run_id: str, party_id: str, after_round: int) -> pb.TaskRequest:
    """A party asking for the first task after `after_round`."""
    return pb.TaskRequest(run_id=run_id, party_id=party_id, after_round=after_round)


def update_request(run_id: str, party_id: str, round_: int, records: int, weights: np.ndarray) -> pb.UpdateRequest:
    """A party's noisy local model for one round."""
    return pb.UpdateRequest(
        run_id=run_id, party_id=party_id, round=round_, records=records, weights=vector_to_proto(weights)
    )


def update_reply(round_: int, waiting_for: int) -> pb.UpdateReply:
    """The server's receipt for an update: the open round and how many parties it still waits for."""
    return pb.UpdateReply(round=round_, waiting_for=waiting_for)

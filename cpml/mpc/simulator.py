"""A baseline in one process: the parties and the master exchange messages through an in-memory queue."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from cpml.mpc.messages import MASTER, Message, Traffic
from cpml.mpc.party import MpcParty
from cpml.mpc.plan import MpcPlan
from cpml.mpc.session import MpcSession
from cpml.protocol.run import RoundStats, RunInputs
from cpml.protocol.simulator import TrainingResult


@dataclass(frozen=True)
class MpcRun:
    """A finished baseline run: the training outcome, the traffic, and the CPU seconds of each role."""

    training: TrainingResult
    traffic: Traffic
    master_seconds: dict[str, float]  # by phase: setup (sharing the data), online (weights, decoding)
    worker_seconds: dict[int, float]  # CPU seconds each worker spent handling messages


def simulate_mpc(
    mpc: MpcPlan, inputs: RunInputs, *, delivery_seed: int | None = None, rows_per_chunk: int = 4096
) -> MpcRun:
    """Run a baseline in-process; with a delivery seed, pending messages are delivered in random order."""
    session = MpcSession.create(mpc, inputs)
    parties = {w: MpcParty(session.party_spec(w), inputs.mask_source) for w in range(mpc.active_workers)}
    order = np.random.default_rng(delivery_seed) if delivery_seed is not None else None
    traffic = Traffic()
    master_seconds: dict[str, float] = defaultdict(float)
    worker_seconds: dict[int, float] = defaultdict(float)
    pending: list[Message] = []

    def post(messages: list[Message]) -> None:
        for message in messages:
            traffic.record(message)
        pending.extend(messages)

    def deliver_all() -> list[RoundStats]:
        finished: list[RoundStats] = []
        while pending:
            index = int(order.integers(len(pending))) if order is not None else 0
            message = pending.pop(index)
            started = time.process_time()
            if message.receiver == MASTER:
                outcome = session.receive(message)
                master_seconds["online"] += time.process_time() - started
                if outcome is not None:
                    finished.append(outcome)
            else:
                post(parties[message.receiver].handle(message))
                worker_seconds[message.receiver] += time.process_time() - started
        return finished

    for worker, party in parties.items():
        started = time.process_time()
        post(party.start())
        worker_seconds[worker] += time.process_time() - started
    started = time.process_time()
    post(list(session.data_messages(rows_per_chunk)))
    master_seconds["setup"] += time.process_time() - started
    deliver_all()
    trajectory = [session.weights.copy()]
    history = []
    while not session.done:
        started = time.process_time()
        post(session.weight_messages())
        master_seconds["online"] += time.process_time() - started
        finished = deliver_all()
        if len(finished) != 1:
            raise RuntimeError(f"round {session.round} did not finish exactly once ({len(finished)} completions)")
        history.append(finished[0])
        trajectory.append(session.weights.copy())
    training = TrainingResult(session.plan, session.weights.copy(), np.array(trajectory), tuple(history))
    return MpcRun(training, traffic, dict(master_seconds), dict(worker_seconds))

"""Run a whole WD-DP job in one process: the server session plus in-process parties.

The same `AggregationSession` and `dp_gradient_steps` the gRPC service and `cpml-party` use;
this is the reference the benchmark and tests run, and centralized DP-GD is the one-party case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cpml.dp.dpgd import Scheme, dp_gradient_steps, model_size
from cpml.dp.noise import NoiseSource
from cpml.dp.session import AggregationSession, Guarantees, RoundResult, RunSettings


@dataclass(frozen=True)
class SimulationResult:
    """Final model, per-round history and guarantees of one simulated run."""

    weights: np.ndarray
    noise_multiplier: float
    learning_rate: float
    momentum: float
    history: tuple[RoundResult, ...]
    guarantees: Guarantees
    stop_reason: str


def simulate(
    settings: RunSettings,
    shards: Sequence[tuple[np.ndarray, np.ndarray]],
    source: NoiseSource,
    drop_at: Mapping[int, int] | None = None,
    on_round: Callable[[RoundResult, np.ndarray], None] | None = None,
) -> SimulationResult:
    """Train with one in-process party per shard; party i goes silent from round drop_at[i]."""
    drop_at = drop_at or {}
    session = AggregationSession(settings, dimension=model_size(*shards[0]))
    parties = [session.register(f"party-{i}", len(y), model_size(x, y)) for i, (x, y) in enumerate(shards)]
    session.start()
    while session.open_round():
        for i, party in enumerate(parties):
            if session.round >= drop_at.get(i, settings.rounds + 1):
                continue
            task = session.task_for(party.party_id)
            x, y = shards[i]
            w = dp_gradient_steps(task.weights, x, y, task.noise_multiplier, task.local, source)
            session.submit(party.party_id, task.round, len(y), w)
        result = session.close_round()
        if on_round is not None:
            on_round(result, session.weights)
    return SimulationResult(
        weights=session.weights,
        noise_multiplier=session.noise_multiplier,
        learning_rate=session.step,
        momentum=session.momentum,
        history=tuple(session.history),
        guarantees=session.guarantees(),
        stop_reason=session.stop_reason,
    )


def simulate_centralized(
    settings: RunSettings,
    x: np.ndarray,
    y: np.ndarray,
    source: NoiseSource,
    on_round: Callable[[RoundResult, np.ndarray], None] | None = None,
) -> SimulationResult:
    """Centralized DP-GD on pooled data: the one-party run with the same budget."""
    single = replace(settings, parties=1, scheme=Scheme.WEIGHTED)
    return simulate(single, [(x, y)], source, on_round=on_round)

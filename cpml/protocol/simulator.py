"""Algorithm 1 in one process with N virtual workers: the reference every transport must match."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cpml.protocol.plan import Plan
from cpml.protocol.run import RunInputs
from cpml.protocol.trainer import CodedTrainer, RoundStats
from cpml.protocol.worker_function import prepare_share, worker_step


@dataclass(frozen=True)
class TrainingResult:
    """The outcome of a training run."""

    plan: Plan
    weights: npt.NDArray[np.float64]
    trajectory: npt.NDArray[np.float64]  # (iterations + 1) x d, starting from the initial weights
    history: tuple[RoundStats, ...]  # one entry per finished round


def simulate(inputs: RunInputs, *, arrival_seed: int | None = None) -> TrainingResult:
    """Run CodedPrivateML in-process; each round a random R of the N workers 'arrive first'."""
    trainer = CodedTrainer.create(inputs)
    plan, seed = trainer.plan, inputs.seed
    shares = [prepare_share(trainer.basis, share) for share in trainer.encode_dataset()]
    coefficients = trainer.job_spec.coefficient_array()
    order = np.random.default_rng(arrival_seed if arrival_seed is not None else seed + 1)
    trajectory = [trainer.weights.copy()]
    history = []
    while not trainer.done:
        values = trainer.weight_shares()
        first = order.permutation(plan.n_workers)[: trainer.replies_needed]
        replies = {int(i): worker_step(trainer.basis, shares[i], values[i], coefficients, 0) for i in first}
        if trainer.plan.exact_sigmoid:  # the second exchange: X̃ᵀẼ from the encoded sigmoid values
            values, _ = trainer.sigmoid_shares(trainer.round, replies)
            first = order.permutation(plan.n_workers)[: trainer.replies_needed]
            replies = {int(i): worker_step(trainer.basis, shares[i], values[i], coefficients, 1) for i in first}
        history.append(trainer.finish_round(trainer.round, replies))
        trajectory.append(trainer.weights.copy())
    return TrainingResult(trainer.plan, trainer.weights.copy(), np.array(trajectory), tuple(history))

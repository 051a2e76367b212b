"""A WD-DP party's client loop: join, then per round fetch the model, take noisy local steps
on its own data and hand the model back, keeping its own account of what it revealed.

The party does not take the server's word for its noise: under WD-DP it checks that the
multiplier it is told to use is at least z * sqrt(n_k / n), and with `max_epsilon` it leaves
the run (goes silent, like any dropout) before a round would push what its own updates reveal
to the server past that budget.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import grpc
import numpy as np
import structlog

import cpml.errors as errors
from cpml.dp.accountant import Accounting, Budget, BudgetExceeded, PrivacyLedger, Step
from cpml.dp.dpgd import dp_gradient_steps, model_size
from cpml.dp.noise import NoiseSource, SecureGaussian
from cpml.wire import aggregation_serde as serde
from cpml.wire.generated.v1 import aggregation_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)


class NoiseTooLow(errors.CpmlError, RuntimeError):
    """The server asked for less noise than the protocol requires; the party refuses."""

    exit_code = errors.ExitCode.REFUSED


@dataclass(frozen=True)
class PartyConfig:
    """How one party connects and what it will tolerate."""

    server: str
    run_id: str
    name: str
    max_epsilon: float | None = None
    wait_timeout: float = 600.0
    call_timeout: float = 30.0
    token: str = field(default="", repr=False)  # the secret join token (none with a client certificate)
    feature_schema: str = ""  # digest of the public feature bounds the data was scaled with


@dataclass(frozen=True)
class PartyOutcome:
    """How a party's run ended."""

    rounds: int
    finished: bool
    reason: str
    weights: np.ndarray | None
    release_epsilon: float
    party_epsilon: float


async def run_party(
    config: PartyConfig,
    x: np.ndarray,
    y: np.ndarray,
    credentials: grpc.ChannelCredentials | None = None,
    source: NoiseSource | None = None,
) -> PartyOutcome:
    """Take part in one run with data (x with bias column, y in {0,1}); return how it ended."""
    noise: NoiseSource = source or SecureGaussian()
    log_ = log.bind(party=config.name, run=config.run_id)
    if credentials is None:
        channel = grpc.aio.insecure_channel(config.server)
    else:
        channel = grpc.aio.secure_channel(config.server, credentials)
    async with channel:
        stub = pb_grpc.AggregationStub(channel)
        joined = await stub.Join(
            serde.join_request(
                config.run_id, config.name, len(y), model_size(x, y), config.token, config.feature_schema
            ),
            timeout=config.call_timeout,
        )
        log_.info("joined", rounds=joined.rounds, scheme=joined.scheme, epsilon=joined.epsilon, delta=joined.delta)
        ledger: PrivacyLedger | None = None
        rounds = 0
        after = 0
        while True:
            msg = await stub.NextTask(
                serde.task_request(config.run_id, joined.party_id, after), timeout=config.wait_timeout
            )
            task = serde.task_from_proto(msg)
            if task.finished:
                log_.info(
                    "run_finished",
                    reason=task.stop_reason,
                    rounds=rounds,
                    release_epsilon=task.release_epsilon,
                    party_epsilon=task.party_epsilon,
                )
                return PartyOutcome(
                    rounds, True, task.stop_reason, task.weights, task.release_epsilon, task.party_epsilon
                )
            assert task.local is not None
            if joined.scheme == "weighted":
                check_noise(task, len(y))
            step = Step(task.noise_multiplier, task.local.sampling_rate)
            if ledger is None:
                budget = Budget(config.max_epsilon or joined.epsilon, joined.delta)
                ledger = PrivacyLedger(
                    budget, Accounting.for_sampling(step.sampling_rate), enforce=config.max_epsilon is not None
                )
            try:
                ledger.check(step, task.local.local_steps)
            except BudgetExceeded as exc:
                spent = ledger.epsilon()
                log_.warning("leaving_run", round=task.round, reason=str(exc), party_epsilon=spent)
                return PartyOutcome(rounds, False, f"own budget: {exc}", None, math.nan, spent)
            weights = await asyncio.to_thread(
                dp_gradient_steps, task.weights, x, y, task.noise_multiplier, task.local, noise
            )
            ledger.charge(step, task.local.local_steps)
            await stub.SubmitUpdate(
                serde.update_request(config.run_id, joined.party_id, task.round, len(y), weights),
                timeout=config.call_timeout,
            )
            rounds += 1
            after = task.round
            log_.debug("round_submitted", round=task.round)


def check_noise(task: serde.TaskView, records: int) -> None:
    """Raise NoiseTooLow unless z_k >= z * sqrt(n_k / n), the WD-DP noise for this party."""
    required = task.run_noise_multiplier * math.sqrt(records / max(task.total_records, 1))
    if not task.noise_multiplier >= required * (1 - 1e-9) or task.noise_multiplier <= 0:
        raise NoiseTooLow(
            f"The server asks for noise multiplier {task.noise_multiplier:.6g}, below the"
            f" {required:.6g} WD-DP requires for {records} of {task.total_records} records"
            f" at run multiplier {task.run_noise_multiplier:.6g}; refusing to send updates."
        )

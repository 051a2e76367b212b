"""CodedPrivateML protocol math, free of I/O: plan, quantization, coding, worker function, run, trainer, simulator."""

from cpml.protocol.coding import CodingScheme
from cpml.protocol.overflow import (
    DataProfile,
    auto_precision,
    check_plan,
    decoded_bound,
    public_profile,
)
from cpml.protocol.plan import Plan, largest_k, recovery_threshold
from cpml.protocol.run import RoundStats, RunInputs, TrainingRun, plan_from_checkpoint
from cpml.protocol.simulator import TrainingResult, simulate
from cpml.protocol.trainer import CodedTrainer, JobSpec, ShareChunk
from cpml.protocol.worker_function import prepare_share, worker_compute, worker_step

__all__ = [
    "CodedTrainer",
    "CodingScheme",
    "DataProfile",
    "JobSpec",
    "Plan",
    "RoundStats",
    "RunInputs",
    "ShareChunk",
    "TrainingResult",
    "TrainingRun",
    "auto_precision",
    "check_plan",
    "decoded_bound",
    "largest_k",
    "plan_from_checkpoint",
    "prepare_share",
    "public_profile",
    "recovery_threshold",
    "simulate",
    "worker_compute",
    "worker_step",
]

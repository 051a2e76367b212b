"""CodedPrivateML protocol math, free of I/O: plan, quantization, coding, worker function, trainer, simulator."""

from cpml.protocol.coding import CodingScheme
from cpml.protocol.overflow import DataProfile, auto_quantization, check_plan, decoded_bound
from cpml.protocol.plan import Plan, largest_k, recovery_threshold
from cpml.protocol.simulator import TrainingResult, simulate
from cpml.protocol.trainer import CodedTrainer, JobSpec, RoundStats, ShareChunk, plan_from_checkpoint
from cpml.protocol.worker_function import prepare_share, worker_compute

__all__ = [
    "CodedTrainer",
    "CodingScheme",
    "DataProfile",
    "JobSpec",
    "Plan",
    "RoundStats",
    "ShareChunk",
    "TrainingResult",
    "auto_quantization",
    "check_plan",
    "decoded_bound",
    "largest_k",
    "plan_from_checkpoint",
    "prepare_share",
    "recovery_threshold",
    "simulate",
    "worker_compute",
]

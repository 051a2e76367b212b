"""The master's side of CodedPrivateML as a sans-I/O session: shares out, replies in, weights updated.

The transport (in-process simulator or gRPC master) calls, in order:
    trainer.share_chunks(rows)          once: the encoded dataset, chunk by chunk, for all N workers
    trainer.weight_shares()             each round: the encoded quantized weights, one slice per worker
    trainer.finish_round(round, replies) each round: decode from the first R replies, update w
Everything random that protects privacy (the masks) comes from the OS CSPRNG; the stochastic rounding
of the weights is seeded by (seed, round), so the weights are the same in every transport.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field as dataclass_field, fields as dataclass_fields
from typing import Any

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.field import Elements, PrimeField
from cpml.field.sampling import uniform
from cpml.protocol import models
from cpml.protocol.coding import CodingScheme, MaskSource
from cpml.protocol.overflow import DataProfile, check_plan, decoded_bound
from cpml.protocol.plan import Plan
from cpml.protocol.quantize import dequantize, quantize_data, quantize_weights
from cpml.protocol.sigmoid import model_coefficients, scaled_coefficients

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs and may know about a job: no data, no weights, no masks."""

    p: int
    r: int
    rows: int
    d: int
    coefficients: tuple[int, ...]  # field elements, lowest degree first

    def coefficient_array(self) -> Elements:
        """The coefficients as a uint32 array."""
        return np.array(self.coefficients, dtype=np.uint32)


@dataclass(frozen=True)
class ShareChunk:
    """Rows [row_offset, row_offset + rows) of every worker's share: shape (N, rows, d)."""

    row_offset: int
    shares: Elements


@dataclass(frozen=True)
class RoundStats:
    """What one finished round produced."""

    round: int
    loss: float
    train_accuracy: float | None
    test_accuracy: float | None
    workers_used: tuple[int, ...]
    weight_norm: float
    test_r2: float | None = None  # linear regression with a test set only, as test_rmse
    test_rmse: float | None = None  # in the units of the y the trainer holds (standardised targets: times their std)


@dataclass
class CodedTrainer:
    """One CodedPrivateML training job on the master (use `create`)."""

    plan: Plan
    seed: int
    x: Array
    y: Array
    x_test: Array | None
    y_test: Array | None
    weights: Array
    round: int
    scheme: CodingScheme
    profile: DataProfile
    partitions: npt.NDArray[np.int32]  # (K, rows, d) quantized, zero-padded
    xty: Array
    coefficients: npt.NDArray[np.int64]
    mask_source: MaskSource = uniform
    _issued: int | None = dataclass_field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        plan: Plan,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        seed: int,
        x_test: npt.ArrayLike | None = None,
        y_test: npt.ArrayLike | None = None,
        *,
        weights: npt.ArrayLike | None = None,
        start_round: int = 0,
        mask_source: MaskSource = uniform,
    ) -> CodedTrainer:
        """Quantize and partition the data, resolve the learning rate, and check the overflow guard."""
        data = prepare_data(plan, x, y, seed, x_test, y_test, plan.k, weights, start_round)
        scheme = CodingScheme(data.plan.field, data.plan.n_workers, data.plan.k, data.plan.t)
        return cls(seed=int(seed), round=start_round, scheme=scheme, mask_source=mask_source, **data.by_name())

    @property
    def field(self) -> PrimeField:
        """The job's field."""
        return self.scheme.field

    @property
    def done(self) -> bool:
        """Whether all planned iterations have run."""
        return self.round >= self.plan.iterations

    @property
    def job_spec(self) -> JobSpec:
        """The public parameters every worker receives."""
        return JobSpec(
            p=self.plan.p,
            r=self.plan.r,
            rows=self.profile.rows,
            d=self.profile.d,
            coefficients=tuple(int(v) for v in self.field.phi(self.coefficients, name="coefficients")),
        )

    def share_chunks(self, rows_per_chunk: int) -> Iterator[ShareChunk]:
        """Encode the dataset chunk by chunk with fresh masks; never all N full shares at once."""
        if rows_per_chunk < 1:
            raise argument_error("rows_per_chunk", "be positive", rows_per_chunk)
        k, rows, d = self.partitions.shape
        for lo in range(0, rows, rows_per_chunk):
            hi = min(lo + rows_per_chunk, rows)
            secrets = self.partitions[:, lo:hi, :].reshape(k, -1).astype(np.int32, copy=False)
            shares = self.scheme.encode(secrets, self.mask_source)
            yield ShareChunk(lo, shares.reshape(self.plan.n_workers, hi - lo, d))

    def encode_dataset(self) -> Elements:
        """All N shares at once, shape (N, rows, d) — for tests and the in-process simulator."""
        return np.concatenate([c.shares for c in self.share_chunks(self.profile.rows)], axis=1)

    def quantized_weights(self) -> npt.NDArray[np.int64]:
        """The r stochastic quantizations of the current weights, seeded by (seed, round)."""
        return round_weights(self.plan, self.weights, self.seed, self.round)

    def weight_shares(self) -> Elements:
        """Encode this round's quantized weights: shape (N, d, r); checks the overflow guard first."""
        if self.done:
            raise RuntimeError(f"training already finished {self.plan.iterations} iterations")
        wbar = self.quantized_weights()
        guard_round(self.plan, self.profile, self.coefficients, wbar, self.round)
        d, r = wbar.shape
        secrets = np.broadcast_to(wbar.reshape(1, d * r).astype(np.int32), (self.plan.k, d * r))
        shares = self.scheme.encode(np.ascontiguousarray(secrets), self.mask_source)
        self._issued = self.round
        return shares.reshape(self.plan.n_workers, d, r)

    def decode_gradient(self, replies: Mapping[int, npt.NDArray[np.uint32]]) -> Array:
        """The real gradient (1/m)(X̄ᵀs̄ 2^-l - X̄ᵀy 2^-lx) from the first R replies."""
        blocks = self.scheme.decode(replies, self.plan.threshold)
        return gradient_from_blocks(self.plan, blocks, self.xty, self.x.shape[0])

    def finish_round(self, round_index: int, replies: Mapping[int, npt.NDArray[np.uint32]]) -> RoundStats:
        """Decode the round's gradient from the first R replies (in arrival order) and update the weights."""
        if self._issued != self.round or round_index != self.round:
            raise argument_error("round_index", f"be the round whose weights were sent ({self._issued})", round_index)
        used = tuple(list(replies)[: self.plan.threshold])
        grad = self.decode_gradient(replies)
        assert self.plan.learning_rate is not None
        self.weights = models.project_to_ball(self.weights - self.plan.learning_rate * grad, self.plan.weight_bound)
        self.round += 1
        self._issued = None
        return self.stats(used)

    def stats(self, used: tuple[int, ...] = ()) -> RoundStats:
        """Loss and accuracy of the current weights on the real data."""
        test = (self.x_test, self.y_test)
        return round_stats(self.plan.model, self.round, self.weights, (self.x, self.y), test, used)

    def checkpoint(self) -> dict[str, object]:
        """The state a resumed run needs besides the data: round, weights, seed and plan."""
        return {
            "round": self.round,
            "weights": self.weights.tolist(),
            "seed": self.seed,
            "plan": {k: getattr(self.plan, k) for k in self.plan.__dataclass_fields__},
        }


def plan_from_checkpoint(state: Mapping[str, object]) -> Plan:
    """Rebuild the Plan stored by CodedTrainer.checkpoint."""
    fields = state.get("plan")
    if not isinstance(fields, Mapping):
        raise argument_error("state", "hold a 'plan' mapping", type(fields).__name__)
    return Plan(**fields)  # type: ignore[arg-type]


# --- shared with the MPC baselines (cpml.mpc), which partition the rows into groups instead of K ---
@dataclass(frozen=True)
class PreparedData:
    """Checked, quantized and partitioned training data with the starting weights: where every trainer begins."""

    plan: Plan  # with the learning rate resolved
    x: Array
    y: Array
    x_test: Array | None
    y_test: Array | None
    profile: DataProfile
    partitions: npt.NDArray[np.int32]  # (parts, rows, d) quantized, zero-padded
    xty: Array  # X̄ᵀy, which the master keeps
    coefficients: npt.NDArray[np.int64]  # the sigmoid fit, scaled to the quantization
    weights: Array  # the starting weights, projected onto the weight ball

    def by_name(self) -> dict[str, Any]:
        """Every field by name, arrays shared rather than copied: the keyword arguments of a trainer."""
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}


def prepare_data(
    plan: Plan,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    seed: int,
    x_test: npt.ArrayLike | None,
    y_test: npt.ArrayLike | None,
    parts: int,
    weights: npt.ArrayLike | None,
    start_round: int,
) -> PreparedData:
    """Check the inputs and the overflow guard, then quantize the rows into `parts` zero-padded blocks."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise argument_error("seed", "be a non-negative integer", seed)
    xa, ya = models.check_dataset(x, y, plan.model)
    xt = yt = None
    if x_test is not None and y_test is not None:
        xt, yt = models.check_dataset(x_test, y_test, plan.model, name="x_test")
        if xt.shape[1] != xa.shape[1]:
            raise argument_error("x_test", f"have {xa.shape[1]} columns", xt.shape[1])
    if plan.learning_rate is None:
        plan = plan.with_(learning_rate=models.lipschitz_learning_rate(xa, plan.model))
    d = xa.shape[1]
    profile = DataProfile.of(xa, parts)
    check_plan(plan, profile)  # the bound depends on the row blocks, not on how they are shared
    quantized = quantize_data(xa, plan.lx)
    plan.field.phi(quantized, name="x")  # refuses data that would wrap on its own
    w0 = np.zeros(d) if weights is None else np.asarray(weights, dtype=np.float64)
    if w0.shape != (d,) or not np.all(np.isfinite(w0)):
        raise argument_error("weights", f"be a finite vector of length {d}", w0.shape)
    if not 0 <= start_round <= plan.iterations:
        raise argument_error("start_round", f"be between 0 and {plan.iterations}", start_round)
    return PreparedData(
        plan=plan,
        x=xa,
        y=ya,
        x_test=xt,
        y_test=yt,
        profile=profile,
        partitions=partition_rows(quantized, parts, profile.rows),
        xty=quantized.astype(np.float64).T @ ya,
        coefficients=scaled_coefficients(
            model_coefficients(plan.model, plan.r, plan.sigmoid_interval), plan.lx, plan.lw, plan.lc
        ),
        weights=models.project_to_ball(w0, plan.weight_bound),
    )


def partition_rows(quantized: npt.NDArray[np.int64], parts: int, rows: int) -> npt.NDArray[np.int32]:
    """Split quantized rows into `parts` consecutive blocks of `rows` rows, zero-padding the last ones."""
    m, d = quantized.shape
    out = np.zeros((parts, rows, d), dtype=np.int32)
    for i in range(parts):
        lo, hi = i * rows, min((i + 1) * rows, m)
        if hi > lo:
            out[i, : hi - lo] = quantized[lo:hi]
    return out


def round_weights(plan: Plan, weights: Array, seed: int, round_index: int) -> npt.NDArray[np.int64]:
    """The r stochastic quantizations of the weights for one round, seeded by (seed, round)."""
    rng = np.random.default_rng([seed, round_index])
    return quantize_weights(weights, plan.lw, plan.r, rng)


def guard_round(
    plan: Plan,
    profile: DataProfile,
    coefficients: npt.NDArray[np.int64],
    wbar: npt.NDArray[np.int64],
    round_index: int,
) -> None:
    """Refuse a round whose quantized weights could make a decoded value wrap around p."""
    norms = [float(np.linalg.norm(wbar[:, j])) for j in range(plan.r)]
    bound = decoded_bound(profile, coefficients, plan.lx, norms)
    if bound > plan.field.max_signed:  # cannot happen inside the weight ball; never decode garbage
        raise OverflowError(
            f"round {round_index}: decoded values could reach {bound:.3g} > (p-3)/2; refusing to send"
        )
    plan.field.phi(wbar, name="weights")


def gradient_from_blocks(plan: Plan, blocks: Elements, xty: Array, m: int) -> Array:
    """The real gradient (1/m)(X̄ᵀs̄ 2^-l - X̄ᵀy 2^-lx) from the decoded per-partition blocks X̄_kᵀs̄."""
    total = plan.field.phi_inv(blocks).sum(axis=0)  # per-partition phi^-1, then an integer sum
    return (dequantize(total, plan.gradient_scale) - np.ldexp(xty, -plan.lx)) / m


def round_stats(
    model: str,
    round_index: int,
    weights: Array,
    train: tuple[Array, Array],
    test: tuple[Array | None, Array | None],
    used: tuple[int, ...] = (),
) -> RoundStats:
    """Loss and accuracy of the weights on the real training data (test accuracy, or R² and RMSE, on a test set)."""
    x, y = train
    x_test, y_test = test
    test_accuracy = test_r2 = test_rmse = None
    if x_test is not None and y_test is not None:
        test_accuracy = models.accuracy(x_test, y_test, weights, model)
        test_r2 = models.r_squared(x_test, y_test, weights, model)
        test_rmse = models.rmse(x_test, y_test, weights, model)
    return RoundStats(
        round=round_index,
        loss=models.loss(x, y, weights, model),
        train_accuracy=models.accuracy(x, y, weights, model),
        test_accuracy=test_accuracy,
        workers_used=used,
        weight_norm=float(np.linalg.norm(weights)),
        test_r2=test_r2,
        test_rmse=test_rmse,
    )

"""One gradient-descent training run on the master, whatever the protocol that computes its gradients.

A run holds the plan, the real and the quantized data, the weights and the round; each round it picks the
query point (Nesterov's look-ahead: the master holds w, so the momentum costs no privacy), quantizes it,
checks the overflow guard, and takes the step once a protocol has decoded the gradient there.
CodedPrivateML (`cpml.protocol.trainer.CodedTrainer`) and the MPC baselines (`cpml.mpc.MpcSession`)
are the two protocols: they differ only in how the data and weights are shared and the gradient rebuilt.
With C > 2 classes (y an m x C one-hot matrix) the weights are a d x C matrix, one one-vs-rest model per
column, and every step below acts on all C columns at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np
import numpy.typing as npt

import cpml.protocol.models as models
from cpml.errors import argument_error
from cpml.field import Elements, PrimeField, ResidueBasis
from cpml.field.rns import to_float
from cpml.field.sampling import uniform
from cpml.protocol.coding import MaskSource
from cpml.protocol.overflow import DataProfile, check_plan, decoded_bound, products_bound, sigmoid_gradient_bound
from cpml.protocol.plan import Plan
from cpml.protocol.quantize import ROWS_AT_ONCE, quantize_data, quantize_weights
from cpml.protocol.sigmoid import model_coefficients, polynomial_slope, scaled_coefficients

Array = npt.NDArray[np.float64]
MAX_QUANTIZED = 2**31 - 1  # quantized data is kept as int32 (parts x rows x d), half the bytes of int64


@dataclass(frozen=True)
class RoundStats:
    """What one finished round produced."""

    round: int
    loss: float | None  # None, as the accuracies: a round the metrics skipped (eval_every)
    train_accuracy: float | None
    test_accuracy: float | None
    workers_used: tuple[int, ...]
    test_r2: float | None = None  # linear regression with a test set only, as test_rmse
    test_rmse: float | None = None  # in the units of the y the trainer holds (standardised targets: times their std)
    wrong_workers: tuple[int, ...] = ()  # whose results were wrong and corrected (--byzantine)


@dataclass(kw_only=True)
class TrainingRun:
    """The state every protocol's master shares: plan, data, weights, round; one update rule."""

    plan: Plan  # with the learning rate resolved
    seed: int
    x: Array
    y: Array
    x_test: Array | None
    y_test: Array | None
    weights: Array
    previous: Array  # the weights one round earlier, for the momentum of the update
    round: int
    profile: DataProfile  # norms of all m rows: what the overflow guard bounds
    partitions: npt.NDArray[np.int32]  # (parts, rows, d) quantized, zero-padded
    xty: Array  # X̄ᵀy, which the master keeps
    coefficients: npt.NDArray[np.object_]  # the sigmoid fit, scaled to the quantization (Python ints)
    mask_source: MaskSource = uniform
    eval_every: int = 1  # compute the loss and accuracies every this many rounds, and after the last
    _issued: int | None = dataclass_field(default=None, repr=False)
    _query: Array | None = dataclass_field(default=None, repr=False)

    @property
    def basis(self) -> ResidueBasis:
        """The residue number system every shared and decoded value lives in."""
        return self.plan.basis

    @property
    def done(self) -> bool:
        """Whether all planned iterations have run."""
        return self.round >= self.plan.iterations

    def query_point(self) -> Array:
        """Where this round's gradient is taken: the momentum look-ahead of the current weights."""
        return models.lookahead(self.weights, self.previous, self.round, self.plan.weight_bound)

    def quantized_weights(self) -> npt.NDArray[np.int64]:
        """The r stochastic quantizations of this round's query point, seeded by (seed, round)."""
        return round_weights(self.plan, self.query_point(), self.seed, self.round)

    def begin_round(self) -> npt.NDArray[np.int64]:
        """Quantize this round's query point and check the overflow guard: the d x r integers to share."""
        if self.done:
            raise RuntimeError(f"training already finished {self.plan.iterations} iterations")
        query = self.query_point()
        wbar = round_weights(self.plan, query, self.seed, self.round)
        guard_round(self.plan, self.profile, self.coefficients, wbar, self.round)
        self._issued, self._query = self.round, query
        return wbar

    def check_round(self, round_index: int) -> None:
        """Refuse to finish any round but the one whose weights were sent."""
        if self._issued != self.round or round_index != self.round or self._query is None:
            raise argument_error("round_index", f"be the round whose weights were sent ({self._issued})", round_index)

    def finish(
        self, gradient: Array, used: tuple[int, ...], wrong: tuple[int, ...] = (), evaluate: bool = True
    ) -> RoundStats:
        """Step from the query point along the decoded gradient, project onto the weight ball, report."""
        # evaluate=False leaves a due round's metrics to the caller (`metrics_due`, then `stats`), which may compute
        # them while the next round is out with the workers
        self.check_round(self.round)
        assert self.plan.learning_rate is not None and self._query is not None
        step = models.project_to_ball(self._query - self.plan.learning_rate * gradient, self.plan.weight_bound)
        self.previous, self.weights = self.weights, step
        self.round += 1
        self._issued = self._query = None
        if not (evaluate and self.metrics_due):  # the metrics cost passes over all the data
            return RoundStats(self.round, None, None, None, used, wrong_workers=wrong)
        return replace(self.stats(used), wrong_workers=wrong)

    @property
    def metrics_due(self) -> bool:
        """Whether the round just finished reports its loss and accuracies (every eval_every rounds, and the last)."""
        return not self.round % self.eval_every or self.done

    @property
    def evaluation_elements(self) -> int:
        """How many data values a round's metrics read (the training and test features)."""
        return self.x.size + (self.x_test.size if self.x_test is not None else 0)

    def stats(self, used: tuple[int, ...] = ()) -> RoundStats:
        """Loss and accuracy of the current weights on the real data."""
        test = (self.x_test, self.y_test)
        return round_stats(self.plan.model, self.round, self.weights, (self.x, self.y), test, used)

    def checkpoint(self) -> dict[str, object]:
        """The state a resumed run needs besides the data: round, weights (and the previous ones), seed and plan."""
        return {
            "round": self.round,
            "weights": self.weights.tolist(),
            "previous": self.previous.tolist(),
            "seed": self.seed,
            "plan": {k: getattr(self.plan, k) for k in self.plan.__dataclass_fields__},
        }


def plan_from_checkpoint(state: Mapping[str, object]) -> Plan:
    """Rebuild the Plan stored by CodedTrainer.checkpoint."""
    fields = state.get("plan")
    if not isinstance(fields, Mapping):
        raise argument_error("state", "hold a 'plan' mapping", type(fields).__name__)
    return Plan(**fields)


@dataclass(frozen=True)
class RunInputs:
    """What a training run starts from, whatever the protocol: plan, rows, seed, where to resume, the masks."""

    plan: Plan
    x: npt.ArrayLike
    y: npt.ArrayLike  # 0/1 labels, an m x C one-hot matrix, or real targets (linear regression)
    seed: int  # seeds the weight rounding (masks always come from mask_source)
    x_test: npt.ArrayLike | None = None
    y_test: npt.ArrayLike | None = None
    weights: npt.ArrayLike | None = None  # a resumed run's weights (None: zeros)
    previous: npt.ArrayLike | None = None  # and the weights a round earlier, for the momentum
    start_round: int = 0
    mask_source: MaskSource = uniform  # tests swap in zero masks to show a leak check fires; never a flag


@dataclass(frozen=True)
class PreparedData:
    """Checked, quantized and partitioned training data with the starting weights: where every trainer begins."""

    plan: Plan  # with the learning rate resolved
    x: Array
    y: Array
    x_test: Array | None
    y_test: Array | None
    profile: DataProfile  # norms of all m rows: what the overflow guard bounds
    partitions: npt.NDArray[np.int32]  # (parts, rows, d) quantized, zero-padded
    xty: Array  # X̄ᵀy, which the master keeps
    coefficients: npt.NDArray[np.object_]  # the sigmoid fit, scaled to the quantization (Python ints)
    weights: Array  # the starting weights, projected onto the weight ball
    previous: Array  # the weights one round before (the starting weights again on a fresh run)

    def by_name(self) -> dict[str, Any]:
        """Every field by name, arrays shared rather than copied: the keyword arguments of a trainer."""
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}


def prepare_data(inputs: RunInputs, parts: int) -> PreparedData:
    """Check the inputs and the overflow guard, then quantize the rows into `parts` zero-padded blocks."""
    plan, seed, weights, previous = inputs.plan, inputs.seed, inputs.weights, inputs.previous
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise argument_error("seed", "be a non-negative integer", seed)
    xa, ya = models.check_dataset(inputs.x, inputs.y, plan.model)
    xt = yt = None
    if inputs.x_test is not None and inputs.y_test is not None:
        xt, yt = models.check_dataset(inputs.x_test, inputs.y_test, plan.model, name="x_test")
        if xt.shape[1] != xa.shape[1]:
            raise argument_error("x_test", f"have {xa.shape[1]} columns", xt.shape[1])
    polynomial = model_coefficients(plan.model, plan.r, plan.sigmoid_interval)
    if plan.learning_rate is None:
        slope = polynomial_slope(polynomial, plan.sigmoid_interval)
        plan = plan.with_(learning_rate=models.lipschitz_learning_rate(xa, slope))
    d = xa.shape[1]
    shape = (d, *ya.shape[1:])  # d, or d x C for C classes
    # The master lifts the sum of the partitions, so one block of all m rows is what the guard bounds.
    profile = DataProfile.of(xa, 1)
    check_plan(plan, profile)
    partitions = quantize_partitions(xa, plan.lx, parts)
    w0 = np.zeros(shape) if weights is None else np.asarray(weights, dtype=np.float64)
    w_prev = w0 if previous is None else np.asarray(previous, dtype=np.float64)
    for name, w in (("weights", w0), ("previous", w_prev)):
        if w.shape != shape or not np.all(np.isfinite(w)):
            raise argument_error(name, f"be finite, of shape {shape}", w.shape)
    if not 0 <= inputs.start_round <= plan.iterations:
        raise argument_error("start_round", f"be between 0 and {plan.iterations}", inputs.start_round)
    return PreparedData(
        plan=plan,
        x=xa,
        y=ya,
        x_test=xt,
        y_test=yt,
        profile=profile,
        partitions=partitions,
        xty=labelled_sums(partitions, ya),
        coefficients=scaled_coefficients(polynomial, plan.lx, plan.lw, plan.lc),
        weights=models.project_to_ball(w0, plan.weight_bound),
        previous=models.project_to_ball(w_prev, plan.weight_bound),
    )


def quantize_partitions(x: Array, lx: int, parts: int) -> npt.NDArray[np.int32]:
    """Round(2^lx x) in `parts` consecutive blocks of ceil(m / parts) rows, the last ones zero-padded."""
    m, d = x.shape
    out = np.zeros((parts, -(-m // parts), d), dtype=np.int32)
    rows = out.reshape(-1, d)  # a view: partition i's rows follow partition i - 1's
    largest = 0
    for lo in range(0, m, ROWS_AT_ONCE):  # block by block straight into the int32 array: no int64 copy of x
        block = quantize_data(x[lo : lo + ROWS_AT_ONCE], lx)
        largest = max(largest, int(np.abs(block).max()))
        rows[lo : lo + len(block)] = block
    if largest > MAX_QUANTIZED:
        raise argument_error(
            "x", f"have |2^l_x x| <= {MAX_QUANTIZED} (l_x = {lx}); scale the features or lower l_x", largest
        )
    return out


def labelled_sums(partitions: npt.NDArray[np.int32], y: Array) -> Array:
    """X̄ᵀy in float64 from the quantized rows (partitions as quantize_partitions lays them out, m = len(y))."""
    rows = partitions.reshape(-1, partitions.shape[2])[: len(y)]
    if not (np.all(y == np.round(y)) and len(y) * MAX_QUANTIZED * float(np.abs(y).max()) <= 2**53):
        return rows.astype(np.float64).T @ y  # real targets: the bits of one product over all rows
    # Whole-number labels (0/1): every partial sum is an exact integer in float64, so adding block by block
    # gives the same bits as one product, without a float64 copy of all the rows.
    total = np.zeros((rows.shape[1], *y.shape[1:]))
    for lo in range(0, len(y), ROWS_AT_ONCE):
        total += rows[lo : lo + ROWS_AT_ONCE].astype(np.float64).T @ y[lo : lo + ROWS_AT_ONCE]
    return total


def round_weights(plan: Plan, weights: Array, seed: int, round_index: int) -> npt.NDArray[np.int64]:
    """The r stochastic quantizations (one for r = 0) of the weights for one round, seeded by (seed, round)."""
    rng = np.random.default_rng([seed, round_index])
    return quantize_weights(weights, plan.lw, max(plan.r, 1), rng)


def guard_round(
    plan: Plan,
    profile: DataProfile,
    coefficients: npt.NDArray[np.object_],
    wbar: npt.NDArray[np.int64],
    round_index: int,
) -> None:
    """Refuse a round whose quantized weights could make a decoded value wrap around P."""
    if plan.exact_sigmoid:  # the products X̄w̄ are decoded; the sigmoid values are guarded when encoded
        bound = products_bound(profile, plan.lx, float(np.linalg.norm(wbar, axis=0).max()))
        _refuse_wrap(plan, bound, f"round {round_index + 1}", "weights")
        return
    # Each class's gradient column is decoded from its own r quantizations: the largest of their bounds counts.
    bound = max(
        decoded_bound(profile, coefficients, plan.lx, [float(np.linalg.norm(wbar[:, c + j])) for j in range(plan.r)])
        for c in range(0, wbar.shape[1], plan.r)
    )
    _refuse_wrap(plan, bound, f"round {round_index + 1}", "weights")


def guard_sigmoid_values(plan: Plan, profile: DataProfile, ebar: npt.NDArray[np.int64], round_index: int) -> None:
    """Refuse to send sigmoid values (r = 0) whose gradient X̄ᵀē could wrap around P."""
    norm = float(np.linalg.norm(ebar.reshape(ebar.shape[0], -1).astype(np.float64), axis=0).max())
    _refuse_wrap(plan, sigmoid_gradient_bound(profile, plan.lx, norm), f"round {round_index + 1}", "sigmoid values")


def _refuse_wrap(plan: Plan, bound: float, where: str, what: str) -> None:
    if bound > plan.basis.max_signed:  # cannot happen inside the weight ball; never decode garbage
        raise OverflowError(f"{where}: decoded values could reach {bound:.3g} > (P-3)/2; refusing to send the {what}")


def residue_of(field: PrimeField, values: npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
    """Signed integers reduced into F_p, as the centred int32 representatives the encoder reads."""
    reduced = np.mod(values.astype(np.int64, copy=False), field.p).astype(np.uint32)
    return field.centred(reduced, np.int32)


def sum_blocks(field: PrimeField, blocks: Elements) -> Elements:
    """Add decoded per-partition blocks (parts x d) in the field: the residue of the whole gradient."""
    return (blocks.astype(np.uint64).sum(axis=0) % np.uint64(field.p)).astype(np.uint32)


def gradient_from_sums(plan: Plan, sums: Elements, xty: Array, m: int) -> Array:
    """The real gradient (1/m)(X̄ᵀs̄ 2^-l - X̄ᵀy 2^-lx) from X̄ᵀs̄'s residues (residues x d, or x dC), lifted by CRT."""
    total = plan.basis.combine(sums)
    return (to_float(total, plan.gradient_scale).reshape(xty.shape) - np.ldexp(xty, -plan.lx)) / m


def round_stats(
    model: str,
    round_index: int,
    weights: Array,
    train: tuple[Array, Array],
    test: tuple[Array | None, Array | None],
    used: tuple[int, ...] = (),
) -> RoundStats:
    """Loss and accuracy of the weights on the real training data (test accuracy, or R² and RMSE, on a test set)."""
    # One product x @ w per split for all its metrics: each is a pass over the data.
    x, y = train
    x_test, y_test = test
    test_accuracy = test_r2 = test_rmse = None
    if x_test is not None and y_test is not None:
        z_test = x_test @ weights
        test_accuracy = models.accuracy_of_scores(z_test, y_test, model)
        test_r2 = models.r_squared_of_scores(z_test, y_test, model)
        test_rmse = models.rmse_of_scores(z_test, y_test, model)
    z = x @ weights
    return RoundStats(
        round=round_index,
        loss=models.loss_of_scores(z, y, model),
        train_accuracy=models.accuracy_of_scores(z, y, model),
        test_accuracy=test_accuracy,
        workers_used=used,
        test_r2=test_r2,
        test_rmse=test_rmse,
    )

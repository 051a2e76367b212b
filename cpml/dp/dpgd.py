"""Differentially private gradient descent for logistic regression, and model aggregation.

Pure functions over numpy arrays; no I/O. Labels are 0/1, or one-hot rows of C > 2 classes: then the
model is C one-vs-rest columns, a d x C matrix the session and the wire keep flat (d C values,
`model_size`), and each record's gradient (d x C) is clipped as one vector, so the sensitivity and the
accounting are unchanged. Noise scales are expressed as
*noise multipliers* z in dp_accounting's convention: the noise added to the sum of clipped
per-record gradients has standard deviation z * clip.

Why sigma_k = sigma * sqrt(n / n_k): party k adds N(0, (z_k * G)^2) to its gradient sum with
z_k = z * sqrt(n_k / n). The weighted aggregate sum_k (n_k/n) * (S_k + N_k) / n_k equals
(sum_k S_k + sum_k N_k) / n, and sum_k N_k ~ N(0, (z G)^2): exactly centralized DP-GD on the
pooled data with multiplier z. The plain average (the baseline) instead weighs a record of
the smallest party by 1 / (P n_min), so it needs z_k = z * n_k / (sqrt(P) * n_min).

The default step comes from public quantities only (`public_step`): rows lie in the unit ball,
so the loss is L-smooth with L = 1/4 + l2 and eta = 1/L is always safe; the noise on the mean
gradient (std sigma = z G / (q n) per coordinate, from the public n, d, epsilon, delta and step
count) sets how far the run should travel, eta_total = kappa / (sigma sqrt(d T)), the minimiser of
the noisy-GD bound R^2 / (2 eta T) + eta d sigma^2 / 2 at kappa ~ R. What 1/L cannot cover is made
up by Nesterov momentum on the server, which is post-processing of the released aggregates and
costs no privacy. kappa and the momentum cap were measured (bench/bench_wddp.py --defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from cpml.dp.noise import NoiseSource, gaussian_noise
from cpml.errors import argument_error
from cpml.preprocessing import clip_rows

# Curvature of the logistic loss on rows in the unit ball: sigma'(t) <= 1/4 times ||x||^2 <= 1.
LOGISTIC_CURVATURE = 0.25
# kappa in eta_total = kappa / (sigma sqrt(d T)): measured best between 3 and 8 on a census-like
# table (24,000 rows) and breast cancer / digits (288-455 rows) at epsilon 0.25-4.
STEP_SCALE = 5.0
# Momentum beyond 0.9 amplifies the noise more than it speeds 50 rounds up (measured).
MAX_MOMENTUM = 0.9


class Scheme(str, Enum):
    """How the server combines party models."""

    WEIGHTED = "weighted"
    UNWEIGHTED = "unweighted"


@dataclass(frozen=True)
class LocalSettings:
    """What every party does within one round."""

    learning_rate: float | None = None  # None: the server picks it by `public_step` at start
    clip: float = 1.0
    l2: float = 1e-3
    local_steps: int = 1
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        lr = self.learning_rate
        if lr is not None and not (np.isfinite(lr) and lr > 0):
            raise argument_error("learning_rate", "be a positive number (omit it: automatic)", lr)
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise argument_error("clip", "be a positive number", self.clip)
        if not (np.isfinite(self.l2) and self.l2 >= 0):
            raise argument_error("l2", "be a non-negative number", self.l2)
        if self.local_steps < 1:
            raise argument_error("local_steps", "be at least 1", self.local_steps)
        if not 0 < self.sampling_rate <= 1:
            raise argument_error("sampling_rate", "lie in (0, 1]", self.sampling_rate)


def add_bias_and_normalise(x: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """Append a constant-1 column, then scale rows longer than max_norm onto the ball."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise argument_error("x", "be a 2-D array", x.shape)
    with_bias = np.hstack([x, np.ones((x.shape[0], 1))])
    return clip_rows(with_bias, max_norm)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def model_size(x: np.ndarray, y: np.ndarray) -> int:
    """How many values the model has: d, or d x C for one-hot labels of C classes."""
    return x.shape[1] * (y.shape[1] if np.ndim(y) == 2 else 1)


def _columns(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The flat model as the d x C matrix of C one-vs-rest columns when y is one-hot (else as it is)."""
    return np.asarray(w).reshape(x.shape[1], y.shape[1]) if np.ndim(y) == 2 else np.asarray(w)


def objective(w: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    """F(w): mean logistic loss (summed over the classes' models) plus (l2/2)||w||^2."""
    w = np.asarray(w)
    if np.ndim(y) == 2:
        z = x @ _columns(w, x, y)
        return float(np.mean(np.sum(np.logaddexp(0.0, z) - y * z, axis=1)) + 0.5 * l2 * (w.ravel() @ w.ravel()))
    margins = (2.0 * y - 1.0) * (x @ w)
    return float(np.mean(np.logaddexp(0.0, -margins)) + 0.5 * l2 * (w @ w))


def objective_gradient(w: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Exact (non-private) gradient of F at w (flat, as w)."""
    columns = _columns(w, x, y)
    return (x.T @ (_sigmoid(x @ columns) - y) / len(y) + l2 * columns).reshape(np.shape(w))


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose predicted label (x.w > 0, or the top-scoring class) equals y."""
    if np.ndim(y) == 2:
        return float(np.mean(np.argmax(x @ _columns(w, x, y), axis=1) == np.argmax(y, axis=1)))
    return float(np.mean((x @ w > 0) == (y > 0.5)))


def clipped_gradient_sum(w: np.ndarray, x: np.ndarray, y: np.ndarray, clip: float) -> np.ndarray:
    """Sum over records of each per-record loss gradient clipped to norm `clip` (d x C ones as one vector)."""
    if np.ndim(y) == 2:  # record i's gradient is x_i (s_i - y_i)ᵀ, of Frobenius norm ||x_i|| ||s_i - y_i||
        residual = _sigmoid(x @ w) - y
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(residual, axis=1)
        scale = np.minimum(1.0, clip / np.maximum(norms, np.finfo(np.float64).tiny))
        return x.T @ (residual * scale[:, None])
    per_record = (_sigmoid(x @ w) - y)[:, None] * x
    return clip_rows(per_record, clip).sum(axis=0)


def dp_gradient_steps(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, noise_multiplier: float, settings: LocalSettings, source: NoiseSource
) -> np.ndarray:
    """Run `local_steps` noisy clipped gradient steps from w; return the new model."""
    n = len(y)
    if n == 0:
        raise argument_error("x", "hold at least one record", 0)
    if settings.learning_rate is None:
        raise argument_error("learning_rate", "be set (the server resolves it at start)", None)
    std = noise_multiplier * settings.clip
    denominator = settings.sampling_rate * n
    shape = np.shape(w)
    w = np.array(_columns(w, x, y), dtype=np.float64)
    for _ in range(settings.local_steps):
        if settings.sampling_rate < 1.0:
            batch = source.uniform(n) < settings.sampling_rate
            total = clipped_gradient_sum(w, x[batch], y[batch], settings.clip)
        else:
            total = clipped_gradient_sum(w, x, y, settings.clip)
        noisy = (total + gaussian_noise(source, w.shape, std)) / denominator
        w = w - settings.learning_rate * (noisy + settings.l2 * w)
    return w.reshape(shape)


def smoothness_bound(l2: float) -> float:
    """L = 1/4 + l2: the curvature bound of F for rows in the unit ball (public)."""
    return LOGISTIC_CURVATURE + l2


def public_step(
    records: int, dimension: int, noise_multiplier: float, steps: int, settings: LocalSettings
) -> tuple[float, float]:
    """(learning rate, server momentum) from public n, d, z, T: 1/L, momentum as noise allows."""
    if records < 1:
        raise argument_error("records", "be at least 1", records)
    if dimension < 1:
        raise argument_error("dimension", "be at least 1", dimension)
    if steps < 1:
        raise argument_error("steps", "be at least 1", steps)
    if not (np.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise argument_error("noise_multiplier", "be a non-negative number", noise_multiplier)
    safe = 1.0 / smoothness_bound(settings.l2)
    sigma = noise_multiplier * settings.clip / (settings.sampling_rate * records)
    if sigma == 0.0:
        return safe, MAX_MOMENTUM
    target = STEP_SCALE / (sigma * float(np.sqrt(dimension * steps)))
    step = min(safe, target)
    return step, min(MAX_MOMENTUM, 1.0 - step / target)


def lookahead(weights: np.ndarray, previous: np.ndarray, momentum: float) -> np.ndarray:
    """Nesterov's extrapolated point w + beta (w - w_prev), where the next gradient is taken."""
    return weights + momentum * (weights - previous)


def party_noise_multiplier(scheme: Scheme, noise_multiplier: float, sizes: Sequence[int], party: int) -> float:
    """z_k: the multiplier party `party` uses so the aggregate carries multiplier z."""
    counts = _checked_sizes(sizes)
    n_k = counts[party]
    if scheme is Scheme.WEIGHTED:
        return noise_multiplier * float(np.sqrt(n_k / counts.sum()))
    return noise_multiplier * n_k / (np.sqrt(len(counts)) * counts.min())


def round_noise_multiplier(
    scheme: Scheme, noise_multiplier: float, sizes: Sequence[int], survivors: Sequence[int]
) -> float:
    """The multiplier the released aggregate carries when only `survivors` reported."""
    counts = _checked_sizes(sizes)
    if len(survivors) == 0:
        raise argument_error("survivors", "name at least one party", list(survivors))
    if scheme is Scheme.WEIGHTED:
        return noise_multiplier * float(np.sqrt(counts[list(survivors)].sum() / counts.sum()))
    # Conservative: the smallest surviving party is no smaller than the smallest party.
    return noise_multiplier * float(np.sqrt(len(survivors) / len(counts)))


def aggregate(scheme: Scheme, models: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """Combine party models: sum (n_k / n_S) w_k (WD-DP) or the plain mean (baseline)."""
    if len(models) == 0:
        raise argument_error("models", "hold at least one model", 0)
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in models])
    if scheme is Scheme.UNWEIGHTED:
        return stacked.mean(axis=0)
    weights = _checked_sizes(sizes).astype(np.float64)
    if len(weights) != len(stacked):
        raise argument_error("sizes", f"have one entry per model ({len(stacked)})", len(weights))
    return (weights / weights.sum()) @ stacked


def split_uneven(n: int, parties: int, rho: float, shuffle_seed: int) -> list[np.ndarray]:
    """Row indices for `parties` parties: half of size n_min, the rest about rho*n_min."""
    if parties < 2:
        raise argument_error("parties", "be at least 2", parties)
    if not (np.isfinite(rho) and rho >= 1):
        raise argument_error("rho", "be at least 1", rho)
    small = parties // 2
    shares = np.array([1.0] * small + [float(rho)] * (parties - small))
    exact = n * shares / shares.sum()
    sizes = np.floor(exact).astype(np.int64)
    # Hand the leftover rows to the largest fractional parts, so n_max/n_min stays near rho.
    sizes[np.argsort(sizes - exact)[: n - sizes.sum()]] += 1
    if sizes.min() < 1:
        raise argument_error("rho", f"leave every one of {parties} parties a record of {n}", rho)
    order = np.random.default_rng(shuffle_seed).permutation(n)
    return np.split(order, np.cumsum(sizes)[:-1])


def _checked_sizes(sizes: Sequence[int]) -> np.ndarray:
    arr = np.asarray(sizes, dtype=np.int64)
    if arr.ndim != 1 or len(arr) == 0 or (arr < 1).any():
        raise argument_error("sizes", "be a non-empty list of positive record counts", list(sizes))
    return arr


@dataclass(frozen=True, eq=False)
class OptimalityGap:
    """F(w) - F(w*) on fixed rows, w* the non-private optimum fitted once (`fit`)."""

    x: np.ndarray
    y: np.ndarray
    l2: float
    optimum: np.ndarray
    optimum_objective: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float) -> OptimalityGap:
        """Solve for w* on (x, y) at this l2 to high accuracy."""
        w_star = optimum(x, y, l2)
        return cls(x, y, l2, w_star, objective(w_star, x, y, l2))

    def __call__(self, w: np.ndarray) -> float:
        """The gap of w (>= 0 up to rounding)."""
        return objective(w, self.x, self.y, self.l2) - self.optimum_objective


def optimum(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """The non-private minimiser w* of F (L-BFGS, then Newton steps)."""
    from scipy.optimize import minimize

    w = minimize(
        objective,
        np.zeros(model_size(x, y)),
        args=(x, y, l2),
        jac=objective_gradient,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10_000},
    ).x
    for _ in range(0 if np.ndim(y) == 2 else 20):  # Newton polish: L-BFGS stalls around 1e-6 in the gradient norm
        grad = objective_gradient(w, x, y, l2)
        if np.linalg.norm(grad) < 1e-12:
            break
        p = _sigmoid(x @ w)
        hessian = (x.T * (p * (1 - p))) @ x / len(y) + l2 * np.eye(len(w))
        w = w - np.linalg.solve(hessian, grad)
    return w

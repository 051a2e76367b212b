"""Float64 models: losses, predictions and plain gradient descent (the reference CodedPrivateML must match).

Logistic regression over C > 2 classes is one-vs-rest: y is an m x C matrix of 0/1 (one 1 per row), the
weights a d x C matrix whose column c is the binary model of class c against the rest; every function below
takes a vector y and w (two classes) or the matrices (C classes), and predicts the arg-max class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from cpml.errors import argument_error
from cpml.protocol.sigmoid import sigmoid

Array = npt.NDArray[np.float64]
# Up to this many features XᵀX (one pass over X) beats the power iteration's up to 200 passes: 20x faster on
# 1M x 101 rows, where the step size took longer than loading the data.
_GRAM_MAX_FEATURES = 256


def check_dataset(x: npt.ArrayLike, y: npt.ArrayLike, model: str, name: str = "x") -> tuple[Array, Array]:
    """Return (x, y) as float64 after checking shapes, finiteness and (for logistic) 0/1 labels."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 2 or xa.shape[0] == 0 or xa.shape[1] == 0:
        raise argument_error(name, "be a non-empty 2-D array (rows x features)", xa.shape)
    if ya.shape[:1] != (xa.shape[0],) or ya.ndim > 2 or (ya.ndim == 2 and (model != "logistic" or ya.shape[1] < 3)):
        raise argument_error(
            "y",
            f"be a vector of {xa.shape[0]} labels (or {xa.shape[0]} x C one-hot rows, C > 2, for logistic regression)",
            ya.shape,
        )
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise argument_error(name, "hold only finite values", "NaN or infinity")
    if model == "logistic" and not np.all((ya == 0) | (ya == 1)):
        raise argument_error("y", "hold only 0/1 labels for logistic regression", np.unique(ya)[:5].tolist())
    if ya.ndim == 2 and not np.all(ya.sum(axis=1) == 1):
        raise argument_error("y", "have exactly one 1 in each one-hot row", "a row without")
    return xa, ya


def loss(x: Array, y: Array, w: Array, model: str) -> float:
    """Mean cross-entropy (logistic) or half mean squared error (linear)."""
    return loss_of_scores(x @ w, y, model)


def loss_of_scores(z: Array, y: Array, model: str) -> float:
    """The loss from the scores z = x @ w."""
    if model == "linear":
        return float(0.5 * np.mean((z - y) ** 2))
    # log(1 + e^z) - y z, computed stably (averaged over the classes' binary models too)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def accuracy(x: Array, y: Array, w: Array, model: str) -> float | None:
    """Fraction of correct 0/1 predictions (logistic); None for linear regression."""
    return accuracy_of_scores(x @ w, y, model)


def accuracy_of_scores(z: Array, y: Array, model: str) -> float | None:
    """The accuracy from the scores z = x @ w (a column a class: the highest-scoring class is predicted)."""
    if model == "linear":
        return None
    if np.ndim(z) == 2:  # one-vs-rest: the class whose model scores highest
        return float(np.mean(np.argmax(z, axis=1) == np.argmax(y, axis=1)))
    return float(np.mean((z >= 0.0) == (y == 1)))


def r_squared(x: Array, y: Array, w: Array, model: str) -> float | None:
    """Coefficient of determination 1 - SS_res/SS_tot of x @ w (linear); None for logistic, NaN for constant y."""
    return r_squared_of_scores(x @ w, y, model)


def r_squared_of_scores(z: Array, y: Array, model: str) -> float | None:
    """R² from the predictions z = x @ w."""
    if model != "linear":
        return None
    total = float(np.sum((y - np.mean(y)) ** 2))
    residual = float(np.sum((z - y) ** 2))
    return 1.0 - residual / total if total > 0 else float("nan")


def rmse(x: Array, y: Array, w: Array, model: str, target_scale: float = 1.0) -> float | None:
    """Root mean squared error of x @ w (linear) in target units: y's units times target_scale; None for logistic."""
    return rmse_of_scores(x @ w, y, model, target_scale)


def rmse_of_scores(z: Array, y: Array, model: str, target_scale: float = 1.0) -> float | None:
    """The RMSE from the predictions z = x @ w, in y's units times target_scale."""
    if model != "linear":
        return None
    return float(target_scale * np.sqrt(np.mean((z - y) ** 2)))


def gradient(x: Array, y: Array, w: Array, model: str) -> Array:
    """The exact float64 gradient (1/m) Xᵀ(s(Xw) - y), s the true sigmoid or the identity."""
    z = x @ w
    prediction = z if model == "linear" else sigmoid(z)
    return x.T @ (prediction - y) / x.shape[0]


def lipschitz_learning_rate(x: Array, slope: float) -> float:
    """1/L with L = slope * ||X||_2^2 / m: the curvature of the loss whose gradient is Xᵀ(s_hat(Xw) - y)/m."""
    # slope is the largest derivative of the workers' polynomial s_hat (1 for linear regression, c_1 for the
    # degree-1 sigmoid fit), so this is the step of the loss CodedPrivateML actually minimises.
    if not (math.isfinite(slope) and slope > 0):
        raise argument_error("slope", "be a positive finite number", slope)
    if x.shape[1] <= _GRAM_MAX_FEATURES:  # one pass over X for XᵀX (d x d), then its exact top eigenvalue
        sigma2 = float(np.linalg.eigvalsh(x.T @ x)[-1]) if x.size else 0.0
        if sigma2 <= 0.0:
            raise argument_error("x", "have a non-zero entry", "all zeros")
        return 1.0 / (1.05 * sigma2 / x.shape[0] * slope)
    v = np.full(x.shape[1], 1.0 / np.sqrt(x.shape[1]))
    sigma2 = 0.0
    for _ in range(100):  # power iteration on XᵀX, deterministic start; each step is two passes over X
        u = x.T @ (x @ v)
        norm = float(np.linalg.norm(u))
        if norm == 0.0:
            break
        v, previous, sigma2 = u / norm, sigma2, norm
        if abs(sigma2 - previous) <= 1e-6 * sigma2:
            break
    if sigma2 == 0.0:
        raise argument_error("x", "have a non-zero entry", "all zeros")
    # Power iteration approaches sigma^2 from below; 5% headroom keeps 1/L on the safe side.
    return 1.0 / (1.05 * sigma2 / x.shape[0] * slope)


def lookahead(weights: Array, previous: Array, round_index: int, radius: float) -> Array:
    """Nesterov's query point w_t + t/(t+3) (w_t - w_{t-1}), kept in the weight ball."""
    momentum = round_index / (round_index + 3)
    return project_to_ball(weights + momentum * (weights - previous), radius)


def project_to_ball(w: Array, radius: float) -> Array:
    """Scale w back onto the L2 ball of the given radius if it lies outside (each column of a d x C matrix)."""
    if np.ndim(w) == 2:
        norms = np.linalg.norm(w, axis=0)
        return w * np.where(norms > radius, radius / np.where(norms > 0, norms, 1.0), 1.0)
    norm = float(np.linalg.norm(w))
    return w * (radius / norm) if norm > radius else w


def gradient_descent(
    x: Array,
    y: Array,
    learning_rate: float,
    iterations: int,
    model: str = "logistic",
    radius: float = math.inf,
    prediction: Callable[[Array], Array] | None = None,
) -> Array:
    """Projected Nesterov gradient descent from zero, the update every trainer uses; the weight trajectory."""
    # `prediction` replaces the true sigmoid (or the identity) by another link, e.g. the workers' polynomial.
    link = prediction or (lambda z: z if model == "linear" else sigmoid(z))
    w = previous = np.zeros(x.shape[1:2] + y.shape[1:])
    trajectory = [w]
    for t in range(iterations):
        query = lookahead(w, previous, t, radius)
        gradient = x.T @ (link(x @ query) - y) / x.shape[0]
        previous, w = w, project_to_ball(query - learning_rate * gradient, radius)
        trajectory.append(w)
    return np.array(trajectory)

"""A synthetic table with the feature scales real tables have: mixed magnitudes, heavy tails, one-hot columns."""

from __future__ import annotations

import numpy as np


def realistic_table(m: int, d: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """m rows, d features (40% Gaussian of mixed scale, 20% heavy-tailed, 40% one-hot) and 0/1 labels."""
    rng = np.random.default_rng(seed)
    n_gauss, n_heavy = (2 * d) // 5, d // 5
    n_onehot = d - n_gauss - n_heavy
    gauss = rng.standard_normal((m, n_gauss)) * 10.0 ** rng.uniform(-2, 3, n_gauss) + rng.uniform(-5, 5, n_gauss)
    heavy = np.column_stack(
        [rng.lognormal(0.0, 1.5, m) if j % 2 else rng.standard_t(3, m) for j in range(n_heavy)]
    ) * 10.0 ** rng.uniform(-1, 2, n_heavy)
    levels = 8
    onehot = np.zeros((m, n_onehot))
    for start in range(0, n_onehot, levels):
        width = min(levels, n_onehot - start)
        onehot[np.arange(m), start + rng.integers(0, width, m)] = 1.0
    x = np.column_stack([gauss, heavy, onehot])
    standardized = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    beta = rng.standard_normal(d) * (rng.random(d) < 0.5) * 0.6
    z = standardized @ beta + 0.3
    y = (rng.random(m) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    return x, y

"""DP-GD math: clipping bounds sensitivity, weighting, noise split, uneven splits, optimum."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cpml.dp.dpgd import (
    LocalSettings,
    Scheme,
    add_bias_and_normalise,
    aggregate,
    clipped_gradient_sum,
    dp_gradient_steps,
    objective_gradient,
    optimum,
    party_noise_multiplier,
    round_noise_multiplier,
    split_uneven,
)
from cpml.dp.noise import SeededGaussian


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return add_bias_and_normalise(x), y.astype(float)


def test_rows_end_up_in_the_unit_ball(cancer):
    x, _ = cancer
    assert np.linalg.norm(x, axis=1).max() <= 1.0 + 1e-12
    assert np.all(x[:, -1] > 0)  # the bias column survives normalisation


@pytest.mark.parametrize("clip", [1.0, np.inf])
def test_clipping_bounds_the_replace_one_sensitivity(clip):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    y = rng.integers(0, 2, 50).astype(float)
    w = rng.normal(size=4)
    neighbour = x.copy()
    neighbour[7] = 1e3 * rng.normal(size=4)  # one record replaced by an outlier
    change = np.linalg.norm(clipped_gradient_sum(w, x, y, clip) - clipped_gradient_sum(w, neighbour, y, clip))
    if np.isfinite(clip):
        assert change <= 2 * clip + 1e-9
    else:  # without clipping the bound the accountant relies on is broken
        assert change > 2.0


def test_weighted_aggregate_of_noiseless_steps_is_centralized_gd(cancer):
    x, y = cancer
    settings = LocalSettings(learning_rate=1.5, l2=1e-3)
    w0 = np.zeros(x.shape[1])
    parts = split_uneven(len(y), 4, rho=5, shuffle_seed=3)
    source = SeededGaussian(0)
    models = [dp_gradient_steps(w0, x[i], y[i], 0.0, settings, source) for i in parts]
    sizes = [len(i) for i in parts]
    central = dp_gradient_steps(w0, x, y, 0.0, settings, source)
    np.testing.assert_allclose(aggregate(Scheme.WEIGHTED, models, sizes), central, atol=1e-12)
    assert not np.allclose(aggregate(Scheme.UNWEIGHTED, models, sizes), central, atol=1e-4)


@pytest.mark.parametrize("sizes", [[10, 10, 10], [5, 45, 100, 7]])
def test_party_noise_recombines_to_the_centralized_noise(sizes):
    n, z = sum(sizes), 3.0
    # Party k's mean-gradient noise std is z_k G / n_k; weighted by n_k/n they add to (zG/n)^2.
    weighted = sum(
        (nk / n) ** 2 * (party_noise_multiplier(Scheme.WEIGHTED, z, sizes, k) / nk) ** 2 for k, nk in enumerate(sizes)
    )
    assert weighted == pytest.approx((z / n) ** 2)
    # sigma_k = sigma * sqrt(n / n_k), the spec's formula.
    for k, nk in enumerate(sizes):
        assert party_noise_multiplier(Scheme.WEIGHTED, z, sizes, k) / nk == pytest.approx((z / n) * np.sqrt(n / nk))
    # Baseline: the plain mean's noise matches its sensitivity 2G/(P n_min) at multiplier z.
    p = len(sizes)
    plain = sum(
        (1 / p) ** 2 * (party_noise_multiplier(Scheme.UNWEIGHTED, z, sizes, k) / nk) ** 2 for k, nk in enumerate(sizes)
    )
    assert plain == pytest.approx((z / (p * min(sizes))) ** 2)


def test_dropouts_weaken_the_round():
    sizes = [10, 30, 60]
    assert round_noise_multiplier(Scheme.WEIGHTED, 4.0, sizes, [0, 1, 2]) == pytest.approx(4.0)
    assert round_noise_multiplier(Scheme.WEIGHTED, 4.0, sizes, [0, 1]) == pytest.approx(4.0 * np.sqrt(0.4))


def test_weights_renormalise_over_survivors():
    models = [np.array([1.0]), np.array([4.0])]
    assert aggregate(Scheme.WEIGHTED, models, [10, 30])[0] == pytest.approx(3.25)
    assert aggregate(Scheme.UNWEIGHTED, models, [10, 30])[0] == pytest.approx(2.5)


@pytest.mark.parametrize("rho", [1, 3, 9])
def test_split_has_the_requested_unevenness(rho):
    parts = split_uneven(455, 6, rho, shuffle_seed=1)
    sizes = [len(p) for p in parts]
    assert sorted(np.concatenate(parts)) == list(range(455))
    assert max(sizes) / min(sizes) == pytest.approx(rho, abs=3 / min(sizes))


def test_split_refuses_impossible_unevenness():
    with pytest.raises(ValueError, match="Argument 'rho' must leave every one of 6 parties"):
        split_uneven(10, 6, 50, shuffle_seed=0)


def test_optimum_is_stationary(cancer):
    x, y = cancer
    w = optimum(x, y, 1e-3)
    assert np.linalg.norm(objective_gradient(w, x, y, 1e-3)) < 1e-7


def test_poisson_sampling_uses_the_source():
    x = np.ones((200, 2)) / 2
    y = np.ones(200)
    settings = LocalSettings(learning_rate=1.0, sampling_rate=0.1)
    a = dp_gradient_steps(np.zeros(2), x, y, 1.0, settings, SeededGaussian(5))
    b = dp_gradient_steps(np.zeros(2), x, y, 1.0, settings, SeededGaussian(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"local_steps": 0}, "local_steps"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"clip": -1}, "clip"),
    ],
)
def test_local_settings_validate(kwargs, name):
    with pytest.raises(ValueError, match=f"Argument '{name}' must"):
        LocalSettings(**kwargs)

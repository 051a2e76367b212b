"""Privacy noise: CSPRNG source, Box-Muller correctness, calibrated variance end to end."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cpml.dp import noise as noise_module
from cpml.dp.accountant import Budget
from cpml.dp.dpgd import LocalSettings, Scheme, aggregate, dp_gradient_steps
from cpml.dp.noise import SecureGaussian, SeededGaussian, gaussian_noise
from cpml.dp.session import AggregationSession, RunSettings


def test_secure_source_reads_the_os_csprng(monkeypatch):
    calls = []

    def fake_urandom(n: int) -> bytes:
        calls.append(n)
        return bytes(range(256)) * (n // 256) + bytes(n % 256)

    monkeypatch.setattr(noise_module.os, "urandom", fake_urandom)
    first = SecureGaussian().standard_normal(64)
    second = SecureGaussian().standard_normal(64)
    assert calls == [512, 512]
    np.testing.assert_array_equal(first, second)  # the output is a function of urandom only


def test_secure_normals_are_standard_normal():
    sample = SecureGaussian().standard_normal(40_001)
    assert sample.shape == (40_001,)
    assert stats.kstest(sample, "norm").pvalue > 1e-4
    assert SecureGaussian().secure and not SeededGaussian(1).secure


def test_secure_uniforms_are_uniform_and_never_one():
    u = SecureGaussian().uniform(40_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_negative_std_is_refused():
    with pytest.raises(ValueError, match="Argument 'std' must be a finite non-negative number"):
        gaussian_noise(SecureGaussian(), (3,), -1.0)


def variance_matches(samples: np.ndarray, std: float) -> bool:
    """Two-sided chi-square test (1e-4 level) that i.i.d. zero-mean samples have variance std^2."""
    statistic = float(np.sum((samples / std) ** 2))
    dof = samples.size
    return stats.chi2.sf(statistic, dof) > 5e-5 and stats.chi2.cdf(statistic, dof) > 5e-5


def aggregate_noise(sizes: list[int], dimension: int, rounds: int, scale: float = 1.0):
    """Noise in the weighted aggregate of one round's models, with gradients made zero."""
    settings = RunSettings("noise", len(sizes), 10, Budget(1.0, 1e-5), LocalSettings(learning_rate=1.0, l2=0.0))
    session = AggregationSession(settings, dimension)
    parties = [session.register(f"p{i}", n, dimension) for i, n in enumerate(sizes)]
    session.start()
    assert session.open_round()
    source = SecureGaussian()
    draws = []
    for _ in range(rounds):
        models = []
        for party, n in zip(parties, sizes):
            task = session.task_for(party.party_id)
            x = np.zeros((n, dimension))  # zero rows: the gradient sum is exactly 0
            y = np.zeros(n)
            models.append(dp_gradient_steps(task.weights, x, y, scale * task.noise_multiplier, task.local, source))
        draws.append(aggregate(Scheme.WEIGHTED, models, sizes))
    return np.concatenate(draws), session.noise_multiplier


def test_weighted_aggregate_noise_has_the_centralized_variance():
    sizes = [30, 90, 270]
    samples, z = aggregate_noise(sizes, dimension=20_000, rounds=3)
    centralized_std = z * 1.0 / sum(sizes)  # z * G / n on the mean gradient (lr 1)
    assert variance_matches(samples, centralized_std)
    assert stats.kstest(samples / centralized_std, "norm").pvalue > 1e-4


def test_variance_check_fails_when_noise_is_halved():
    sizes = [30, 90, 270]
    samples, z = aggregate_noise(sizes, dimension=20_000, rounds=3, scale=np.sqrt(0.5))
    assert not variance_matches(samples, z / sum(sizes))

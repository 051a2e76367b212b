"""WD-DP's default step: chosen from public quantities only, near non-private accuracy on tens of
thousands of rows at epsilon 1, and the optimality gap reported per round in embedded mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import structlog

from cpml.dp.accountant import Budget
from cpml.dp.dpgd import (
    MAX_MOMENTUM,
    LocalSettings,
    OptimalityGap,
    dp_gradient_steps,
    public_step,
    smoothness_bound,
)
from cpml.dp.noise import SeededGaussian
from cpml.dp.session import AggregationSession, RunSettings
from cpml.dp.synthetic import census_like
from cpml.master.cli import main

# The margin the defaults must keep at epsilon = 1 (measured: 0.1-0.2 pp; bench_wddp --defaults).
MARGIN = 0.015


@pytest.fixture(autouse=True)
def restore_structlog():
    """The CLIs configure structlog for the process; put the previous setup back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="module")
def census_file(tmp_path_factory):
    x, y = census_like(30_000, seed=0)
    path = tmp_path_factory.mktemp("census") / "census-like.npz"
    np.savez(path, x=x, y=y)
    return path


def test_public_step_is_one_over_l_then_momentum_up_to_the_noise():
    local = LocalSettings(l2=1e-3)
    safe = 1.0 / smoothness_bound(1e-3)
    assert safe == pytest.approx(1 / 0.251)
    # Much noise per record (few records): a step below 1/L, no momentum.
    rate, momentum = public_step(300, 65, 57.2, 50, local)
    assert 0 < rate < safe / 4 and momentum == 0.0
    # Little noise (many records): 1/L, and momentum makes up the rest, capped.
    rate, momentum = public_step(24_000, 109, 57.2, 50, local)
    assert rate == safe and 0.5 < momentum <= MAX_MOMENTUM
    assert public_step(10**9, 109, 57.2, 50, local) == (safe, MAX_MOMENTUM)
    # More records, fewer dimensions or less noise never ask for a shorter effective step.
    effective = [r / (1 - m) for r, m in (public_step(n, 30, 40.0, 50, local) for n in (100, 1000, 3000, 10_000))]
    assert effective == sorted(effective)
    with pytest.raises(ValueError, match="Argument 'records' must be at least 1, not 0"):
        public_step(0, 3, 1.0, 1, local)


def test_the_server_resolves_the_step_from_counts_alone():
    """The server sees record counts and the dimension, never data, when it picks the step."""

    def resolved(settings: RunSettings) -> tuple[float, float]:
        session = AggregationSession(settings, dimension=5)
        for i, n in enumerate((100, 900)):
            session.register(f"p{i}", n, 5)
        session.start()
        return session.local.learning_rate, session.momentum

    auto = RunSettings("r", 2, 50, Budget(1.0, 1e-5))
    assert resolved(auto) == public_step(1000, 5, _z(auto), 50, auto.local)
    fixed = RunSettings("r", 2, 50, Budget(1.0, 1e-5), LocalSettings(learning_rate=2.0))
    assert resolved(fixed) == (2.0, 0.0)  # an explicit step keeps plain gradient descent
    both = RunSettings("r", 2, 50, Budget(1.0, 1e-5), LocalSettings(learning_rate=2.0), momentum=0.5)
    assert resolved(both) == (2.0, 0.5)


def _z(settings: RunSettings) -> float:
    from cpml.dp.accountant import calibrate_noise_multiplier

    return calibrate_noise_multiplier(settings.budget, settings.rounds, 1.0, settings.accounting)


def test_momentum_is_nesterov_on_released_aggregates_and_survives_a_checkpoint():
    rng = np.random.default_rng(0)
    shards = [(rng.normal(size=(n, 4)) / 4, rng.integers(0, 2, n).astype(float)) for n in (50, 150)]
    settings = RunSettings("m", 2, 6, Budget(1.0, 1e-5), LocalSettings(learning_rate=1.0), momentum=0.5)
    session = AggregationSession(settings, 4)
    parties = [session.register(f"p{i}", len(y), 4) for i, (_, y) in enumerate(shards)]
    session.start()
    source = SeededGaussian(1)
    released = [session.weights]
    for _ in range(3):
        assert session.open_round()
        for party, (x, y) in zip(parties, shards, strict=True):
            task = session.task_for(party.party_id)
            expected = released[-1] + 0.5 * (released[-1] - released[max(len(released) - 2, 0)])
            np.testing.assert_allclose(task.weights, expected)
            session.submit(
                party.party_id,
                task.round,
                len(y),
                dp_gradient_steps(task.weights, x, y, task.noise_multiplier, task.local, source),
            )
        session.close_round()
        released.append(session.weights)
    restored = AggregationSession.restore(settings, json.loads(json.dumps(session.state())))
    rejoined = [restored.register(f"p{i}", len(y), 4) for i, (_, y) in enumerate(shards)]
    restored.start()
    assert restored.open_round() and session.open_round()
    np.testing.assert_array_equal(
        restored.task_for(rejoined[0].party_id).weights, session.task_for(parties[0].party_id).weights
    )


def test_optimality_gap_is_zero_at_the_optimum_only():
    x, y = census_like(500, seed=1)
    x = np.hstack([(x - x.mean(0)) / (x.std(0) + 1e-12), np.ones((500, 1))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gap = OptimalityGap.fit(x, y, 1e-3)
    assert abs(gap(gap.optimum)) < 1e-12
    assert gap(np.zeros(x.shape[1])) == pytest.approx(np.log(2) - gap.optimum_objective)
    assert gap(gap.optimum + 0.1) > 0


def embedded(out, dataset, *flags: str) -> dict:
    code = main(["aggregate", "--dataset", str(dataset), "--out", str(out), "--log-level", "warning", *flags])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_defaults_reach_near_nonprivate_accuracy_on_a_census_like_table(tmp_path, census_file):
    # 24,000 training rows x 108 features at epsilon 1 with uneven parties (rho = 9).
    metrics = embedded(tmp_path / "auto", census_file, "--epsilon", "1", "--rho", "9")
    nonprivate = metrics["nonprivate"]["test_accuracy"]
    assert nonprivate > 0.84
    assert metrics["settings"]["rounds"] == 50 and metrics["settings"]["momentum"] > 0
    assert metrics["guarantees"]["release_epsilon"] <= 1.0
    assert metrics["history"][-1]["test_accuracy"] >= nonprivate - MARGIN
    # The control: the old fixed step 2 (as the user ran it) falls well short of that margin.
    old = embedded(tmp_path / "old", census_file, "--epsilon", "1", "--rho", "9", "--learning-rate", "2")
    assert old["history"][-1]["test_accuracy"] < nonprivate - MARGIN


def test_optimality_gap_is_reported_per_round_and_decreases(tmp_path, capsys, census_file):
    # A huge epsilon on 24,000 rows makes the noise negligible: plain gradient descent at the
    # public step 1/L must descend every round.
    plain = embedded(
        tmp_path / "plain",
        census_file,
        "--epsilon",
        "1000",
        "--rounds",
        "20",
        "--momentum",
        "0",
        "--log-format",
        "json",
        "--log-level",
        "info",
    )
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"round_closed"' in line]
    gaps = [h["optimality_gap"] for h in plain["history"]]
    assert len(gaps) == 20 and [e["optimality_gap"] for e in logged] == gaps
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    assert 0 < gaps[-1] < gaps[0] / 2
    assert plain["settings"]["local"]["learning_rate"] == pytest.approx(1 / 0.251)
    # The default adds momentum here, and gets far closer in the same rounds.
    auto = embedded(tmp_path / "auto", census_file, "--epsilon", "1000", "--rounds", "20")
    assert auto["settings"]["momentum"] == MAX_MOMENTUM
    assert 0 < auto["history"][-1]["optimality_gap"] < gaps[-1] / 3

"""The aggregation session: bad input leaves the round intact, dropouts, budget refusal."""

from __future__ import annotations

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from cpml.dp.accountant import Budget
from cpml.dp.dpgd import LocalSettings, Scheme
from cpml.dp.noise import SeededGaussian
from cpml.dp.session import (
    AggregationSession,
    InvalidUpdate,
    RunFull,
    RunSettings,
    StaleRound,
    UnknownParty,
)
from cpml.dp.simulate import simulate

SIZES = [20, 40, 140]


def started(rounds: int = 5, epsilon: float = 2.0, **kwargs) -> tuple[AggregationSession, list]:
    settings = RunSettings("run-1", len(SIZES), rounds, Budget(epsilon, 1e-5), **kwargs)
    session = AggregationSession(settings, dimension=3)
    parties = [session.register(f"p{i}", n, 3) for i, n in enumerate(SIZES)]
    session.start()
    assert session.open_round()
    return session, parties


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda p: dict(party_id="f" * 32), UnknownParty, "is not registered in run 'run-1'"),
        (lambda p: dict(records=p.records + 1), InvalidUpdate, "registered 20 records but reports 21"),
        (lambda p: dict(weights=np.zeros(4)), InvalidUpdate, "has 4 values, expected 3"),
        (lambda p: dict(weights=np.array([0.0, np.nan, 1.0])), InvalidUpdate, "NaN or infinite"),
        (lambda p: dict(weights=np.array([0.0, np.inf, 1.0])), InvalidUpdate, "NaN or infinite"),
        (lambda p: dict(round_=0), StaleRound, "is for round 0, but round 1 is open"),
    ],
)
def test_bad_submission_is_refused_and_the_round_is_unaffected(mutate, error, message):
    session, parties = started()
    good = {p.party_id: np.full(3, float(i + 1)) for i, p in enumerate(parties)}
    target = parties[0]
    request = dict(party_id=target.party_id, round_=1, records=target.records, weights=good[target.party_id])
    request.update(mutate(target))
    with pytest.raises(error, match=message):
        session.submit(**request)
    assert session.waiting_for() == ["p0", "p1", "p2"]  # nothing was stored
    for p in parties:  # the honest submissions still go through and aggregate normally
        session.submit(p.party_id, 1, p.records, good[p.party_id])
    result = session.close_round()
    assert result.released and result.dropped == ()
    expected = sum(n * w for n, w in zip(SIZES, good.values())) / sum(SIZES)
    np.testing.assert_allclose(session.weights, expected)


def test_registration_refusals():
    settings = RunSettings("run-2", 1, 3, Budget(1.0, 1e-5))
    session = AggregationSession(settings, dimension=3)
    with pytest.raises(InvalidUpdate, match="has 5 features"):
        session.register("a", 10, 5)
    session.register("a", 10, 3)
    with pytest.raises(RunFull, match="already has its 1 parties"):
        session.register("b", 10, 3)


def test_dropout_renormalises_logs_and_reports():
    saved = structlog.get_config()
    structlog.reset_defaults()  # another test's CLI may have configured a level filter
    try:
        check_dropout()
    finally:
        structlog.configure(**saved)


def check_dropout() -> None:
    session, parties = started(rounds=20)
    for p in parties[:2]:
        session.submit(p.party_id, 1, p.records, np.ones(3) * p.records)
    with capture_logs() as logs:
        result = session.close_round()
    assert result.dropped == ("p2",)
    np.testing.assert_allclose(session.weights, (20 * 20 + 40 * 40) / 60)
    assert result.noise_multiplier == pytest.approx(session.noise_multiplier * np.sqrt(60 / 200))
    dropped_log = [e for e in logs if e["event"] == "party_dropped"]
    assert dropped_log and dropped_log[0]["party"] == "p2"
    assert dropped_log[0]["remaining_weight"] == pytest.approx(0.3)
    assert session.open_round()
    with pytest.raises(StaleRound, match="dropped"):
        session.task_for(parties[2].party_id)


class CountingSource(SeededGaussian):
    def standard_normal(self, size: int) -> np.ndarray:
        object.__setattr__(self, "draws", getattr(self, "draws", 0) + 1)
        return super().standard_normal(size)


def test_budget_refusal_comes_before_any_noise_is_drawn():
    # The big party leaves after round 2: later rounds carry less noise, so the budget
    # calibrated for 10 full rounds runs out early; the round it cannot pay for never starts.
    rng = np.random.default_rng(0)
    shards = [(rng.normal(size=(n, 3)) / 3, rng.integers(0, 2, n).astype(float)) for n in SIZES]
    settings = RunSettings("run-3", 3, 10, Budget(1.0, 1e-5), LocalSettings(l2=0.0))
    source = CountingSource(1)
    result = simulate(settings, shards, source, drop_at={2: 3})
    rounds_run = len(result.history)
    assert rounds_run < 10
    assert "would spend epsilon" in result.stop_reason
    assert result.guarantees.release_epsilon <= 1.0
    # Noise draws: 3 parties in rounds 1-2, 2 parties afterwards; none for the refused round.
    assert source.draws == 3 * 2 + 2 * (rounds_run - 2)


def test_party_guarantee_is_weaker_for_small_parties():
    shards = [(np.zeros((n, 3)), np.zeros(n)) for n in SIZES]
    result = simulate(RunSettings("run-4", 3, 4, Budget(1.0, 1e-5)), shards, SeededGaussian(0))
    g = result.guarantees
    assert g.release_epsilon == pytest.approx(1.0, rel=0.01)
    eps = g.party_epsilons
    assert eps["party-0"] > eps["party-1"] > eps["party-2"] > 1.0


def test_several_local_steps_fall_back_to_the_weakest_party():
    shards = [(np.zeros((n, 3)), np.zeros(n)) for n in SIZES]
    settings = RunSettings("run-5", 3, 3, Budget(1.0, 1e-5), LocalSettings(local_steps=2), Scheme.UNWEIGHTED)
    result = simulate(settings, shards, SeededGaussian(0))
    g = result.guarantees
    assert max(g.party_epsilons.values()) <= 1.0
    assert g.release_epsilon == pytest.approx(max(g.party_epsilons.values()))


def test_poisson_sampled_run_is_accounted_with_pld_and_stays_in_budget():
    rng = np.random.default_rng(1)
    shards = [(rng.normal(size=(n, 3)) / 3, rng.integers(0, 2, n).astype(float)) for n in SIZES]
    settings = RunSettings("run-6", 3, 6, Budget(2.0, 1e-5), LocalSettings(sampling_rate=0.3))
    assert settings.accounting.value == "pld"
    result = simulate(settings, shards, SeededGaussian(2))
    assert len(result.history) == 6
    assert 1.9 < result.guarantees.release_epsilon <= 2.0
    eps = [r.epsilon for r in result.history]
    assert eps == sorted(eps)


def test_round_the_budget_cannot_pay_for_after_dropouts_is_discarded():
    # Budget for exactly one full round; p2 stays silent, so the round has less noise than
    # planned and would overspend: it is not released and the run ends.
    session, parties = started(rounds=1)
    for p in parties[:2]:
        session.submit(p.party_id, 1, p.records, np.full(3, 7.0))
    result = session.close_round()
    assert not result.released and result.dropped == ("p2",)
    np.testing.assert_array_equal(session.weights, np.zeros(3))
    assert session.release_epsilon() == 0.0
    assert "round 1 discarded" in session.stop_reason
    assert not session.open_round()


def run_rounds(session, parties, shards, source, until: int) -> None:
    from cpml.dp.dpgd import dp_gradient_steps

    while session.round < until and session.open_round():
        for party, (x, y) in zip(parties, shards):
            task = session.task_for(party.party_id)
            w = dp_gradient_steps(task.weights, x, y, task.noise_multiplier, task.local, source)
            session.submit(party.party_id, task.round, len(y), w)
        session.close_round()


def test_checkpoint_resume_carries_the_spent_budget_over():
    import json

    rng = np.random.default_rng(3)
    shards = [(rng.normal(size=(n, 3)) / 3, rng.integers(0, 2, n).astype(float)) for n in SIZES]
    settings = RunSettings("run-7", 3, 6, Budget(1.0, 1e-5))
    first = AggregationSession(settings, 3)
    parties = [first.register(f"p{i}", n, 3) for i, n in enumerate(SIZES)]
    first.start()
    run_rounds(first, parties, shards, SeededGaussian(0), until=3)
    state = json.loads(json.dumps(first.state()))  # what goes to disk

    second = AggregationSession.restore(settings, state)
    with pytest.raises(InvalidUpdate, match="registered 20 records but rejoins with 21"):
        second.register("p0", 21, 3)
    with pytest.raises(UnknownParty, match="not part of resumed run"):
        second.register("stranger", 20, 3)
    rejoined = [second.register(f"p{i}", n, 3) for i, n in enumerate(SIZES)]
    assert second.ready() and second.start() == first.noise_multiplier
    assert second.round == 3 and second.release_epsilon() == first.release_epsilon()
    np.testing.assert_array_equal(second.weights, first.weights)
    run_rounds(second, rejoined, shards, SeededGaussian(1), until=6)
    assert second.round == 6 and len(second.history) == 6
    assert second.release_epsilon() == pytest.approx(1.0, rel=0.01)  # 6 rounds in total, not 9
    assert not second.open_round()  # and no seventh


def test_resume_refuses_changed_settings_and_finished_runs():
    shards = [(np.zeros((n, 3)), np.zeros(n)) for n in SIZES]
    settings = RunSettings("run-8", 3, 2, Budget(1.0, 1e-5))
    session = AggregationSession(settings, 3)
    parties = [session.register(f"p{i}", n, 3) for i, n in enumerate(SIZES)]
    session.start()
    run_rounds(session, parties, shards, SeededGaussian(0), until=1)
    state = session.state()
    with pytest.raises(
        ValueError,
        match=r"Argument 'resume' must use the checkpointed run's"
        r" settings \(differs in epsilon\)",
    ):
        AggregationSession.restore(RunSettings("run-8", 3, 2, Budget(2.0, 1e-5)), state)
    run_rounds(session, parties, shards, SeededGaussian(0), until=2)
    assert not session.open_round()
    with pytest.raises(ValueError, match="Argument 'resume' must name a run with rounds left"):
        AggregationSession.restore(settings, session.state())


def test_party_secrets_and_models_stay_out_of_logs_and_reprs():
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with capture_logs() as logs:
            session, parties = started(rounds=20)
            for p in parties:
                session.submit(p.party_id, 1, p.records, np.full(3, 0.123456789))
            session.close_round()
    finally:
        structlog.configure(**saved)
    text = repr(logs) + repr(parties) + repr(session.history)
    assert logs and all(p.party_id not in text for p in parties)
    assert "0.123456" not in text

"""Workers that return wrong but well-formed results: corrected and named (--byzantine), or detected (--detect)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cpml.field.errors import TooManyErrors
from cpml.master.job import load_training_data
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.master.train import WrongResults, train
from cpml.protocol import CodedTrainer, Plan, RunInputs, prepare_share, simulate, worker_compute


@hsettings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 3),
    t=st.integers(1, 2),
    r=st.integers(1, 2),
    a=st.integers(1, 2),
    seed=st.integers(0, 10**6),
    data=st.data(),
)
def test_the_decoded_gradient_is_the_honest_one_whatever_a_wrong_workers_send(k, t, r, a, seed, data):
    rng = np.random.default_rng(seed)
    n = (2 * r + 1) * (k + t - 1) + 1 + 2 * a
    x, y = rng.standard_normal((30, 4)) / 4, rng.integers(0, 2, 30).astype(float)
    plan = Plan(
        n_workers=n,
        k=k,
        t=t,
        r=r,
        byzantine=a,
        iterations=1,
        lx=4,
        lw=6,
        lc=4,
        p=2**31 - 1,
        residues=3 if r == 2 else 2,
    )
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=seed % 1000))
    shares = trainer.encode_dataset()
    w_shares = trainer.weight_shares()
    coefficients = trainer.job_spec.coefficient_array()
    order = [int(i) for i in rng.permutation(n)]
    replies = {
        i: worker_compute(trainer.basis, prepare_share(trainer.basis, shares[i]), w_shares[i], coefficients)
        for i in order
    }
    honest = trainer.decode_gradient(replies)
    liars = data.draw(st.lists(st.sampled_from(order[: plan.replies_needed]), max_size=a, unique=True))
    for liar in liars:  # any residue, any entries, any amounts
        residue = data.draw(st.integers(0, plan.residues - 1))
        entry = data.draw(st.integers(0, 3))
        replies[liar] = replies[liar].copy()
        replies[liar][residue, entry] = (
            int(replies[liar][residue, entry]) + data.draw(st.integers(1, 1000))
        ) % plan.moduli[residue]
    assert sorted(trainer.wrong_workers(replies)) == sorted(liars)
    np.testing.assert_array_equal(trainer.decode_gradient(replies, liars), honest)


def settings(addresses, out, **changes):
    return TrainSettings(
        **{
            "dataset": "breast-cancer",
            "workers": tuple(addresses),
            "insecure": True,
            "k": 1,
            "t": 1,
            "iterations": 12,
            "out": out,
            "progress": False,
            **changes,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "liars",
    [
        [("offset", "1", "0.1")],  # A = 1: a constant added to a tenth of the entries, every round
        [("random", "1", "0.1"), ("offset", "3", "0.01")],  # A = 2: one at random, one rarely and in one entry
    ],
)
async def test_a_wrong_workers_among_r_plus_2a_daemons_are_corrected_and_named(tmp_path, liars):
    a = len(liars)
    async with LocalWorkers(3 + a, tmp_path / "honest") as honest:  # K = 1, T = 1: R = 3, N = R + 2A
        groups = [
            LocalWorkers(
                1,
                tmp_path / f"liar{i}",
                extra_args=(
                    "--fault-wrong-results",
                    mode,
                    "--fault-wrong-every",
                    every,
                    "--fault-wrong-fraction",
                    fraction,
                ),
            )
            for i, (mode, every, fraction) in enumerate(liars)
        ]
        for group in groups:
            await group.__aenter__()
        try:
            addresses = [*honest.addresses, *(g.addresses[0] for g in groups)]
            run = settings(addresses, tmp_path / "run", byzantine=a)
            report = await train(run)
        finally:
            for group in groups:
                await group.__aexit__(None, None, None)
    culprits = {3 + a + i for i in range(a)}
    named = {i for record in report.history for i in record.wrong_workers}
    assert named == culprits
    assert all("sent a wrong result" in report.dropped_workers[i] for i in culprits)
    data = load_training_data(run)
    clean = simulate(RunInputs(report.plan, data.x_train, data.y_train, seed=run.seed))
    assert np.array_equal(report.weights, clean.weights)  # bit for bit the honest run


@pytest.mark.slow
async def test_with_one_spare_a_wrong_result_is_detected_and_never_applied(tmp_path):
    async with (
        LocalWorkers(3, tmp_path / "honest") as honest,
        LocalWorkers(
            1, tmp_path / "liar", extra_args=("--fault-wrong-results", "offset", "--fault-wrong-every", "3")
        ) as liar,
    ):
        run = settings([*honest.addresses, *liar.addresses], tmp_path / "run", detect=True)
        with pytest.raises(WrongResults, match=r"round 1: .*some worker returned a wrong result.*not applied"):
            await train(run)


def test_the_plan_needs_r_plus_2a_workers():
    with pytest.raises(ValueError, match=r"at least R \+ 2A = 8 to correct A = 2 wrong results \(R = 4\)"):
        Plan(n_workers=7, k=1, t=1, byzantine=2)


def test_more_wrong_workers_than_a_are_refused_not_miscorrected():
    rng = np.random.default_rng(3)
    plan = Plan(n_workers=7, k=1, t=1, byzantine=1, iterations=1)  # R = 4, reads 6 replies
    trainer = CodedTrainer.create(
        RunInputs(plan, rng.standard_normal((20, 3)) / 4, rng.integers(0, 2, 20).astype(float), 0)
    )
    shares, w_shares = trainer.encode_dataset(), trainer.weight_shares()
    coefficients = trainer.job_spec.coefficient_array()
    replies = {
        i: worker_compute(trainer.basis, prepare_share(trainer.basis, shares[i]), w_shares[i], coefficients)
        for i in range(7)
    }
    moduli = np.array(plan.moduli, dtype=np.uint64)[:, None]
    for liar in (0, 3):
        replies[liar] = ((replies[liar].astype(np.uint64) + 1) % moduli).astype(np.uint32)
    with pytest.raises(TooManyErrors, match="round 1"):
        trainer.wrong_workers(replies)


def test_the_estimator_takes_the_same_setting():
    from sklearn.datasets import load_breast_cancer

    from cpml import CodedLogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    plain = CodedLogisticRegression(n_workers=12, workers="in-process", iterations=5).fit(x, y)
    guarded = CodedLogisticRegression(n_workers=12, workers="in-process", iterations=5, byzantine=1).fit(x, y)
    np.testing.assert_array_equal(plain.coef_, guarded.coef_)  # honest workers: the same weights
    assert guarded.plan_["k"] < plain.plan_["k"]  # the preset leaves room for R + 2A replies
    with pytest.raises(ValueError, match=r"at least 5 for T=1, r=0 and 2 more to check results"):
        CodedLogisticRegression(n_workers=4, workers="in-process", iterations=5, byzantine=1).fit(x, y)

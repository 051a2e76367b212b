"""The overflow guard: the bound really bounds every decoded value, and unsafe plans are refused."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

import cpml.protocol.trainer as trainer_module
from cpml.protocol import CodedTrainer, DataProfile, Plan, auto_quantization, check_plan, worker_compute
from cpml.protocol.overflow import plan_bound


@pytest.fixture(scope="module")
def cancer():
    data = load_breast_cancer()
    return StandardScaler().fit_transform(data.data), data.target.astype(float)


def run_rounds(trainer, rounds):
    """Drive a trainer in-process; return the largest |decoded partition value| seen."""
    shares = trainer.encode_dataset()
    coefficients = trainer.job_spec.coefficient_array()
    largest = 0
    for _ in range(rounds):
        w = trainer.weight_shares()
        replies = {i: worker_compute(trainer.field, shares[i], w[i], coefficients) for i in range(trainer.plan.threshold)}
        blocks = trainer.scheme.decode(replies, trainer.plan.threshold)
        largest = max(largest, int(np.abs(trainer.field.phi_inv(blocks)).max()))
        trainer.finish_round(trainer.round, replies)
    return largest


def test_unsafe_quantization_is_refused_with_an_explanation(cancer):
    x, y = cancer
    plan = Plan.case1(10, lx=6, lw=8, lc=8, iterations=3)
    with pytest.raises(OverflowError, match=r"would wrap around p.*larger prime"):
        CodedTrainer.create(plan, x, y, seed=0)


@pytest.mark.parametrize("r, p", [(1, 2**25 - 39), (2, 2**31 - 1), (3, 2**31 - 1)])
def test_auto_picks_the_largest_safe_level(cancer, r, p):
    x, _ = cancer
    plan = Plan.case1(7 * r + 3, r=r, p=p)
    profile = DataProfile.of(x, plan.k)
    chosen = auto_quantization(plan, profile)
    assert check_plan(chosen, profile) <= (p - 3) // 2
    finer = chosen.with_(lx=chosen.lx + 1, lw=chosen.lw + 1, lc=chosen.lc + 1)
    assert plan_bound(finer, profile) > (p - 3) // 2


def test_auto_explains_when_nothing_fits(cancer):
    x, _ = cancer
    plan = Plan.case1(10, weight_bound=1e6)
    with pytest.raises(OverflowError, match=r"Even the coarsest quantization .* larger prime such as 2147483647"):
        auto_quantization(plan, DataProfile.of(x * 100, plan.k))


def test_the_bound_holds_on_every_decoded_value(cancer):
    x, y = cancer
    plan = Plan.case1(10, iterations=30)
    plan = auto_quantization(plan, DataProfile.of(x, plan.k))
    trainer = CodedTrainer.create(plan, x, y, seed=3)
    largest = run_rounds(trainer, 30)
    assert 0 < largest <= plan_bound(trainer.plan, trainer.profile) <= trainer.field.max_signed


def test_without_the_guard_values_wrap_and_the_gradient_is_garbage(cancer, monkeypatch):
    x, y = cancer
    plan = Plan.case1(10, lx=6, lw=8, lc=8, iterations=2, learning_rate=0.1)
    # Remove the protection: the plan check and the per-round check.
    monkeypatch.setattr(trainer_module, "check_plan", lambda plan, profile: 0.0)
    monkeypatch.setattr(trainer_module, "decoded_bound", lambda *args: 0.0)
    trainer = CodedTrainer.create(plan, x, y, seed=0)
    trainer.weights = np.full(x.shape[1], 0.7)
    wbar = trainer.quantized_weights()
    shares = trainer.encode_dataset()
    w_shares = trainer.weight_shares()
    coefficients = trainer.job_spec.coefficient_array()
    replies = {i: worker_compute(trainer.field, shares[i], w_shares[i], coefficients) for i in range(plan.threshold)}
    decoded = trainer.field.phi_inv(trainer.scheme.decode(replies, plan.threshold)).sum(axis=0)
    # The true integer X̄ᵀ s̄ computed with Python ints differs: the field wrapped.
    xbar = trainer.partitions.reshape(-1, x.shape[1]).astype(object)
    z = xbar @ wbar[:, 0].astype(object)
    c = [int(v) for v in trainer.coefficients]
    truth = xbar.T @ (c[0] + c[1] * z)
    assert any(int(a) != int(b) for a, b in zip(decoded, truth))
    assert max(abs(int(v)) for v in truth) > trainer.field.max_signed

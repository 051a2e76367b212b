"""The overflow guard: the bound really bounds every decoded value, and unsafe plans are refused."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

import cpml.protocol.run as run_module
from cpml.field import MAX_RESIDUES
from cpml.protocol import (
    CodedTrainer,
    DataProfile,
    Plan,
    RunInputs,
    auto_precision,
    check_plan,
    prepare_share,
    public_profile,
    worker_compute,
    worker_step,
)
from cpml.protocol.overflow import MAX_DATA_BITS, MIN_DATA_BITS, plan_bound


@pytest.fixture(scope="module")
def cancer():
    data = load_breast_cancer()
    return StandardScaler().fit_transform(data.data), data.target.astype(float)


def replies_for(trainer, shares, w_shares, workers):
    coefficients = trainer.job_spec.coefficient_array()
    return {i: worker_compute(trainer.basis, shares[i], w_shares[i], coefficients) for i in workers}


def exact_gradient_sum(trainer, wbar):
    """X̄ᵀ s̄(X̄ w̄) with Python integers: what decoding must return when nothing wraps."""
    xbar = trainer.partitions.reshape(-1, trainer.x.shape[1]).astype(object)
    z = [xbar @ wbar[:, j].astype(object) for j in range(wbar.shape[1])]
    c = [int(v) for v in trainer.coefficients]
    s = c[0] + sum(c[i] * np.prod(z[:i], axis=0) for i in range(1, len(c)))
    return xbar.T @ s


def run_rounds(trainer, rounds):
    """Drive a trainer in-process; return the largest |decoded gradient value| seen."""
    shares = trainer.encode_dataset()
    largest = 0
    for _ in range(rounds):
        w = trainer.weight_shares()
        replies = replies_for(trainer, shares, w, range(trainer.plan.threshold))
        decoded = trainer.basis.combine(trainer.decode_sums(replies))
        largest = max(largest, max(abs(int(v)) for v in decoded))
        trainer.finish_round(trainer.round, replies)
    return largest


def test_unsafe_quantization_is_refused_with_an_explanation(cancer):
    x, y = cancer
    plan = Plan.case1(10, lx=12, lw=14, lc=12, iterations=3)
    with pytest.raises(OverflowError, match=r"they would wrap.*add residues"):
        CodedTrainer.create(RunInputs(plan, x, y, seed=0))


@pytest.mark.parametrize("r, p", [(1, 2**25 - 39), (1, 2**31 - 1), (2, 2**31 - 1), (3, 2**25 - 39)])
def test_auto_picks_the_fewest_residues_then_the_most_bits(cancer, r, p):
    x, _ = cancer
    plan = Plan.case1(7 * r + 3, r=r, p=p)
    profile = DataProfile.of(x, plan.k)
    chosen = auto_precision(plan, profile)
    assert chosen.lx >= MIN_DATA_BITS and chosen.lw >= MIN_DATA_BITS + 2
    assert check_plan(chosen, profile) <= chosen.basis.max_signed
    if chosen.residues > 1:  # one residue fewer cannot give the data its minimum bits
        fewer = chosen.with_(residues=chosen.residues - 1, lx=MIN_DATA_BITS, lw=MIN_DATA_BITS + 2, lc=MIN_DATA_BITS)
        assert plan_bound(fewer, profile) > fewer.basis.max_signed
    if chosen.lx < MAX_DATA_BITS:  # and one rung finer wraps
        finer = chosen.with_(lx=chosen.lx + 1, lw=chosen.lw + 1, lc=chosen.lc + 1)
        assert plan_bound(finer, profile) > chosen.basis.max_signed


@pytest.mark.parametrize("m, d", [(455, 31), (361, 65), (50_000, 101), (200_000, 101), (1_000_000, 1001)])
@pytest.mark.parametrize("scaling", ["standard", "minmax"])
@pytest.mark.parametrize("r", [0, 1])
def test_automatic_precision_gives_the_data_at_least_8_fractional_bits(m, d, scaling, r):
    plan = auto_precision(Plan.case1(10, r=r), public_profile(scaling, m, d))
    assert plan.lx >= 8 and plan.lw >= 10
    assert plan.residues <= MAX_RESIDUES


def test_auto_explains_when_nothing_fits(cancer):
    x, _ = cancer
    plan = Plan.case1(10, weight_bound=1e6)
    with pytest.raises(OverflowError, match=r"can wrap around 1 residue .*Leave --residues unset.*2147483647"):
        auto_precision(plan, DataProfile.of(x * 100, plan.k), residues=1)


@pytest.mark.parametrize("residues", [1, 2, 3])
def test_the_bound_holds_on_every_decoded_value(cancer, residues):
    x, y = cancer
    plan = Plan.case1(10, iterations=30)
    plan = auto_precision(plan, DataProfile.of(x, plan.k), residues=residues) if residues > 1 else plan
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=3))
    largest = run_rounds(trainer, 30)
    assert 0 < largest <= plan_bound(trainer.plan, trainer.profile) <= trainer.basis.max_signed


@pytest.mark.parametrize("residues", [2, 3])
def test_residues_decode_to_the_exact_integer_gradient_beyond_one_prime(cancer, residues):
    x, y = cancer
    plan = auto_precision(Plan.case1(10, iterations=2), DataProfile.of(x, 3), residues=residues)
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=0))
    trainer.weights = trainer.previous = np.full(x.shape[1], 0.7)
    shares = trainer.encode_dataset()
    w_shares = trainer.weight_shares()
    wbar = trainer.quantized_weights()
    replies = replies_for(trainer, shares, w_shares, range(plan.n_workers - 1, plan.n_workers - 1 - plan.threshold, -1))
    decoded = trainer.basis.combine(trainer.decode_sums(replies))
    truth = exact_gradient_sum(trainer, wbar)
    assert [int(v) for v in decoded] == [int(v) for v in truth]
    assert max(abs(int(v)) for v in truth) > trainer.schemes[0].field.max_signed  # one prime alone would wrap


def test_without_the_guard_values_wrap_and_the_gradient_is_garbage(cancer, monkeypatch):
    x, y = cancer
    plan = Plan.case1(10, lx=12, lw=14, lc=12, iterations=2, learning_rate=0.1)
    # Remove the protection: the plan check and the per-round check.
    monkeypatch.setattr(run_module, "check_plan", lambda plan, profile: 0.0)
    monkeypatch.setattr(run_module, "decoded_bound", lambda *args: 0.0)
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=0))
    trainer.weights = trainer.previous = np.full(x.shape[1], 0.7)
    shares = trainer.encode_dataset()
    w_shares = trainer.weight_shares()
    wbar = trainer.quantized_weights()
    replies = replies_for(trainer, shares, w_shares, range(plan.threshold))
    decoded = trainer.basis.combine(trainer.decode_sums(replies))
    # The true integer X̄ᵀ s̄ computed with Python ints differs: the field wrapped.
    truth = exact_gradient_sum(trainer, wbar)
    assert any(int(a) != int(b) for a, b in zip(decoded, truth))
    assert max(abs(int(v)) for v in truth) > trainer.basis.max_signed


# --- the exact sigmoid (r = 0): the products X̄w̄ and the gradient X̄ᵀē are both decoded and lifted -----------


def exact_exchanges(trainer, shares, workers):
    """One round of the exact sigmoid in-process: the decoded products and X̄ᵀē as Python ints; the round ends."""
    coefficients = trainer.job_spec.coefficient_array()
    w = trainer.weight_shares()
    replies = {i: worker_step(trainer.basis, shares[i], w[i], coefficients, 0) for i in workers}
    products = trainer.basis.combine(np.stack(trainer.decode_blocks(replies)[0]).reshape(trainer.plan.residues, -1))
    e, _ = trainer.sigmoid_shares(trainer.round, replies)
    replies = {i: worker_step(trainer.basis, shares[i], e[i], coefficients, 1) for i in workers}
    gradient = trainer.basis.combine(trainer.decode_sums(replies))
    trainer.finish_round(trainer.round, replies)
    return products, gradient


def test_with_the_exact_sigmoid_the_bound_holds_on_every_decoded_value(cancer):
    x, y = cancer
    plan = auto_precision(Plan.case1(10, r=0, iterations=30), public_profile("standard", *x.shape))
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=3))
    shares = [prepare_share(trainer.basis, s) for s in trainer.encode_dataset()]
    largest = 0
    for _ in range(30):
        products, gradient = exact_exchanges(trainer, shares, range(plan.threshold))
        largest = max(largest, *(abs(int(v)) for v in products.ravel()), *(abs(int(v)) for v in gradient))
    assert 0 < largest <= plan_bound(trainer.plan, trainer.profile) <= trainer.basis.max_signed


def test_with_the_exact_sigmoid_and_no_guard_the_products_wrap(cancer, monkeypatch):
    x, y = cancer
    plan = Plan.case1(10, r=0, residues=1, lx=12, lw=14, lc=12, iterations=2, learning_rate=0.1)
    with pytest.raises(OverflowError, match="they would wrap"):
        CodedTrainer.create(RunInputs(plan, x, y, seed=0))
    # Remove the protection: the plan check and the per-round checks of both exchanges.
    monkeypatch.setattr(run_module, "check_plan", lambda plan, profile: 0.0)
    monkeypatch.setattr(run_module, "products_bound", lambda *args: 0.0)
    monkeypatch.setattr(run_module, "sigmoid_gradient_bound", lambda *args: 0.0)
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=0))
    trainer.weights = trainer.previous = np.full(x.shape[1], 0.7)
    shares = [prepare_share(trainer.basis, s) for s in trainer.encode_dataset()]
    wbar = trainer.quantized_weights()[:, 0]
    products, _ = exact_exchanges(trainer, shares, range(plan.threshold))
    truth = trainer.partitions.reshape(-1, x.shape[1]).astype(object) @ wbar.astype(object)
    assert any(int(a) != int(b) for a, b in zip(products.ravel(), truth))  # the field wrapped
    assert max(abs(int(v)) for v in truth) > trainer.basis.max_signed

"""Accountant: calibration against independent dp_accounting computations and the exact curve."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from scipy.stats import norm

from cpml.dp.accountant import (
    Accounting,
    Budget,
    BudgetExceeded,
    PrivacyLedger,
    Step,
    calibrate_noise_multiplier,
    delta_spent,
    epsilon_spent,
)

DELTA = 1e-5


def exact_gaussian_delta(z: float, steps: int, epsilon: float) -> float:
    """Balle-Wang exact delta(epsilon) of `steps` replace-one Gaussian steps (shift 2G, std zG)."""
    mu = math.sqrt(steps) * 2.0 / z
    return norm.cdf(mu / 2 - epsilon / mu) - math.exp(epsilon) * norm.cdf(-mu / 2 - epsilon / mu)


def independent_epsilon(z: float, steps: int, q: float, accounting: Accounting) -> float:
    """Epsilon straight from dp_accounting (default settings), without the project's wrapper."""
    if accounting is Accounting.RDP:
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(z / 2.0), steps)
    else:
        accountant = PLDAccountant(NeighboringRelation.REPLACE_ONE)
        event = dp_accounting.GaussianDpEvent(z)
        accountant.compose(event if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, event), steps)
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize(
    ("epsilon", "steps", "q", "requested"),
    [
        (0.5, 20, 1.0, None),
        (1.0, 100, 1.0, None),
        (4.0, 50, 1.0, None),
        (1.0, 20, 0.3, None),
        (2.0, 30, 0.1, None),
        (0.5, 20, 1.0, "rdp"),
        (1.0, 100, 1.0, "rdp"),
        (4.0, 50, 1.0, "rdp"),
    ],
)
def test_calibrated_noise_spends_the_target_epsilon(epsilon, steps, q, requested):
    accounting = Accounting.for_sampling(q, requested)
    z = calibrate_noise_multiplier(Budget(epsilon, DELTA), steps, q, accounting)
    spent = independent_epsilon(z, steps, q, accounting)
    assert spent <= epsilon * 1.001
    assert spent >= epsilon * 0.98  # not wastefully loose either
    # Slightly less noise must overspend: the calibration is the smallest z that fits.
    assert independent_epsilon(z * 0.97, steps, q, accounting) > epsilon
    if q == 1.0:  # and it is a true bound on the exact replace-one Gaussian curve
        assert exact_gaussian_delta(z, steps, epsilon) <= DELTA * 1.001


@pytest.mark.parametrize(("z", "steps"), [(4.0, 10), (30.0, 100), (100.0, 400)])
def test_full_batch_epsilon_bounds_the_exact_gaussian_curve(z, steps):
    for accounting in (Accounting.RDP, Accounting.PLD):
        eps = epsilon_spent({Step(z): steps}, DELTA, accounting)
        # Upper bounds on the true curve: at the reported epsilon the exact delta is <= DELTA ...
        assert exact_gaussian_delta(z, steps, eps) <= DELTA * 1.001
    # ... and PLD is nearly tight: 2% less epsilon already needs more than DELTA.
    eps_pld = epsilon_spent({Step(z): steps}, DELTA, Accounting.PLD)
    assert exact_gaussian_delta(z, steps, 0.98 * eps_pld) > DELTA


def test_replace_one_is_twice_the_add_remove_shift():
    # If the RDP path forgot the factor 2 it would report far less than the exact curve.
    eps = epsilon_spent({Step(10.0): 50}, DELTA, Accounting.RDP)
    assert exact_gaussian_delta(10.0, 50, eps) <= DELTA
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(10.0), 50)
    assert exact_gaussian_delta(10.0, 50, accountant.get_epsilon(DELTA)) > DELTA


@pytest.mark.parametrize(
    ("steps", "q", "requested"),
    [({Step(8.0): 30}, 1.0, None), ({Step(8.0): 30}, 1.0, "rdp"), ({Step(2.0, 0.2): 20}, 0.2, None)],
)
def test_epsilon_delta_epsilon_round_trips(steps, q, requested):
    accounting = Accounting.for_sampling(q, requested)
    for eps in (0.5, 2.0):
        delta = delta_spent(steps, eps, accounting)
        assert 0 < delta < 1
        assert epsilon_spent(steps, delta, accounting) == pytest.approx(eps, rel=0.02)


def test_mixed_steps_compose_like_the_accountant():
    steps = {Step(20.0): 10, Step(12.0): 5}
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(10.0), 10)
    accountant.compose(dp_accounting.GaussianDpEvent(6.0), 5)
    assert epsilon_spent(steps, DELTA, Accounting.RDP) == pytest.approx(accountant.get_epsilon(DELTA), rel=0.01)


def test_ledger_refuses_before_changing_state():
    budget = Budget(1.0, DELTA)
    z = calibrate_noise_multiplier(budget, 10, 1.0, Accounting.RDP)
    ledger = PrivacyLedger(budget, Accounting.RDP)
    for _ in range(10):
        ledger.charge(Step(z))
    spent = ledger.epsilon()
    assert spent <= 1.0
    with pytest.raises(BudgetExceeded, match="budget 1"):
        ledger.charge(Step(z))
    assert ledger.steps == 10
    assert ledger.epsilon() == spent


def test_poisson_sampling_needs_pld():
    with pytest.raises(ValueError, match="Argument 'accountant' must be 'pld'"):
        Accounting.for_sampling(0.1, "rdp")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0.0, "delta": 1e-5}, "Argument 'epsilon' must be a positive finite number"),
        ({"epsilon": 1.0, "delta": 1.0}, "Argument 'delta' must lie in (0, 1), not 1.0."),
    ],
)
def test_budget_validates(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Budget(**kwargs)


def test_full_batches_default_to_pld_which_needs_less_noise_for_the_same_guarantee():
    # The default run (50 rounds at epsilon 1, delta 1e-5): RDP over-reports, so it asked for 8% more
    # noise than the replace-one guarantee needs. PLD with REPLACE_ONE is a true bound on the exact
    # curve of the Gaussian mechanism shifted by 2G, and within 0.1% of it.
    budget = Budget(1.0, DELTA)
    assert Accounting.for_sampling(1.0) is Accounting.PLD
    z_pld = calibrate_noise_multiplier(budget, 50, 1.0, Accounting.PLD)
    z_rdp = calibrate_noise_multiplier(budget, 50, 1.0, Accounting.RDP)
    assert z_pld <= 0.93 * z_rdp
    assert exact_gaussian_delta(z_pld, 50, 1.0) <= DELTA
    assert exact_gaussian_delta(z_pld * 0.99, 50, 1.0) > DELTA


@pytest.mark.parametrize("z", [5.0, 14.8, 30.0])
def test_rdp_epsilon_uses_every_default_order_of_dp_accounting(z):
    # The order grid once dropped 90 of dp_accounting's 156 default orders (1.1, 2.5, 10.9, ...), so a
    # small party's epsilon came out above what dp_accounting's own default grid proves.
    accountant = dp_accounting.rdp.RdpAccountant()  # the default orders
    accountant.compose(dp_accounting.GaussianDpEvent(z / 2.0), 50)
    assert epsilon_spent({Step(z): 50}, DELTA, Accounting.RDP) <= accountant.get_epsilon(DELTA) * (1 + 1e-12)

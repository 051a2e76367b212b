"""Privacy accounting on dp_accounting: calibration, epsilon spent, and a budget that refuses.

Neighbouring relation: replace-one (record counts are public, so n is fixed). A step is the
Gaussian mechanism on a sum of per-record gradients clipped to G, with noise N(0, (z G)^2),
optionally on a Poisson-sampled batch with rate q. Replacing a record moves the sum by at
most 2G, so:
- PLD (the default, full batches and Poisson sampling alike): PLDAccountant(REPLACE_ONE) with
  GaussianDpEvent(z). dp_accounting builds the REPLACE adjacency's privacy loss from the noise
  shifted left and right by the sensitivity, i.e. "the same privacy loss distribution with twice
  the sensitivity" at q = 1 (privacy_loss_mechanism.AdditiveNoisePrivacyLoss); with pessimistic
  rounding every epsilon is an upper bound, and it is nearly tight (for the default run it needs
  8% less noise than RDP for the same (epsilon, delta));
- RDP (`--accountant rdp`, full batches only): dp_accounting's RdpAccountant treats
  GaussianDpEvent(m) as N(0, m^2) against N(1, m^2) whatever neighbouring relation it is given,
  so we pass m = z / 2; it has no replace-one bound for Poisson sampling.
Tests check the two paths agree with each other and with the exact Gaussian-mechanism curve.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import dp_accounting
import numpy as np
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation, PrivacyAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

import cpml.errors as errors
from cpml.errors import argument_error

# Order grid: every one of dp_accounting's default orders, plus denser low orders (which matter
# for large noise) and every integer up to 256. More orders can only lower the reported epsilon.
_RDP_ORDERS = tuple(
    sorted(
        {float(a) for a in DEFAULT_RDP_ORDERS}
        | {float(a) for a in np.round(np.concatenate([np.linspace(1.01, 1.99, 50), np.arange(2, 257)]), 4)}
    )
)
# The rough calibration of Poisson-sampled steps uses integer orders only: dp_accounting's series
# for fractional orders fails to converge for large q and logs a warning per order it drops.
_INTEGER_ORDERS = tuple(a for a in _RDP_ORDERS if a == int(a))
# Pessimistic rounding keeps every PLD epsilon an upper bound; 1e-3 is 8x faster than
# dp_accounting's 1e-4 default and moves epsilon by about 1e-4 at our sizes.
_PLD_DISCRETISATION = 1e-3


class Accounting(str, Enum):
    """Which dp_accounting accountant composes the steps."""

    RDP = "rdp"
    PLD = "pld"

    @classmethod
    def for_sampling(cls, sampling_rate: float, requested: str | None = None) -> Accounting:
        """PLD unless RDP is asked for (which only full batches allow)."""
        if sampling_rate < 1.0:
            if requested == cls.RDP.value:
                raise argument_error(
                    "accountant", "be 'pld' with Poisson sampling (RDP has no replace-one subsampled bound)", requested
                )
            return cls.PLD
        return cls(requested) if requested else cls.PLD


@dataclass(frozen=True)
class Budget:
    """A target (epsilon, delta)."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.epsilon) and self.epsilon > 0):
            raise argument_error("epsilon", "be a positive finite number", self.epsilon)
        if not 0 < self.delta < 1:
            raise argument_error("delta", "lie in (0, 1)", self.delta)


@dataclass(frozen=True)
class Step:
    """One noisy gradient step: noise multiplier z and Poisson sampling rate q (1 = full)."""

    noise_multiplier: float
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise argument_error("noise_multiplier", "be a positive number", self.noise_multiplier)
        if not 0 < self.sampling_rate <= 1:
            raise argument_error("sampling_rate", "lie in (0, 1]", self.sampling_rate)


def step_event(step: Step, accounting: Accounting) -> dp_accounting.DpEvent:
    """The dp_accounting event for one step under replace-one, for the given accountant."""
    if accounting is Accounting.RDP:
        if step.sampling_rate < 1.0:
            raise argument_error("accounting", "be PLD for a Poisson-sampled step", accounting)
        return dp_accounting.GaussianDpEvent(step.noise_multiplier / 2.0)
    gaussian = dp_accounting.GaussianDpEvent(step.noise_multiplier)
    if step.sampling_rate < 1.0:
        return dp_accounting.PoissonSampledDpEvent(step.sampling_rate, gaussian)
    return gaussian


def fresh_accountant(accounting: Accounting) -> PrivacyAccountant:
    """A new, empty dp_accounting accountant of the given kind."""
    if accounting is Accounting.RDP:
        return RdpAccountant(orders=_RDP_ORDERS)
    return PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=_PLD_DISCRETISATION)


def composed_event(steps: Counter[Step] | dict[Step, int], accounting: Accounting) -> dp_accounting.DpEvent:
    """One event for a multiset of steps: each distinct step self-composed by its count."""
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(step_event(step, accounting), count)
            for step, count in sorted(steps.items(), key=lambda kv: (kv[0].noise_multiplier, kv[0].sampling_rate))
            if count > 0
        ]
    )


def epsilon_spent(steps: dict[Step, int], delta: float, accounting: Accounting) -> float:
    """Epsilon at `delta` after composing `steps` (step -> count)."""
    return _epsilon_cached(tuple(sorted(steps.items(), key=_key)), delta, accounting)


def delta_spent(steps: dict[Step, int], epsilon: float, accounting: Accounting) -> float:
    """Delta at `epsilon` after composing `steps` (step -> count)."""
    if not steps:
        return 0.0
    accountant = fresh_accountant(accounting)
    accountant.compose(composed_event(steps, accounting))
    return float(accountant.get_delta(epsilon))


def calibrate_noise_multiplier(budget: Budget, steps: int, sampling_rate: float, accounting: Accounting) -> float:
    """Smallest z (to ~0.1%; per-step std >= 0.5) whose `steps` compositions fit the budget."""
    if steps < 1:
        raise argument_error("steps", "be at least 1", steps)

    def eps(z: float) -> float:
        return epsilon_spent({Step(z, sampling_rate): steps}, budget.delta, accounting)

    # Bracket by hand around a cheap guess: the PLD of a near-noiseless Gaussian needs
    # terabytes, so the search never goes below a per-step standard deviation of 0.5.
    floor = 0.5 * (np.sqrt(steps) if sampling_rate == 1.0 else 1.0)
    lower = upper = max(floor, _rough_guess(budget, steps, sampling_rate))
    if eps(lower) > budget.epsilon:
        upper = 2.0 * lower
        while eps(upper) > budget.epsilon:
            lower, upper = upper, 2.0 * upper
    else:
        while lower > floor and eps(lower) <= budget.epsilon:
            lower, upper = max(floor, lower / 2.0), lower
        if eps(lower) <= budget.epsilon:
            return lower
    z = float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: fresh_accountant(accounting),
            lambda z: dp_accounting.SelfComposedDpEvent(step_event(Step(z, sampling_rate), accounting), steps),
            budget.epsilon,
            budget.delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(lower, upper),
            tol=1e-3 * lower,
        )
    )
    # calibrate_dp_mechanism returns the conservative end of its final bracket; make sure.
    while eps(z) > budget.epsilon:
        z *= 1.001
    return z


def _rough_guess(budget: Budget, steps: int, sampling_rate: float) -> float:
    """A fast starting point: RDP add/remove calibration (replace-one needs at least this)."""
    # The events of step_event: a full batch's under RDP (add/remove with twice the shift), a sampled one's under PLD.
    events = Accounting.RDP if sampling_rate == 1.0 else Accounting.PLD
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: RdpAccountant(orders=_INTEGER_ORDERS),
            lambda z: dp_accounting.SelfComposedDpEvent(step_event(Step(z, sampling_rate), events), steps),
            budget.epsilon,
            budget.delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-3,
        )
    )


class BudgetExceeded(errors.CpmlError, RuntimeError):
    """A step would take the guarantee past its budget; nothing was charged."""


class PrivacyLedger:
    """One guarantee's running account: charges steps and, if `enforce`, refuses overspending."""

    def __init__(
        self, budget: Budget, accounting: Accounting, enforce: bool = True, charged: dict[Step, int] | None = None
    ) -> None:
        self.budget = budget
        self.accounting = accounting
        self.enforce = enforce
        self._steps: Counter[Step] = Counter(charged or {})

    def charged(self) -> dict[Step, int]:
        """Every step charged so far, with its count (a checkpoint restores from this)."""
        return dict(self._steps)

    @property
    def steps(self) -> int:
        """How many steps have been charged."""
        return sum(self._steps.values())

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at `delta` (default: the budget's delta)."""
        delta = self.budget.delta if delta is None else delta
        return epsilon_spent(dict(self._steps), delta, self.accounting)

    def epsilon_if(self, step: Step, count: int = 1) -> float:
        """Epsilon this ledger would show after also charging `count` x `step`."""
        trial = Counter(self._steps)
        trial[step] += count
        return epsilon_spent(dict(trial), self.budget.delta, self.accounting)

    def check(self, step: Step, count: int = 1) -> None:
        """Raise BudgetExceeded if charging `count` x `step` would overspend an enforced budget."""
        if not self.enforce:
            return
        eps = self.epsilon_if(step, count)
        if eps > self.budget.epsilon:
            raise BudgetExceeded(
                f"Charging {count} more step(s) at noise multiplier {step.noise_multiplier:.4g} would spend epsilon"
                f" {eps:.4f} > budget {self.budget.epsilon:g} (delta {self.budget.delta:g}); stopping here."
            )

    def charge(self, step: Step, count: int = 1) -> None:
        """Record `count` x `step`, after `check` (nothing is recorded if it raises)."""
        self.check(step, count)
        self._steps[step] += count


def _key(item: tuple[Step, int]) -> tuple[float, float]:
    return (item[0].noise_multiplier, item[0].sampling_rate)


@lru_cache(maxsize=4096)
def _epsilon_cached(items: tuple[tuple[Step, int], ...], delta: float, accounting: Accounting) -> float:
    if not items:
        return 0.0
    accountant = fresh_accountant(accounting)
    accountant.compose(composed_event(dict(items), accounting))
    return float(accountant.get_epsilon(delta))

"""T-privacy of the baselines (chi-square tests over a tiny field, many independent trials at once).

Each test runs twice: with CSPRNG randomness, what T colluders see must be uniform and independent of
the data; with the masking randomness replaced by zeros (in the test only), the same test must see the leak.
"""

import numpy as np
import pytest
from scipy import stats

from cpml.field import PrimeField, uniform
from cpml.mpc import MASTER, Kind, Message, MpcParty, PartySpec, party_points, share

P = 31
FIELD = PrimeField(P)
TRIALS = 30_000


def zero_masks(field, shape):
    return np.zeros(shape, dtype=np.uint32)


def joint_counts(*columns: np.ndarray) -> np.ndarray:
    cells = np.zeros(columns[0].size, dtype=np.int64)
    for column in columns:
        cells = cells * P + column.ravel().astype(np.int64)
    return np.bincount(cells, minlength=P ** len(columns))


def datasets(rng):
    return {"zeros": np.zeros(TRIALS, dtype=np.uint32), "random": rng.integers(0, P, TRIALS).astype(np.uint32)}


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize(("t", "colluders"), [(1, (0,)), (2, (0, 4)), (2, (1, 2))])
def test_any_t_shamir_shares_are_uniform_and_independent_of_the_data(masked, t, colluders):
    source = uniform if masked else zero_masks
    tables = []
    for secret in datasets(np.random.default_rng(1)).values():
        shares = share(FIELD, secret, t, party_points(2 * t + 1), source)
        tables.append(joint_counts(*(shares[c] for c in colluders)))
    uniform_p = stats.chisquare(tables[0]).pvalue
    same_p = stats.chi2_contingency(np.array(tables) + 1).pvalue
    if masked:
        assert uniform_p > 1e-4 and same_p > 1e-4
    else:
        assert uniform_p < 1e-12 and same_p < 1e-12


def run_group(protocol: str, x: np.ndarray, w: int, party_masks) -> dict[int, list[Message]]:
    """One round of a T=1 group (3 parties, d=1, r=1) on TRIALS rows; returns what each party received."""
    spec = dict(protocol=protocol, p=P, t=1, group_size=3, first=0, rows=x.size, d=1, r=1,
                coefficients=(0, 1), start_round=0, rounds=1)
    parties = [MpcParty(PartySpec(position=i, **spec), party_masks) for i in range(3)]
    points = party_points(3)
    data = share(FIELD, x.reshape(-1, 1), 1, points)  # the master's own sharing is always masked
    weights = share(FIELD, np.array([[w]], dtype=np.uint32), 1, points)
    pending = [m for party in parties for m in party.start()]
    pending += [Message(MASTER, i, Kind.DATA, 0, 0, data[i]) for i in range(3)]
    pending += [Message(MASTER, i, Kind.WEIGHTS, 0, 0, weights[i]) for i in range(3)]
    seen: dict[int, list[Message]] = {i: [] for i in range(3)}
    while pending:
        message = pending.pop(0)
        if message.receiver != MASTER:
            seen[message.receiver].append(message)
            pending += parties[message.receiver].handle(message)
    return seen


def view_of_party_0(protocol: str, seen: list[Message]) -> tuple[np.ndarray, np.ndarray]:
    """Two worker-to-worker values party 0 (the round-0 king in BH08) receives for every row."""
    if protocol == "bgw":
        got = {m.sender: m.payload for m in seen if m.kind is Kind.RESHARE}
        return got[1], got[2]
    masked = {m.sender: m.payload for m in seen if m.kind is Kind.MASKED}
    return masked[1], masked[2]


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
def test_what_a_party_receives_during_multiplication_is_uniform_and_independent_of_the_data(protocol):
    tables = []
    for x in datasets(np.random.default_rng(2)).values():
        a, b = view_of_party_0(protocol, run_group(protocol, x, 5, uniform)[0])
        tables.append(joint_counts(a, b))
    assert stats.chisquare(tables[0]).pvalue > 1e-4
    assert stats.chi2_contingency(np.array(tables) + 1).pvalue > 1e-4


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
def test_the_same_test_catches_the_leak_when_the_parties_randomness_is_zeroed(protocol):
    # Zero resharing coefficients (BGW) or zero double sharings (BH08): party 0 sees product shares.
    tables = []
    for x in datasets(np.random.default_rng(2)).values():
        a, b = view_of_party_0(protocol, run_group(protocol, x, 5, zero_masks)[0])
        tables.append(joint_counts(a, b))
    assert stats.chisquare(tables[0]).pvalue < 1e-12
    assert stats.chi2_contingency(np.array(tables) + 1).pvalue < 1e-12


@pytest.mark.parametrize("masked", [True, False])
def test_the_value_the_bh08_king_opens_is_masked_by_rho(masked):
    tables = []
    for x in datasets(np.random.default_rng(3)).values():
        seen = run_group("bh08", x, 5, uniform if masked else zero_masks)
        opened = next(m.payload for m in seen[1] if m.kind is Kind.OPENED)
        own_share = next(m.payload for m in seen[1] if m.kind is Kind.DATA)
        tables.append(joint_counts(opened, own_share))
    uniform_p = stats.chisquare(tables[0]).pvalue
    same_p = stats.chi2_contingency(np.array(tables) + 1).pvalue
    if masked:
        assert uniform_p > 1e-4 and same_p > 1e-4
    else:
        assert uniform_p < 1e-12 and same_p < 1e-12

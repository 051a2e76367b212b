"""T-privacy of the baselines (chi-square tests over tiny fields, many independent trials at once).

The baselines run in two residue fields here, F_31 and F_29, as they do in training (in larger primes).
Each test runs twice: with CSPRNG randomness, what T colluders see must be uniform and independent of
the data in every field; with the masking randomness replaced by zeros (in the test only), the same test
must see the leak in every field. Zeroing the randomness of one field only leaks in that field: each
field is masked by its own randomness.
"""

import numpy as np
import pytest
from helpers_privacy import zero_masks
from scipy import stats

from cpml.field import ResidueBasis, uniform
from cpml.mpc import MASTER, Kind, Message, MpcParty, PartySpec, party_points
from cpml.mpc.shamir import share_residues

BASIS = ResidueBasis((31, 29))
MODULI = BASIS.moduli
TRIALS = 30_000


def zero_masks_in(p):
    """Randomness that is uniform in every field but F_p, where it is zero."""
    return lambda field, shape: zero_masks(field, shape) if field.p == p else uniform(field, shape)


def joint_counts(moduli: tuple[int, ...], *columns: np.ndarray) -> np.ndarray:
    """Counts of the tuples (column_1[i], ...), column k holding elements of F_(moduli[k])."""
    cells = np.zeros(columns[0].size, dtype=np.int64)
    for p, column in zip(moduli, columns):
        cells = cells * p + column.ravel().astype(np.int64)
    return np.bincount(cells, minlength=int(np.prod(moduli)))


def datasets(rng):
    """The residues (2, TRIALS) of an all-zero and of a random dataset."""
    return {
        "zeros": BASIS.residues(np.zeros(TRIALS, dtype=np.int64)),
        "random": BASIS.residues(rng.integers(0, BASIS.product, TRIALS)),
    }


def uniform_and_data_independent(tables: list[np.ndarray]) -> tuple[float, float]:
    """p-values: the first table is uniform; the tables (one per dataset) have the same distribution."""
    return stats.chisquare(tables[0]).pvalue, stats.chi2_contingency(np.array(tables) + 1).pvalue


def assert_private(p_values: tuple[float, float]) -> None:
    assert min(p_values) > 1e-4, p_values


def assert_leaks(p_values: tuple[float, float]) -> None:
    assert max(p_values) < 1e-12, p_values


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize(("t", "colluders"), [(1, (0,)), (2, (0, 4)), (2, (1, 2))])
def test_any_t_shamir_shares_are_uniform_and_independent_of_the_data_in_every_field(masked, t, colluders):
    source = uniform if masked else zero_masks
    per_field: list[list[np.ndarray]] = [[] for _ in MODULI]
    across: list[np.ndarray] = []
    for secret in datasets(np.random.default_rng(1)).values():
        shares = share_residues(BASIS, secret, t, party_points(2 * t + 1), source)  # (n, residues, TRIALS)
        for j, p in enumerate(MODULI):
            per_field[j].append(joint_counts((p,) * len(colluders), *(shares[c, j] for c in colluders)))
        across.append(joint_counts(MODULI, shares[colluders[0], 0], shares[colluders[0], 1]))
    for tables in (*per_field, across):  # each field, and one colluder's pair of residues
        (assert_private if masked else assert_leaks)(uniform_and_data_independent(tables))


def run_group(protocol: str, x: np.ndarray, w: int, party_masks) -> dict[int, list[Message]]:
    """One round of a T=1 group (3 parties, d=1, r=1) on TRIALS rows in both fields; what each party received."""
    spec = dict(
        protocol=protocol,
        moduli=MODULI,
        t=1,
        group_size=3,
        first=0,
        rows=x.shape[1],
        d=1,
        r=1,
        coefficients=((0, 1), (0, 1)),
        start_round=0,
        rounds=1,
    )
    parties = [MpcParty(PartySpec(position=i, **spec), party_masks) for i in range(3)]
    points = party_points(3)
    data = share_residues(BASIS, x.reshape(len(MODULI), -1, 1), 1, points)  # the master's own sharing: masked
    weights = share_residues(BASIS, BASIS.residues(np.array([[w]])), 1, points)
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
    """Two worker-to-worker payloads (residues, rows, 1) party 0 (the round-0 king in BH08) receives."""
    kind = Kind.RESHARE if protocol == "bgw" else Kind.MASKED
    got = {m.sender: m.payload for m in seen if m.kind is kind}
    return got[1], got[2]


def multiplication_views(protocol: str, masks) -> list[list[np.ndarray]]:
    """Per field: the joint counts of party 0's two received values, for the zero and the random dataset."""
    per_field: list[list[np.ndarray]] = [[] for _ in MODULI]
    for x in datasets(np.random.default_rng(2)).values():
        a, b = view_of_party_0(protocol, run_group(protocol, x, 5, masks)[0])
        for j, p in enumerate(MODULI):
            per_field[j].append(joint_counts((p, p), a[j], b[j]))
    return per_field


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
def test_what_a_party_receives_during_multiplication_is_uniform_and_independent_of_the_data(protocol):
    for tables in multiplication_views(protocol, uniform):
        assert_private(uniform_and_data_independent(tables))


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
def test_the_same_test_catches_the_leak_when_the_parties_randomness_is_zeroed(protocol):
    # Zero resharing coefficients (BGW) or zero double sharings (BH08): party 0 sees product shares.
    for tables in multiplication_views(protocol, zero_masks):
        assert_leaks(uniform_and_data_independent(tables))


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
def test_each_field_is_masked_by_its_own_randomness(protocol):
    # Zero randomness in F_29 only: F_31 stays private, F_29 leaks (no field borrows another's masks).
    first, second = multiplication_views(protocol, zero_masks_in(29))
    assert_private(uniform_and_data_independent(first))
    assert_leaks(uniform_and_data_independent(second))


@pytest.mark.parametrize("masked", [True, False])
def test_the_value_the_bh08_king_opens_is_masked_by_rho(masked):
    per_field: list[list[np.ndarray]] = [[] for _ in MODULI]
    for x in datasets(np.random.default_rng(3)).values():
        seen = run_group("bh08", x, 5, uniform if masked else zero_masks)
        opened = next(m.payload for m in seen[1] if m.kind is Kind.OPENED)
        own_share = next(m.payload for m in seen[1] if m.kind is Kind.DATA)
        for j, p in enumerate(MODULI):
            per_field[j].append(joint_counts((p, p), opened[j], own_share[j]))
    for tables in per_field:
        (assert_private if masked else assert_leaks)(uniform_and_data_independent(tables))

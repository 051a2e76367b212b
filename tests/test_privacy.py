"""T-privacy: the shares any T workers hold are jointly uniform whatever the data (chi-square tests).

Each test is run twice: with the CSPRNG masks (must look uniform and not depend on the data) and with
the masks replaced by zeros (must be caught), so the test is shown to be able to fail.

cpml carries every value as its residues modulo several primes (cpml.field.rns), masked independently in
every residue field. The multi-residue tests run the trainer's own encoding (`share_chunks`, `weight_shares`)
in tiny residue fields, where the joint distribution of what T workers hold has few cells: every residue
field alone, the pair (residue 0, residue 1) of one element (its CRT lift, uniform on Z_P), the pairs across
workers and residues, and the whole view of T workers (their CRT lifts, uniform on Z_P^T). Besides zero masks,
a mask source that draws every residue from one keystream (uniform in each field alone) must be caught by the
statistics across residues. At the real primes the same statistics are binned, and the colluders'
interpolation with the masks taken as zero must give back the data, the weights and (with the exact sigmoid,
r = 0) the sigmoid values the master encodes every round, in every residue field.
"""

import collections
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from helpers_privacy import zero_masks
from scipy import stats

from cpml.data import load_dataset
from cpml.field import PrimeField, ResidueBasis, interpolation_matrix, uniform
from cpml.protocol import CodedTrainer, CodingScheme, DataProfile, Plan, RunInputs, prepare_share, worker_step
from cpml.protocol.quantize import round_half_up
from cpml.protocol.sigmoid import sigmoid

P = 31  # a tiny field so the joint distribution of T shares has few cells: 31^2 = 961
TRIALS = 40_000
UNIFORM = 1e-6  # the multi-residue tests check ~20 statistics each: a masked run must pass them all
LEAK = 1e-12  # a broken run must be rejected at this level


def joint_counts(shares: np.ndarray, workers: tuple[int, ...]) -> np.ndarray:
    """Histogram of the T-tuples of share values held by `workers` (one tuple per trial)."""
    cells = np.zeros(len(shares[0]), dtype=np.int64)
    for w in workers:
        cells = cells * P + shares[w].astype(np.int64)
    return np.bincount(cells, minlength=P ** len(workers))


def encode_trials(secrets: np.ndarray, mask_source) -> np.ndarray:
    scheme = CodingScheme(PrimeField(P), n=10, k=2, t=2)
    return scheme.encode(secrets.astype(np.float64), mask_source)


DATASETS = {
    "zeros": lambda rng: np.zeros((2, TRIALS)),
    "random": lambda rng: rng.integers(-15, 15, (2, TRIALS)),
    "replicated weights": lambda rng: np.repeat(rng.integers(-15, 15, (1, TRIALS)), 2, axis=0),
}


@pytest.mark.parametrize("workers", [(0, 1), (3, 9), (4, 7)])
def test_any_t_shares_are_uniform_and_independent_of_the_data(workers):
    rng = np.random.default_rng(7)
    tables = []
    for make in DATASETS.values():
        counts = joint_counts(encode_trials(make(rng), uniform), workers)
        assert stats.chisquare(counts).pvalue > 1e-4
        tables.append(counts)
    # The zero dataset and the random dataset give the same distribution of T shares.
    assert stats.chi2_contingency(np.array(tables[:2])).pvalue > 1e-4


@pytest.mark.parametrize("workers", [(0, 1), (3, 9)])
def test_the_same_test_catches_the_leak_without_masks(workers):
    rng = np.random.default_rng(7)
    zeros = joint_counts(encode_trials(DATASETS["zeros"](rng), zero_masks), workers)
    random = joint_counts(encode_trials(DATASETS["random"](rng), zero_masks), workers)
    assert stats.chisquare(zeros).pvalue < 1e-12
    assert stats.chi2_contingency(np.array([zeros, random]) + 1).pvalue < 1e-12


def test_fewer_masks_than_colluders_leak():
    # T+1 colluders of a T-private code can interpolate: their joint shares depend on the data.
    rng = np.random.default_rng(3)
    scheme = CodingScheme(PrimeField(P), n=10, k=1, t=1)
    secrets_a = np.zeros((1, TRIALS))
    secrets_b = rng.integers(-15, 15, (1, TRIALS)).astype(np.float64)
    a = joint_counts(scheme.encode(secrets_a), (0, 1))
    b = joint_counts(scheme.encode(secrets_b), (0, 1))
    assert stats.chi2_contingency(np.array([a, b]) + 1).pvalue < 1e-12


def test_trainer_masks_come_from_the_csprng_and_are_fresh_per_chunk_and_per_residue():
    plan = Plan(n_workers=10, k=3, t=1, lx=2, lw=3, lc=2, p=2**25 - 39, iterations=1, learning_rate=0.1)
    assert plan.residues >= 2
    x = np.zeros((30, 4))
    trainer = CodedTrainer.create(RunInputs(plan, x, np.zeros(30), seed=0))
    assert trainer.mask_source is uniform
    chunks = list(trainer.share_chunks(5))
    assert [c.residue for c in chunks] == [j for j in range(plan.residues) for _ in range(2)]
    first, second = chunks[:2]
    # All-zero data: every share value is a mask value; fresh masks per chunk means no repeats.
    assert not np.array_equal(first.shares, second.shares)
    for pair in itertools.combinations(range(10), 2):
        assert not np.array_equal(first.shares[pair[0]], first.shares[pair[1]])
    # ... and every residue field gets its own masks (the joint tests below check their independence).
    for a, b in itertools.combinations([c for c in chunks if c.row_offset == 0], 2):
        assert not np.array_equal(a.shares, b.shares)


# --- several residue fields: exact tests in tiny fields, through the trainer's own encoding ---------------


@dataclass(frozen=True)
class Tiny:
    """A cluster shape over the two largest primes <= top: small enough to histogram the colluders' view."""

    top: int
    n: int
    k: int
    t: int
    trials: int

    @property
    def basis(self) -> ResidueBasis:
        return self.plan.basis

    @property
    def plan(self) -> Plan:
        return Plan(
            n_workers=self.n,
            k=self.k,
            t=self.t,
            lx=0,
            lw=0,
            lc=0,
            p=self.top,
            residues=2,
            iterations=1,
            learning_rate=1.0,
            weight_bound=1e9,
        )


PAIRS = Tiny(top=31, n=10, k=2, t=2, trials=TRIALS)  # moduli (31, 29): per residue 961/841 cells, pairs 899
FULL = Tiny(top=13, n=7, k=1, t=2, trials=400_000)  # moduli (13, 11): T workers' CRT lifts, 143^2 = 20449 cells


def tiny_trainer(tiny: Tiny, data: np.ndarray, weights: np.ndarray, mask_source) -> CodedTrainer:
    """A CodedTrainer over tiny residue fields holding `data` (K x d) and `weights` (d) as they are."""
    plan, d = tiny.plan, data.shape[1]
    # No gradient is decoded here, so the overflow guard (which the tiny P could never satisfy for real
    # data) gets an empty profile; the encoding is the trainer's own: residue_of, one CodingScheme per prime.
    empty = DataProfile(rows=0, d=d, max_column_norm=(0.0,), frobenius=(0.0,), max_row_norm=(0.0,))
    w = weights.astype(np.float64)  # integers: quantized with l_w = 0, stochastic rounding keeps them exact
    return CodedTrainer(
        plan=plan,
        seed=0,
        x=np.zeros((0, d)),
        y=np.zeros(0),
        x_test=None,
        y_test=None,
        weights=w,
        previous=w,
        round=0,
        profile=empty,
        partitions=data.reshape(tiny.k, 1, d).astype(np.int32),
        xty=np.zeros(d),
        coefficients=np.array([0, 0], dtype=object),
        mask_source=mask_source,
        schemes=tuple(CodingScheme(f, plan.n_workers, plan.k, plan.t) for f in plan.basis.fields),
    )


def tiny_shares(tiny: Tiny, kind: str, secrets: np.ndarray, mask_source) -> np.ndarray:
    """Every worker's shares of the secrets in every residue field: (N, residues, trials)."""
    if kind == "data":  # secrets: K x trials, one partition per row; one chunk per residue, as the master sends
        chunks = list(tiny_trainer(tiny, secrets, np.zeros(tiny.trials), mask_source).share_chunks(1))
        assert [c.residue for c in chunks] == list(range(len(tiny.basis.moduli)))
        return np.stack([c.shares[:, 0, :] for c in chunks], axis=1)
    # weights: one vector, which the trainer replicates into every partition's slot
    zeros = np.zeros((tiny.k, tiny.trials))
    return tiny_trainer(tiny, zeros, secrets[0], mask_source).weight_shares()[:, :, :, 0]


def tiny_secrets(tiny: Tiny, name: str) -> np.ndarray:
    """K x trials secrets (the weights use the first row): all zero or random in [-15, 15)."""
    if name == "zeros":
        return np.zeros((tiny.k, tiny.trials), dtype=np.int64)
    return np.random.default_rng(7).integers(-15, 15, (tiny.k, tiny.trials))


def one_keystream_for_every_residue(seed: int = 0):
    """A broken mask source: each residue field redraws the same words (uniform in every field on its own)."""
    calls: collections.Counter[int] = collections.Counter()

    def source(field: PrimeField, shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([seed, calls[field.p]])
        calls[field.p] += 1
        words = rng.integers(0, 1 << field.bits, (math.prod(shape), 16))  # rejection sampling, as `uniform`
        accepted = words < field.p
        assert accepted.any(axis=1).all()
        return words[np.arange(len(words)), accepted.argmax(axis=1)].astype(np.uint32).reshape(shape)

    return source


def histogram(columns: list[np.ndarray], sizes: tuple[int, ...]) -> np.ndarray:
    """Counts of the tuples (columns[0][i], columns[1][i], ...) over the product of `sizes` (mixed radix)."""
    cells = np.zeros(len(columns[0]), dtype=np.int64)
    for values, size in zip(columns, sizes, strict=True):
        cells = cells * size + values.astype(np.int64)
    return np.bincount(cells, minlength=math.prod(sizes))


def lift(basis: ResidueBasis, residues: np.ndarray) -> np.ndarray:
    """The CRT lift of (residues, n) as values in [0, P)."""
    return np.mod(basis.combine(residues), basis.product).astype(np.int64)


def residue_counts(basis: ResidueBasis, shares: np.ndarray, workers: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each residue field alone: the T workers' shares of one element, jointly on F_p^T."""
    a, b = workers
    return {
        f"residue {j} (p={p}), workers {a},{b}": histogram([shares[a, j], shares[b, j]], (p, p))
        for j, p in enumerate(basis.moduli)
    }


def cross_counts(basis: ResidueBasis, shares: np.ndarray, workers: tuple[int, int]) -> dict[str, np.ndarray]:
    """Across residues: (residue 0, residue 1) on F_p0 x F_p1, the CRT lift on Z_P, and across workers."""
    a, b = workers
    p0, p1 = basis.moduli
    counts = {}
    for w in workers:
        counts[f"worker {w}: (residue 0, residue 1)"] = histogram([shares[w, 0], shares[w, 1]], (p0, p1))
        counts[f"worker {w}: CRT lift"] = histogram([lift(basis, shares[w])], (basis.product,))
    counts[f"worker {a} residue 0, worker {b} residue 1"] = histogram([shares[a, 0], shares[b, 1]], (p0, p1))
    counts[f"worker {b} residue 0, worker {a} residue 1"] = histogram([shares[b, 0], shares[a, 1]], (p0, p1))
    return counts


def full_view_counts(basis: ResidueBasis, shares: np.ndarray, workers: tuple[int, int]) -> dict[str, np.ndarray]:
    """Everything T workers hold about one element: their CRT lifts, jointly on Z_P^T."""
    a, b = workers
    return {
        f"workers {a},{b}: CRT lifts": histogram(
            [lift(basis, shares[a]), lift(basis, shares[b])], (basis.product, basis.product)
        )
    }


def view_statistics(tiny: Tiny, kind: str, workers: tuple[int, int], mask_source, counts) -> dict[str, float]:
    """Chi-square p-values: each histogram against uniform (for both datasets), and zeros against random."""
    tables = {
        name: counts(tiny.basis, tiny_shares(tiny, kind, tiny_secrets(tiny, name), mask_source), workers)
        for name in ("zeros", "random")
    }
    pvalues = {}
    for what in tables["zeros"]:
        for name, table in tables.items():
            pvalues[f"{what}, {name} uniform"] = float(stats.chisquare(table[what]).pvalue)
        pair = np.array([tables["zeros"][what], tables["random"][what]]) + 1  # +1: no empty column
        pvalues[f"{what}, zeros vs random"] = float(stats.chi2_contingency(pair).pvalue)
    return pvalues


def colluder_interpolation(
    basis: ResidueBasis, shares: np.ndarray, workers: tuple[int, ...], k: int, t: int
) -> np.ndarray:
    """What the colluders get by interpolating their shares with the masks taken as 0: (residues, K, n)."""
    assert k <= len(workers), "T colluders can only interpolate K + T points when T >= K"
    out = []
    for j, field in enumerate(basis.fields):
        alphas, betas = CodingScheme(field, shares.shape[0], k, t).points  # public points
        known = tuple(alphas[w] for w in workers) + betas[k:]
        decoder = interpolation_matrix(field, known, betas[:k]).astype(np.int64)[:, : len(workers)]
        stacked = np.stack([shares[w, j].reshape(-1).astype(np.int64) for w in workers])
        out.append(((decoder @ stacked) % field.p).astype(np.uint32))  # p^2 T < 2^63
    return np.stack(out)


KINDS = ("data", "weights")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("workers", [(0, 1), (3, 9), (4, 7)])
def test_t_shares_are_uniform_in_every_residue_and_across_residues_whatever_the_data(kind, workers):
    for counts in (residue_counts, cross_counts):
        pvalues = view_statistics(PAIRS, kind, workers, uniform, counts)
        assert min(pvalues.values()) > UNIFORM, pvalues


@pytest.mark.parametrize("kind", KINDS)
def test_the_whole_view_of_t_workers_is_uniform_on_z_p_to_the_t(kind):
    pvalues = view_statistics(FULL, kind, (2, 5), uniform, full_view_counts)
    assert min(pvalues.values()) > UNIFORM, pvalues


@pytest.mark.parametrize("kind", KINDS)
def test_without_masks_every_residue_statistic_fails_and_interpolation_gives_back_the_secrets(kind):
    workers = (3, 9)
    for tiny, counts in ((PAIRS, residue_counts), (PAIRS, cross_counts), (FULL, full_view_counts)):
        pvalues = view_statistics(tiny, kind, workers if tiny is PAIRS else (2, 5), zero_masks, counts)
        assert max(pvalues.values()) < LEAK, pvalues
    secrets = tiny_secrets(PAIRS, "random")
    if kind == "weights":
        secrets = np.repeat(secrets[:1], PAIRS.k, axis=0)  # every partition's slot holds the same weights
    for masks, expect_leak in ((zero_masks, True), (uniform, False)):
        shares = tiny_shares(PAIRS, kind, secrets, masks)
        found = colluder_interpolation(PAIRS.basis, shares, workers, PAIRS.k, PAIRS.t)
        expected = PAIRS.basis.residues(secrets)
        per_residue = [np.array_equal(found[j], expected[j]) for j in range(len(PAIRS.basis.moduli))]
        recovered = np.mean(PAIRS.basis.combine(found) == secrets)
        if expect_leak:
            assert all(per_residue) and recovered == 1.0
        else:  # a chance match of both residues has probability 1/P = 1/899
            assert not any(per_residue) and recovered < 0.01


@pytest.mark.parametrize("kind", KINDS)
def test_one_keystream_in_every_residue_passes_each_field_alone_and_is_caught_across_residues(kind):
    # Each residue's masks are uniform, so every per-residue test passes; the residues of one element are
    # not independent, which only the statistics across residues can see.
    alone = view_statistics(PAIRS, kind, (3, 9), one_keystream_for_every_residue(), residue_counts)
    assert min(alone.values()) > UNIFORM, alone
    across = view_statistics(PAIRS, kind, (3, 9), one_keystream_for_every_residue(), cross_counts)
    # On random data K = 2 random partitions blur one worker's pair again; the all-zero dataset and the
    # comparison with it still expose every pair.
    assert max(v for k, v in across.items() if not k.endswith("random uniform")) < LEAK, across
    full = view_statistics(FULL, kind, (2, 5), one_keystream_for_every_residue(), full_view_counts)
    assert max(full.values()) < LEAK, full


# --- the real primes: the default plan on digits, binned -----------------------------------------------

REAL_WORKERS = (3, 8)


def binned(values: np.ndarray, modulus: int, bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, modulus) (Python-int arithmetic: P may exceed 2^63 / bins)."""
    return np.array([int(v) * bins // modulus for v in values.ravel().tolist()], dtype=np.int64)


def real_statistics(basis: ResidueBasis, shares: np.ndarray, reference: np.ndarray, bins: int) -> dict[str, float]:
    """Binned chi-square p-values of the colluders' shares (N, residues, n) in every residue and across them."""
    a, b = REAL_WORKERS
    moduli, product = basis.moduli, basis.product
    pvalues = {}

    def uniform_p(name: str, columns: list[np.ndarray], sizes: tuple[int, ...], cells: int) -> None:
        binned_columns = [binned(c, s, cells) for c, s in zip(columns, sizes, strict=True)]
        pvalues[name] = float(stats.chisquare(histogram(binned_columns, (cells,) * len(columns))).pvalue)

    def same_p(name: str, ours: np.ndarray, theirs: np.ndarray, modulus: int) -> None:
        table = np.array([np.bincount(binned(v, modulus, bins), minlength=bins) for v in (ours, theirs)])
        pvalues[name] = float(stats.chi2_contingency(table + 1).pvalue)

    for j, p in enumerate(moduli):
        both = np.concatenate([shares[a, j], shares[b, j]])
        uniform_p(f"residue {j}: uniform", [both], (p,), bins)
        uniform_p(f"residue {j}: workers {a},{b} jointly", [shares[a, j], shares[b, j]], (p, p), 16)
        same_p(f"residue {j}: vs reference", both, np.concatenate([reference[a, j], reference[b, j]]), p)
    lifts = [lift(basis, shares[w]) for w in REAL_WORKERS]
    both = np.concatenate(lifts)
    uniform_p("CRT lift: uniform on Z_P", [both], (product,), bins)
    uniform_p(f"CRT lifts: workers {a},{b} jointly", lifts, (product, product), 16)
    uniform_p(f"worker {a}: (residue 0, residue 1)", [shares[a, 0], shares[a, 1]], moduli[:2], 16)
    uniform_p(f"worker {a} residue 0, worker {b} residue 1", [shares[a, 0], shares[b, 1]], moduli[:2], 16)
    same_p("CRT lift: vs reference", both, np.concatenate([lift(basis, reference[w]) for w in REAL_WORKERS]), product)
    # Repeats: n uniform draws from Z_P almost never collide; data leaking through repeats a lot.
    n = len(both)
    pvalues["CRT lift: repeats"] = float(stats.poisson.sf(n - len(np.unique(both)) - 1, n * (n - 1) / (2 * product)))
    return pvalues


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits-4v9", scaling="standard", intercept=True, seed=0)
    plan = Plan.for_privacy(10, 2, iterations=1, learning_rate=0.1)  # default precision: 2 residues, (8, 10, 8)
    assert plan.residues == 2
    return plan, data.x_train, data.y_train


def real_trainer(digits, zero_data: bool, weights, mask_source, r: int = 1) -> CodedTrainer:
    plan, x, y = digits
    return CodedTrainer.create(
        RunInputs(
            plan.with_(r=r), np.zeros_like(x) if zero_data else x, y, seed=0, weights=weights, mask_source=mask_source
        )
    )


def sigmoid_rounds(trainer: CodedTrainer, encodings: int) -> list[np.ndarray]:
    """`encodings` encodings (fresh masks each) of the sigmoid values of one round: each (N, residues, rows, 1)."""
    shares = [prepare_share(trainer.basis, s) for s in trainer.encode_dataset()]
    coefficients = trainer.job_spec.coefficient_array()
    w = trainer.weight_shares()
    replies = {i: worker_step(trainer.basis, shares[i], w[i], coefficients, 0) for i in range(trainer.plan.n_workers)}
    return [trainer.sigmoid_shares(trainer.round, replies)[0] for _ in range(encodings)]


def real_shares(digits, kind: str, zero: bool, mask_source) -> np.ndarray:
    """(N, residues, n): the dataset's shares, or 64 encodings of one round's weights or sigmoid values."""
    if kind == "data":
        shares = real_trainer(digits, zero, None, mask_source).encode_dataset()
        return shares.reshape(*shares.shape[:2], -1)
    d = digits[1].shape[1]
    weights = np.zeros(d) if zero else np.random.default_rng(1).normal(size=d) * 0.3
    if kind == "sigmoid":  # zero weights: every sigmoid value 1/2
        rounds = np.stack(sigmoid_rounds(real_trainer(digits, False, weights, mask_source, r=0), 64), axis=2)
        return rounds.reshape(*rounds.shape[:2], -1)
    trainer = real_trainer(digits, False, weights, mask_source)
    rounds = np.stack([trainer.weight_shares() for _ in range(64)], axis=2)  # (N, residues, 64, d, r)
    return rounds.reshape(*rounds.shape[:2], -1)


REAL_KINDS = (*KINDS, "sigmoid")


@pytest.mark.parametrize("kind", REAL_KINDS)
def test_at_the_real_primes_t_shares_look_uniform_in_every_residue_and_the_control_fails(kind, digits):
    basis = digits[0].basis
    bins = 64 if kind == "data" else 16
    masked = real_statistics(
        basis, real_shares(digits, kind, False, uniform), real_shares(digits, kind, True, uniform), bins
    )
    assert min(masked.values()) > UNIFORM, masked
    unmasked = real_statistics(
        basis, real_shares(digits, kind, False, zero_masks), real_shares(digits, kind, True, zero_masks), bins
    )
    assert max(unmasked.values()) < LEAK, unmasked


@pytest.mark.parametrize("kind", REAL_KINDS)
def test_at_the_real_primes_zero_mask_interpolation_gives_back_the_data_only_without_masks(kind, digits):
    plan, x, _ = digits
    d = x.shape[1]
    weights = np.random.default_rng(1).normal(size=d) * 0.3
    for masks, expect_leak in ((zero_masks, True), (uniform, False)):
        trainer = real_trainer(digits, False, weights, masks, r=0 if kind == "sigmoid" else 1)
        if kind == "sigmoid":
            plan = trainer.plan
            shares = sigmoid_rounds(trainer, 1)[0]
            z = trainer.partitions.astype(np.float64) @ trainer.quantized_weights()[:, 0]  # exact: below 2^53
            secrets = round_half_up(np.ldexp(sigmoid(np.ldexp(z, -plan.product_scale)), plan.lc))
            secrets.reshape(-1)[x.shape[0] :] = 0  # the padding rows
        elif kind == "data":
            shares, secrets = trainer.encode_dataset(), trainer.partitions.reshape(plan.k, -1).astype(np.int64)
        else:
            shares = trainer.weight_shares()
            secrets = np.repeat(trainer.quantized_weights().reshape(1, -1), plan.k, axis=0)
        shares = shares.reshape(*shares.shape[:2], -1)
        found = colluder_interpolation(plan.basis, shares, REAL_WORKERS, plan.k, plan.t)
        expected = plan.basis.residues(secrets)
        for j in range(plan.residues):
            agree = np.mean(found[j] == expected[j])
            assert agree == 1.0 if expect_leak else agree < 1e-3, (j, agree)
        assert np.array_equal(plan.basis.combine(found).astype(np.int64), secrets) == expect_leak

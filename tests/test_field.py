"""The prime field: primality, the embedding phi, arithmetic against Python ints, CSPRNG sampling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cpml.field import DEFAULT_PRIME, PrimeField, field_for, is_prime, largest_prime_below, uniform

PRIMES = [3, 65537, DEFAULT_PRIME, 2**31 - 1]


def test_default_prime_is_the_largest_below_2_25():
    assert DEFAULT_PRIME == 2**25 - 39 == largest_prime_below(2**25)


def test_the_papers_prime_is_refused_with_the_standard_message():
    with pytest.raises(ValueError, match=r"^Argument 'p' must be prime, not 33554395\.$"):
        PrimeField(2**25 - 37)


@pytest.mark.parametrize("p", [2**31, 2**31 + 11, 2, 1, 0, -7])
def test_out_of_range_moduli_are_refused(p):
    with pytest.raises(ValueError, match="Argument 'p' must be"):
        PrimeField(p)


def test_miller_rabin_agrees_with_trial_division():
    def slow(n):
        return n >= 2 and all(n % q for q in range(2, int(n**0.5) + 1))

    for n in list(range(2000)) + list(range(2**25 - 200, 2**25)) + [561, 1105, 1729, 2465, 3215031751]:
        assert is_prime(n) == slow(n), n


def test_field_for_is_cached():
    assert field_for(65537) is field_for(65537)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PRIMES[1:]), st.lists(st.integers(-(2**29), 2**29), min_size=1, max_size=50))
def test_phi_inverse_undoes_phi(p, values):
    field = PrimeField(p)
    clipped = np.clip(np.array(values, dtype=np.int64), -field.max_signed, field.max_signed)
    encoded = field.phi(clipped)
    assert encoded.dtype == np.uint32 and np.all(encoded < p)
    assert np.array_equal(field.phi_inv(encoded), clipped)


def test_phi_matches_the_paper_on_the_boundaries():
    field = PrimeField(65537)
    half = (field.p - 1) // 2
    assert field.phi_inv(np.array([half - 1, half, field.p - 1])).tolist() == [half - 1, half - field.p, -1]


def test_phi_refuses_values_that_would_wrap():
    field = PrimeField(65537)
    with pytest.raises(OverflowError, match="without wrapping"):
        field.phi(np.array([field.max_signed + 1]))


def test_check_elements_refuses_values_outside_the_field():
    field = PrimeField(65537)
    with pytest.raises(ValueError, match=r"Argument 'x' must hold field elements in \[0, 65537\), not 65537\."):
        field.check_elements(np.array([1, 65537], dtype=np.uint32))


@pytest.mark.parametrize("p", PRIMES)
def test_arithmetic_matches_python_ints(p):
    field = PrimeField(p)
    rng = np.random.default_rng(p)
    a = rng.integers(0, p, 500).astype(np.uint32)
    b = rng.integers(1, p, 500).astype(np.uint32)
    a[:3] = [0, p - 1, p - 2]
    pa, pb = a.tolist(), b.tolist()
    assert field.add(a, b).tolist() == [(x + y) % p for x, y in zip(pa, pb)]
    assert field.sub(a, b).tolist() == [(x - y) % p for x, y in zip(pa, pb)]
    assert field.mul(a, b).tolist() == [(x * y) % p for x, y in zip(pa, pb)]
    assert field.neg(a).tolist() == [(-x) % p for x in pa]
    expected_inverse = [pow(y, p - 2, p) for y in pb]
    assert field.inv(b).tolist() == expected_inverse
    assert field.batch_inv(b).tolist() == expected_inverse


def test_zero_has_no_inverse():
    field = PrimeField(65537)
    with pytest.raises(ZeroDivisionError):
        field.batch_inv(np.array([3, 0], dtype=np.uint32))


@pytest.mark.parametrize("p", [65537, 2**31 - 1, 12582893])
def test_uniform_sampling_is_in_range_and_uniform(p):
    field = PrimeField(p)
    draws = uniform(field, (200, 500))
    assert draws.shape == (200, 500) and draws.dtype == np.uint32
    assert int(draws.max()) < p
    # 64 equal-width bins over [0, p): a chi-square test that rejects a biased sampler.
    counts = np.bincount((draws.astype(np.uint64) * 64 // p).ravel().astype(np.int64), minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_uniform_sampling_detects_modulo_bias_when_present():
    # The same chi-square test on the biased 'word % p' construction must fail: the test can fail.
    p = 12582893  # a prime just under 2^23.58: reducing 24-bit words mod p doubles the lowest third
    words = np.frombuffer(np.random.default_rng(0).bytes(4 * 100_000), dtype=np.uint32) & np.uint32(2**24 - 1)
    biased = words % np.uint32(p)
    counts = np.bincount((biased.astype(np.uint64) * 64 // p).astype(np.int64), minlength=64)
    assert stats.chisquare(counts).pvalue < 1e-6


def test_uniform_sampling_does_not_repeat():
    field = PrimeField()
    assert not np.array_equal(uniform(field, 1000), uniform(field, 1000))

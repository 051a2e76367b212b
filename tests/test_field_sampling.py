"""The mask sampler's keystream: fresh keys per call and per GiB, redraws of rejected positions."""

import numpy as np
from scipy import stats

from cpml.field import PrimeField, sampling, uniform


def chi_square_pvalue(draws: np.ndarray, p: int, bins: int = 64) -> float:
    counts = np.bincount((draws.astype(np.uint64) * bins // p).ravel().astype(np.int64), minlength=bins)
    return float(stats.chisquare(counts).pvalue)


def test_every_key_segment_and_block_is_fresh(monkeypatch):
    # Rekey every 256 bytes, one OpenSSL call per 64 bytes: segments must not repeat each other.
    monkeypatch.setattr(sampling, "_BYTES_PER_KEY", 256)
    monkeypatch.setattr(sampling, "_BLOCK_BYTES", 64)
    sampling._zeros.cache_clear()
    try:
        words = np.empty(64 * 100, dtype=np.uint32)
        sampling._fill_random(words)
        segments = words.reshape(-1, 64)  # one key each
        assert len({segment.tobytes() for segment in segments}) == len(segments)
        assert chi_square_pvalue(words, 2**32) > 1e-4
    finally:
        sampling._zeros.cache_clear()


def test_rejected_positions_are_redrawn_without_bias():
    # p just above 2^16: almost half of all 17-bit words are rejected and redrawn, several rounds deep.
    p = 65537
    draws = uniform(PrimeField(p), 200_000)
    assert int(draws.max()) < p
    assert chi_square_pvalue(draws, p) > 1e-4


def test_shapes_and_empty_draws():
    field = PrimeField()
    assert uniform(field, (3, 0, 2)).shape == (3, 0, 2)
    assert uniform(field, 5).shape == (5,)
    assert uniform(field, (2, 3)).dtype == np.uint32

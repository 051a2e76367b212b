"""Deterministic primality testing for the moduli cpml accepts."""

from __future__ import annotations

# Bases that make Miller-Rabin deterministic for every n < 3.3e24 (Sorenson & Webster, 2015).
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_DETERMINISTIC_LIMIT = 3_317_044_064_679_887_385_961_981


def is_prime(n: int) -> bool:
    """Return whether n is prime (deterministic Miller-Rabin for n < 3.3e24)."""
    if n < 2:
        return False
    for q in _WITNESSES:
        if n % q == 0:
            return n == q
    if n >= _DETERMINISTIC_LIMIT:
        raise ValueError(f"Argument 'n' must be below {_DETERMINISTIC_LIMIT}, not {n!r}.")
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def largest_prime_below(n: int) -> int:
    """Return the largest prime strictly below n."""
    candidate = n - 1
    while candidate >= 2:
        if is_prime(candidate):
            return candidate
        candidate -= 1
    raise ValueError(f"Argument 'n' must be greater than 2, not {n!r}.")

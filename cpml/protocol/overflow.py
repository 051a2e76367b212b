"""The overflow guard: a rigorous bound on every decoded value, so nothing can wrap around p.

The master decodes g_k = X̄_kᵀ s̄(X̄_k, W̄) for each partition k and needs |g_k| <= (p-3)/2 entrywise.
With z_j = X̄_k w̄_j, s̄ = sum_i c̄_i prod_{j<=i} z_j, Cauchy-Schwarz gives

    |g_k[c]| <= ||X̄_k[:, c]||_2 * ||s̄||_2,
    ||s̄||_2 <= |c̄_0| sqrt(b) + sum_{i>=1} |c̄_i| ||X̄_k||_F ||w̄_1|| prod_{2<=j<=i} (max_row ||x̄|| ||w̄_j||),

and the norms of X̄ = Round(2^lx X) are bounded from those of X by the triangle inequality (each rounding
error is at most 1/2). The weights are kept in the ball ||w||_2 <= weight_bound, and stochastic rounding
moves each coordinate by less than 1, so ||w̄_j|| <= 2^lw * weight_bound + sqrt(d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cpml.protocol.plan import Plan
from cpml.protocol.sigmoid import model_coefficients, scaled_coefficients


@dataclass(frozen=True)
class DataProfile:
    """Norms of the real data's K partitions that bound the quantized data for any l_x."""

    rows: int  # rows per partition, after padding
    d: int
    max_column_norm: tuple[float, ...]  # per partition: max_c ||X_k[:, c]||_2
    frobenius: tuple[float, ...]  # per partition: ||X_k||_F
    max_row_norm: tuple[float, ...]  # per partition: max_i ||x_i||_2

    @classmethod
    def of(cls, x: npt.NDArray[np.float64], k: int) -> DataProfile:
        """Split x into K row partitions of ceil(m/K) rows (the last zero-padded) and measure them."""
        rows = -(-x.shape[0] // k)
        parts = [x[i * rows : (i + 1) * rows] for i in range(k)]
        return cls.from_partitions([p for p in parts if p.shape[0]] or [x[:0]], rows)

    @classmethod
    def from_partitions(cls, partitions: list[npt.NDArray[np.float64]], rows: int) -> DataProfile:
        """Measure the partitions of the real data (each at most `rows` rows)."""
        d = partitions[0].shape[1]
        return cls(
            rows=rows,
            d=d,
            max_column_norm=tuple(float(np.sqrt((x * x).sum(axis=0)).max(initial=0.0)) for x in partitions),
            frobenius=tuple(float(np.sqrt((x * x).sum())) for x in partitions),
            max_row_norm=tuple(float(np.sqrt((x * x).sum(axis=1)).max(initial=0.0)) for x in partitions),
        )


def weight_norm_bound(lw: int, weight_bound: float, d: int) -> float:
    """Largest ||w̄_j||_2 a stochastic quantization of any w with ||w||_2 <= weight_bound can have."""
    return math.ldexp(weight_bound, lw) + math.sqrt(d)


def decoded_bound(
    profile: DataProfile,
    coefficients: npt.NDArray[np.int64],
    lx: int,
    quantized_weight_norms: list[float],
) -> float:
    """The largest |value| any decoded partition entry can take for these quantized weight norms."""
    b, d = profile.rows, profile.d
    worst = 0.0
    for col, frob, row in zip(profile.max_column_norm, profile.frobenius, profile.max_row_norm):
        col_q = math.ldexp(col, lx) + 0.5 * math.sqrt(b)
        frob_q = math.ldexp(frob, lx) + 0.5 * math.sqrt(b * d)
        row_q = math.ldexp(row, lx) + 0.5 * math.sqrt(d)
        s_norm = abs(int(coefficients[0])) * math.sqrt(b)
        term = frob_q
        for i in range(1, len(coefficients)):
            term = term * quantized_weight_norms[i - 1] if i == 1 else term * row_q * quantized_weight_norms[i - 1]
            s_norm += abs(int(coefficients[i])) * term
        worst = max(worst, col_q * s_norm)
    return worst


def plan_bound(plan: Plan, profile: DataProfile) -> float:
    """The decoded bound for a plan over every weight vector in its ball (inf if a coefficient cannot embed)."""
    try:
        coefficients = scaled_coefficients(
            model_coefficients(plan.model, plan.r, plan.sigmoid_interval), plan.lx, plan.lw, plan.lc
        )
    except OverflowError:
        return math.inf
    if int(np.abs(coefficients).max()) > (plan.p - 3) // 2:
        return math.inf
    w_norm = weight_norm_bound(plan.lw, plan.weight_bound, profile.d)
    return decoded_bound(profile, coefficients, plan.lx, [w_norm] * plan.r)


def check_plan(plan: Plan, profile: DataProfile) -> float:
    """Return the plan's decoded bound, or raise OverflowError explaining how to make it fit p."""
    bound = plan_bound(plan, profile)
    limit = (plan.p - 3) // 2
    if bound > limit:
        raise OverflowError(
            f"Decoded values can reach {bound:.3g} but must stay within (p-3)/2 = {limit} for p = {plan.p} "
            f"(l_x={plan.lx}, l_w={plan.lw}, l_c={plan.lc}, r={plan.r}, K={plan.k}, weight bound "
            f"{plan.weight_bound}): they would wrap around p. Lower l_x/l_w/l_c (or use quantization 'auto'), "
            f"raise K, lower the weight bound, or use a larger prime such as 2147483647."
        )
    return bound


def auto_quantization(plan: Plan, profile: DataProfile) -> Plan:
    """Return the plan with the largest safe precision ladder (l_x, l_w, l_c) = (L, L+3, L+4), L >= 0."""
    # Linear regression's coefficients (0, 1) are exact, so it climbs (L, L+3, 0) instead.
    coefficient_bits = (lambda level: 0) if plan.model == "linear" else (lambda level: level + 4)
    ladder = [(level, level + 3, coefficient_bits(level)) for level in range(16, -1, -1)]
    for lx, lw, lc in ladder:
        candidate = plan.with_(lx=lx, lw=lw, lc=lc)
        if plan_bound(candidate, profile) <= (plan.p - 3) // 2:
            return candidate
    lx, lw, lc = ladder[-1]
    coarsest = plan_bound(plan.with_(lx=lx, lw=lw, lc=lc), profile)
    raise OverflowError(
        f"Even the coarsest quantization (l_x={lx}, l_w={lw}, l_c={lc}) can wrap around p = {plan.p}: decoded "
        f"values can reach {coarsest:.3g} > (p-3)/2 = {(plan.p - 3) // 2}. Raise K (more workers), lower the "
        f"weight bound ({plan.weight_bound}), scale the features down, or use a larger prime such as 2147483647."
    )

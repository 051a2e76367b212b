"""The overflow guard: a rigorous bound on every decoded value, so nothing can wrap around P.

The master decodes g_k = X̄_kᵀ s̄(X̄_k, W̄) for each partition k, adds the K partitions in every residue
field and lifts the sum g = sum_k g_k by CRT, so it needs |g| <= (P-3)/2 entrywise, P the product of the
residue moduli. With z_j = X̄_k w̄_j, s̄ = sum_i c̄_i prod_{j<=i} z_j, Cauchy-Schwarz gives for each k

    |g_k[c]| <= ||X̄_k[:, c]||_2 * ||s̄||_2,
    ||s̄||_2 <= |c̄_0| sqrt(b) + sum_{i>=1} |c̄_i| ||X̄_k||_F ||w̄_1|| prod_{2<=j<=i} (max_row ||x̄|| ||w̄_j||),

and the norms of X̄ = Round(2^lx X) are bounded from those of X by the triangle inequality (each rounding
error is at most 1/2). The weights are kept in the ball ||w||_2 <= weight_bound, and stochastic rounding
moves each coordinate by less than 1, so ||w̄_j|| <= 2^lw * weight_bound + sqrt(d). The bound on g is the
sum of the K partitions' bounds.

With the exact sigmoid (r = 0) the master decodes two things a round, each lifted by CRT: the products
z = X̄_k w̄ entry by entry, |z_i| <= ||x̄_i||_2 ||w̄||_2, and g = sum_k X̄_kᵀ ē_k with ē = Round(2^lc s(z)) in
[0, 2^lc], so |g[c]| <= sum_k ||X̄_k[:, c]||_2 ||ē_k||_2 <= sum_k ||X̄_k[:, c]||_2 sqrt(b) 2^lc.

Workers see the precision (the residue moduli, and the levels through the sigmoid coefficients), so the
master plans it from public facts only: `public_profile` bounds the data by its shape and its scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cpml.field.rns import MAX_RESIDUES
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
    coefficients: npt.NDArray[np.object_],
    lx: int,
    quantized_weight_norms: list[float],
) -> float:
    """The largest |value| any decoded gradient entry (the sum of the K partitions) can take for these weights."""
    b, d = profile.rows, profile.d
    total = 0.0
    for col, frob, row in zip(profile.max_column_norm, profile.frobenius, profile.max_row_norm):
        col_q = math.ldexp(col, lx) + 0.5 * math.sqrt(b)
        frob_q = math.ldexp(frob, lx) + 0.5 * math.sqrt(b * d)
        row_q = math.ldexp(row, lx) + 0.5 * math.sqrt(d)
        s_norm = abs(int(coefficients[0])) * math.sqrt(b)
        term = frob_q
        for i in range(1, len(coefficients)):
            term = term * quantized_weight_norms[i - 1] if i == 1 else term * row_q * quantized_weight_norms[i - 1]
            s_norm += abs(int(coefficients[i])) * term
        total += col_q * s_norm
    return total


def _quantized_norms(profile: DataProfile, lx: int) -> list[tuple[float, float]]:
    """Per partition: bounds on max_c ||X̄_k[:, c]||_2 and max_i ||x̄_i||_2 for X̄ = Round(2^lx X)."""
    b, d = profile.rows, profile.d
    return [
        (math.ldexp(col, lx) + 0.5 * math.sqrt(b), math.ldexp(row, lx) + 0.5 * math.sqrt(d))
        for col, row in zip(profile.max_column_norm, profile.max_row_norm)
    ]


def products_bound(profile: DataProfile, lx: int, quantized_weight_norm: float) -> float:
    """The largest |x̄_i · w̄| a decoded product can take (r = 0): the row norm bound times ||w̄||."""
    return max(row_q for _, row_q in _quantized_norms(profile, lx)) * quantized_weight_norm


def sigmoid_gradient_bound(profile: DataProfile, lx: int, sigmoid_norm: float) -> float:
    """The largest |sum_k X̄_kᵀ ē_k| entry for ||ē_k||_2 <= sigmoid_norm (r = 0)."""
    return sum(col_q for col_q, _ in _quantized_norms(profile, lx)) * sigmoid_norm


def plan_bound(plan: Plan, profile: DataProfile) -> float:
    """The decoded bound for a plan over every weight vector in its ball (inf if a coefficient cannot embed)."""
    if plan.exact_sigmoid:
        w_norm = weight_norm_bound(plan.lw, plan.weight_bound, profile.d)
        sigmoid_norm = math.ldexp(math.sqrt(profile.rows), plan.lc)  # every ē_i in [0, 2^lc]
        return max(products_bound(profile, plan.lx, w_norm), sigmoid_gradient_bound(profile, plan.lx, sigmoid_norm))
    coefficients = scaled_coefficients(
        model_coefficients(plan.model, plan.r, plan.sigmoid_interval), plan.lx, plan.lw, plan.lc
    )
    w_norm = weight_norm_bound(plan.lw, plan.weight_bound, profile.d)
    return decoded_bound(profile, coefficients, plan.lx, [w_norm] * plan.r)


def check_plan(plan: Plan, profile: DataProfile) -> float:
    """Return the plan's decoded bound, or raise OverflowError explaining how to make it fit P."""
    bound = plan_bound(plan, profile)
    limit = plan.basis.max_signed
    if bound > limit:
        raise OverflowError(
            f"Decoded values can reach {bound:.3g} (2^{math.log2(bound):.1f}) but must stay within (P-3)/2 = "
            f"2^{math.log2(limit):.1f} for the {plan.residues} residue prime(s) <= {plan.p} (l_x={plan.lx}, "
            f"l_w={plan.lw}, l_c={plan.lc}, r={plan.r}, weight bound {plan.weight_bound}): they would wrap. "
            f"Use automatic precision (leave --lx/--lw/--lc unset), add residues (--residues), lower "
            f"l_x/l_w/l_c or the weight bound, or scale the features down."
        )
    return bound


MIN_DATA_BITS = 8  # fractional bits the data gets at least; the weights get two more
MAX_DATA_BITS = 16  # beyond this the quantization error is far below float64 GD's own noise


def precision_ladder(model: str, level: int) -> tuple[int, int, int]:
    """(l_x, l_w, l_c) at one rung: data L bits, weights L+2, coefficients L (none for linear regression)."""
    return level, level + 2, 0 if model == "linear" else level


def auto_precision(
    plan: Plan, profile: DataProfile, residues: int | None = None, levels: dict[str, int] | None = None
) -> Plan:
    """The fewest residues (or the given number) with at least MIN_DATA_BITS for the data, then the most bits."""
    # `levels` fixes some of l_x, l_w, l_c (the others climb the ladder); then only the residues are chosen.
    fixed = levels or {}
    rungs = [
        dict(zip(("lx", "lw", "lc"), precision_ladder(plan.model, level)), **fixed)
        for level in range(MAX_DATA_BITS, MIN_DATA_BITS - 1, -1)
    ]
    counts = range(1, MAX_RESIDUES + 1) if residues is None else (residues,)
    for count in counts:
        candidate = plan.with_(residues=count)
        limit = candidate.basis.max_signed
        for rung in rungs:
            fitted = candidate.with_(**rung)
            if plan_bound(fitted, profile) <= limit:
                return fitted
    coarsest = plan.with_(residues=counts[-1], **rungs[-1])
    need = plan_bound(coarsest, profile)
    raise OverflowError(
        f"Even l_x={coarsest.lx}, l_w={coarsest.lw}, l_c={coarsest.lc} can wrap around {counts[-1]} residue "
        f"prime(s) <= {plan.p}: decoded values can reach 2^{math.log2(need):.1f} > "
        f"2^{math.log2(coarsest.basis.max_signed):.1f}. "
        + ("Leave --residues unset to let cpml add primes, " if residues is not None else "")
        + ("leave --lx/--lw/--lc unset, " if fixed else "")
        + f"use a larger prime such as 2147483647, lower the weight bound ({plan.weight_bound}), or scale the "
        f"features (--scaling standard or minmax)."
    )


def public_profile(scaling: str, m: int, d: int) -> DataProfile | None:
    """A bound on any m x d training matrix the scaling can produce (None: 'none' scaling has no public bound)."""
    # min-max puts every entry in [0, 1]: the all-ones matrix is the worst case. Standardising makes every
    # column's squared norm m (and an intercept column of ones has the same), so ||X[:, c]|| <= sqrt(m),
    # ||X||_F <= sqrt(m d) and every row norm is at most sqrt(m d). One block of m rows bounds the sum over
    # the K partitions (Cauchy-Schwarz over k), so the profile depends on the shape alone.
    if scaling == "minmax":
        row = math.sqrt(d)
    elif scaling == "standard":
        row = math.sqrt(m * d)
    else:
        return None
    slack = 1 + 1e-9  # a standardised column's norm is sqrt(m) up to floating-point rounding
    return DataProfile(
        rows=m,
        d=d,
        max_column_norm=(slack * math.sqrt(m),),
        frobenius=(slack * math.sqrt(m * d),),
        max_row_norm=(slack * row,),
    )

"""The validated parameters of one CodedPrivateML job, and the Case 1 / Case 2 presets of the paper."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from cpml.errors import argument_error
from cpml.field.prime_field import DEFAULT_PRIME, PrimeField
from cpml.field.rns import MAX_RESIDUES, ResidueBasis, basis_for, residue_primes
from cpml.options import MODELS


def product_degree(r: int) -> int:
    """The degree of a worker's result in the shares: 2r+1 for the degree-r polynomial sigmoid, 2 for r = 0."""
    # r = 0: the workers evaluate no polynomial. They return X̃w̃ and then X̃ᵀẽ (two products of two shares),
    # and the master applies the true sigmoid in between.
    return 2 * r + 1 if r else 2


def recovery_threshold(k: int, t: int, r: int) -> int:
    """R = (2r+1)(K+T-1)+1 (2(K+T-1)+1 for r = 0): the replies that determine the workers' polynomial."""
    return product_degree(r) * (k + t - 1) + 1


def largest_k(n_workers: int, t: int, r: int) -> int:
    """The largest K with R(K, T, r) <= N, or 0 if no K >= 1 fits."""
    return max(0, (n_workers - 1) // product_degree(r) + 1 - t)


def default_weight_bound(r: int) -> float:
    """The radius of the ball the weights stay in when none is given: 16 with the exact sigmoid (r = 0), else 4."""
    return 16.0 if r == 0 else 4.0


@dataclass(frozen=True)
class Plan:
    """Everything that fixes a CodedPrivateML run: cluster shape, quantization, field and training."""

    n_workers: int
    k: int
    t: int
    r: int = 1  # the sigmoid polynomial's degree; 0: the true sigmoid, on the master between two exchanges
    lx: int = 8
    lw: int = 10
    lc: int = 8
    p: int = DEFAULT_PRIME  # the largest of the residue moduli
    residues: int = 2  # how many primes (the largest ones <= p) carry every value
    learning_rate: float | None = None
    iterations: int = 50
    model: str = "logistic"
    sigmoid_interval: float = 8.0
    # None: the default for the sigmoid (set in __post_init__). The polynomial is fitted on [-a, a], so its weights
    # stay in a small ball; the exact sigmoid has no such limit, and a ball of 4 stopped GD short on data with a
    # nearly separable class (iris: 0.900 against 0.947 at 16, scikit-learn 0.933) for one data bit at most.
    weight_bound: float = None  # type: ignore[assignment]
    byzantine: int = 0  # wrong results to correct each round: wait for R + 2A replies
    detect: bool = False  # with no correction, wait for R + 1 replies and refuse a round that disagrees

    def __post_init__(self) -> None:
        for name in ("n_workers", "k", "t", "iterations", "residues"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise argument_error(name, "be a positive integer", value)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise argument_error("r", "be a non-negative integer (0: the exact sigmoid)", self.r)
        for name in ("lx", "lw", "lc"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 24:
                raise argument_error(name, "be an integer between 0 and 24", value)
        if self.model not in MODELS:
            raise argument_error("model", f"be one of {', '.join(MODELS)}", self.model)
        if self.model == "linear" and self.r != 1:
            raise argument_error("r", "be 1 for linear regression (the gradient is exactly degree 3)", self.r)
        if self.weight_bound is None:
            object.__setattr__(self, "weight_bound", default_weight_bound(self.r))
        for name in ("sigmoid_interval", "weight_bound"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise argument_error(name, "be a positive finite number", value)
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise argument_error("learning_rate", "be a positive finite number or None (auto)", self.learning_rate)
        if isinstance(self.byzantine, bool) or not isinstance(self.byzantine, int) or self.byzantine < 0:
            raise argument_error("byzantine", "be a non-negative integer", self.byzantine)
        PrimeField(self.p)  # refuses composite or oversized moduli with the standard message
        if self.residues > MAX_RESIDUES:
            raise argument_error("residues", f"be an integer from 1 to {MAX_RESIDUES}", self.residues)
        if self.n_workers < self.threshold:
            raise ValueError(self._threshold_message())
        if self.n_workers < self.replies_needed:
            raise argument_error(
                "n_workers",
                f"be at least R + 2A{' + 1' if self.detect and not self.byzantine else ''} = "
                f"{self.replies_needed} to correct A = {self.byzantine} wrong results (R = {self.threshold}); add "
                f"workers, lower --byzantine, or lower K",
                self.n_workers,
            )
        if self.n_workers + self.k + self.t >= min(self.moduli):
            raise argument_error("p", f"exceed N + K + T = {self.n_workers + self.k + self.t}", self.p)

    @property
    def threshold(self) -> int:
        """R, the number of worker replies needed to decode a round."""
        return recovery_threshold(self.k, self.t, self.r)

    @property
    def replies_needed(self) -> int:
        """How many replies a round waits for: R, plus 2A to correct A wrong ones (or 1 to detect one)."""
        return self.replies_for(self.byzantine)

    def replies_for(self, errors: int) -> int:
        """R + 2 x errors while wrong workers may remain, else R + 1 when results are checked (else R)."""
        checking = self.detect or self.byzantine > 0
        return self.threshold + (2 * errors if errors else int(checking))

    @property
    def field(self) -> PrimeField:
        """The field of the first (largest) residue modulus, p."""
        return PrimeField(self.p)

    @property
    def moduli(self) -> tuple[int, ...]:
        """The residue moduli: the `residues` largest primes <= p."""
        return residue_primes(self.p, self.residues)

    @property
    def basis(self) -> ResidueBasis:
        """The residue number system every encoded and decoded value lives in."""
        return basis_for(self.moduli)

    @property
    def exact_sigmoid(self) -> bool:
        """Whether the master applies the true sigmoid between two exchanges a round (r = 0)."""
        return self.r == 0

    @property
    def sigmoid_label(self) -> str:
        """How the workers' function treats the sigmoid, for people: 'exact sigmoid' or 'r=<degree>'."""
        return "exact sigmoid" if self.exact_sigmoid else f"r={self.r}"

    @property
    def gradient_scale(self) -> int:
        """l = l_x + r(l_x + l_w) + l_c (l_x + l_c for r = 0): the power of two the decoded X̄ᵀs̄ carries."""
        # With r = 0, l_c is the bits of the sigmoid values ē = Round(2^l_c s(z)) the master encodes.
        return self.lx + self.r * (self.lx + self.lw) + self.lc

    @property
    def product_scale(self) -> int:
        """l_x + l_w: the power of two the decoded products X̄w̄ carry (r = 0)."""
        return self.lx + self.lw

    def with_(self, **changes: object) -> Plan:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def case1(cls, n_workers: int, r: int = 1, **kwargs: object) -> Plan:
        """Maximum parallelism: T = 1 and the largest K the threshold allows."""
        return cls.for_privacy(n_workers, 1, r, **kwargs)

    @classmethod
    def case2(cls, n_workers: int, r: int = 1, **kwargs: object) -> Plan:
        """Parallelism about equal to privacy: T = floor((N-D) / 2D), D = 2r+1 (2 for r = 0), then the largest K."""
        degree = product_degree(r)
        t = max(1, (n_workers - degree) // (2 * degree))
        return cls.for_privacy(n_workers, t, r, **kwargs)

    @classmethod
    def for_privacy(cls, n_workers: int, t: int, r: int = 1, **kwargs: object) -> Plan:
        """Given N, T and r, take the largest K the threshold allows (leaving the replies --byzantine/--detect add)."""
        checks = 2 * int(kwargs.get("byzantine", 0) or 0) or int(bool(kwargs.get("detect")))  # type: ignore[call-overload]
        k = largest_k(n_workers - checks, t, r)
        if k < 1:
            extra = f" and {checks} more to check results" if checks else ""
            raise argument_error(
                "n_workers", f"be at least {recovery_threshold(1, t, r) + checks} for T={t}, r={r}{extra}", n_workers
            )
        return cls(n_workers=n_workers, k=k, t=t, r=r, **kwargs)  # type: ignore[arg-type]

    def _threshold_message(self) -> str:
        need = self.threshold
        best_k = largest_k(self.n_workers, self.t, self.r)
        hints = [f"add workers (N >= {need})"]
        if best_k >= 1:
            hints.append(f"lower K to {best_k}")
        max_t = largest_k(self.n_workers, self.k, self.r)  # symmetric in K and T
        if 1 <= max_t < self.t:
            hints.append(f"lower T to {max_t}")
        if self.r > 1 and self.n_workers >= recovery_threshold(self.k, self.t, 1):
            hints.append("lower r")
        if self.r and self.model == "logistic" and self.n_workers >= recovery_threshold(self.k, self.t, 0):
            hints.append("use the exact sigmoid (--sigmoid exact)")
        return (
            f"Argument 'n_workers' must be at least {'2' if self.exact_sigmoid else '(2r+1)'}(K+T-1)+1 = {need} for "
            f"K={self.k}, T={self.t}, "
            f"r={self.r}, not {self.n_workers}; " + ", or ".join(hints) + "."
        )

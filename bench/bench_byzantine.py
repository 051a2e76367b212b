"""What correcting wrong results costs the master per round: the decode with --byzantine A against the plain one.

The replies of a round are one Reed-Solomon codeword per residue field (d coordinates, N workers). The script
builds such codewords for a CIFAR-shaped job (d = 3073) with K = 16, T = 1, r = 1 (R = 49, Case 1 at N = 50) and
N = R + 2A in every residue
of the automatic precision, and times, per round and over all residues: the plain decode from R replies; the
decode with A = 1 and 2 when every reply is right (one consistency product, the common case); and when A
replies are wrong (Berlekamp-Welch, then the decode from the right ones). Waiting for the 2A extra replies is a
network cost, reported by the cluster benchmarks, not here. Writes bench/results/byzantine.json.

    python bench/bench_byzantine.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from cpml.field import interpolation_matrix, matmul_mod
from cpml.protocol import CodingScheme, Plan, auto_precision, public_profile
from cpml.reporting import write_metrics

REPO = Path(__file__).resolve().parent.parent


def codeword(scheme: CodingScheme, threshold: int, d: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Replies of every worker: random values at the first R points, the rest on the same polynomial."""
    alphas, _ = scheme.points
    first = rng.integers(0, scheme.field.p, size=(threshold, d), dtype=np.uint32)
    rest = matmul_mod(
        scheme.field, interpolation_matrix(scheme.field, tuple(alphas[:threshold]), tuple(alphas[threshold:])), first
    )
    values = np.concatenate([first, rest])
    return {i: values[i] for i in range(scheme.n)}


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    """Time the three decodes and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "byzantine.json")
    args = parser.parse_args(argv)
    m, d, rng = 9019, 3073, np.random.default_rng(0)
    results = {}
    for a in (0, 1, 2):
        # K = 16, T = 1 (Case 1 at N = 50): R = 49, and N = R + 2A workers
        plan = auto_precision(Plan(n_workers=49 + 2 * a, k=16, t=1, byzantine=a), public_profile("standard", m, d))
        schemes = [CodingScheme(field, plan.n_workers, plan.k, plan.t) for field in plan.basis.fields]
        replies = [codeword(s, plan.threshold, d, rng) for s in schemes]
        order = list(rng.permutation(plan.n_workers))
        ordered = [{int(i): r[int(i)] for i in order} for r in replies]

        def plain() -> None:
            for scheme, r in zip(schemes, ordered):
                scheme.decode(r, plan.threshold)

        def checked(rs: list[dict[int, np.ndarray]]) -> None:  # what CodedTrainer.decode_round does
            for scheme, r in zip(schemes, rs):
                _, consistent = scheme.decode_checked(r, plan.threshold, 2 * a)
                if not consistent:
                    wrong = scheme.wrong_replies(r, plan.threshold, a)
                    scheme.decode({i: v for i, v in r.items() if i not in wrong}, plan.threshold)

        liars = [int(i) for i in order[:a]]  # among the first replies: the worst case for the fast check
        lying = [
            {
                i: (v if i not in liars else (v.astype(np.uint64) + 1).astype(np.uint32) % s.field.p)
                for i, v in r.items()
            }
            for s, r in zip(schemes, ordered)
        ]
        row = {
            "n_workers": plan.n_workers,
            "k": plan.k,
            "t": plan.t,
            "threshold": plan.threshold,
            "residues": plan.residues,
            "replies_read": plan.replies_needed,
            "plain_decode_seconds": timed(plain, args.repeats),
        }
        if a:
            row["decode_all_right_seconds"] = timed(lambda: checked(ordered), args.repeats)
            row["decode_with_wrong_seconds"] = timed(lambda: checked(lying), args.repeats)
            row["ratio_all_right"] = row["decode_all_right_seconds"] / row["plain_decode_seconds"]
            row["ratio_with_wrong"] = row["decode_with_wrong_seconds"] / row["plain_decode_seconds"]
        results[f"A={a}"] = row
        print(f"A={a}", row, flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "numpy": np.__version__,
        "shape": [m, d],
        "command": "python bench/bench_byzantine.py",
    }
    write_metrics(args.out, {"meta": meta, "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

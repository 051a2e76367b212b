"""What the residue number system costs and buys: one prime against the automatic count, at realistic shapes.

The protocol is the default one, the exact sigmoid (Plan r = 0, `--sigmoid exact`: two exchanges a round).
For each dataset the script plans 1 residue, 2, and the automatic count (the finest levels that fit; one
prime cannot give the data 8 fractional bits, so its levels are coarser: that is the comparison a user
faces), then times the pieces of a CodedPrivateML run in one process with N = 10 workers (Case 1):
  upload   encoding every worker's share (all residues) and the bytes one worker receives;
  round    encoding the weights; one worker's stage 0 (X w) and stage 1 (X^T e), all residues; decoding
           the first R products, the true sigmoid and encoding e with fresh masks; decoding the first R
           gradient replies + CRT; and the bytes one worker sends and receives in the round's two exchanges;
and trains 50 iterations (the in-process simulator) for the test accuracy. Float64 projected Nesterov GD
with the true sigmoid and scikit-learn's LogisticRegression on the same split are the references.
Writes bench/results/precision.json.

    python bench/bench_precision.py                      # digits 4v9, breast cancer, 50,000 x 100, CIFAR-shaped
    python bench/bench_precision.py --quick --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from cpml.protocol import (
    CodedTrainer,
    Plan,
    RunInputs,
    auto_precision,
    models,
    prepare_share,
    public_profile,
    simulate,
    worker_step,
)
from cpml.protocol.overflow import plan_bound, precision_ladder
from cpml.reporting import write_metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from synthetic import realistic_table  # noqa: E402  (the same generator the accuracy tests use)


def datasets(quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (x, y) with 0/1 labels."""
    digits = load_digits()
    keep = (digits.target == 4) | (digits.target == 9)
    cancer = load_breast_cancer()
    out = {
        "digits-4v9": (digits.data[keep], (digits.target[keep] == 9).astype(float)),
        "breast-cancer": (cancer.data, cancer.target.astype(float)),
    }
    rows = 5_000 if quick else 50_000
    out[f"realistic-{rows}x100"] = realistic_table(rows, 100, seed=1)
    if not quick:
        rng = np.random.default_rng(0)
        x = rng.random((9019, 3072), dtype=np.float32).astype(np.float64)
        score = x @ rng.choice([-1.0, 1.0], size=3072) + rng.normal(scale=0.25 * np.sqrt(3072 / 12), size=9019)
        out["cifar-shaped-9019x3073"] = (x, (score > np.median(score)).astype(float))
    return out


def prepared(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The CLI's defaults: stratified 80/20 split, standard scaling on the training split, intercept column."""
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = (np.hstack([scaler.transform(a), np.ones((len(a), 1))]) for a in (x_train, x_test))
    return x_train, y_train, x_test, y_test


WORKERS = 10
SIGMOID_R = 0  # the default protocol: the exact sigmoid (the master applies it between two exchanges)


def default_plan(**kwargs: object) -> Plan:
    """Case 1 with N = 10 and the exact sigmoid, as `cpml-master train --sigmoid exact` (the default) plans it."""
    return Plan.case1(WORKERS, r=SIGMOID_R, **kwargs)


def plan_for(residues: int, shape: tuple[int, int]) -> Plan:
    """auto_precision at this many residues; for one prime, the finest rung that fits even below 8 bits."""
    profile = public_profile("standard", *shape)
    try:
        return auto_precision(default_plan(), profile, residues=residues)
    except OverflowError:
        plan = default_plan(residues=residues)
        for level in range(7, -1, -1):
            lx, lw, lc = precision_ladder("logistic", level)
            if plan_bound(candidate := plan.with_(lx=lx, lw=lw, lc=lc), profile) <= candidate.basis.max_signed:
                return candidate
        raise


def best_of(repeats: int, fn) -> float:
    """The fastest of `repeats` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(plan: Plan, split: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Upload and per-round costs of one job at this plan, and its test accuracy after 50 iterations."""
    x_train, y_train, x_test, y_test = split
    trainer = CodedTrainer.create(RunInputs(plan, x_train, y_train, seed=0))
    assert trainer.plan.exact_sigmoid  # the round below is the exact sigmoid's two exchanges
    rows_per_chunk = max(1, (1 << 20) // (4 * x_train.shape[1]))
    upload = best_of(2, lambda: [None for _ in trainer.share_chunks(rows_per_chunk)])
    shares = trainer.encode_dataset()
    prepared_shares = [prepare_share(trainer.basis, shares[i]) for i in range(plan.threshold)]
    coefficients = trainer.job_spec.coefficient_array()
    basis, first = trainer.basis, range(plan.threshold)
    w_shares = trainer.weight_shares()
    encode_weights = best_of(5, trainer.weight_shares)
    stage0 = best_of(3, lambda: worker_step(basis, prepared_shares[0], w_shares[0], coefficients, 0))
    products = {i: worker_step(basis, prepared_shares[i], w_shares[i], coefficients, 0) for i in first}
    sigmoid = best_of(5, lambda: trainer.sigmoid_shares(trainer.round, products))
    e_shares, _ = trainer.sigmoid_shares(trainer.round, products)
    stage1 = best_of(3, lambda: worker_step(basis, prepared_shares[0], e_shares[0], coefficients, 1))
    both = best_of(
        3,
        lambda: (
            worker_step(basis, prepared_shares[0], w_shares[0], coefficients, 0),
            worker_step(basis, prepared_shares[0], e_shares[0], coefficients, 1),
        ),
    )
    replies = {i: worker_step(basis, prepared_shares[i], e_shares[i], coefficients, 1) for i in first}
    decode = best_of(5, lambda: trainer.decode_gradient(replies))
    round_bytes = w_shares[0].nbytes + products[0].nbytes + e_shares[0].nbytes + replies[0].nbytes
    result = simulate(RunInputs(plan, x_train, y_train, seed=0, x_test=x_test, y_test=y_test))
    return {
        "residues": plan.residues,
        "modulus_bits": round(plan.basis.bits, 1),
        "lx": plan.lx,
        "lw": plan.lw,
        "lc": plan.lc,
        "upload_encode_seconds": upload,
        "share_bytes_per_worker": int(shares[0].nbytes),
        "k": plan.k,
        "threshold_r": plan.threshold,
        "round_encode_weights_seconds": encode_weights,
        "round_worker_stage0_seconds": stage0,
        "round_worker_stage1_seconds": stage1,
        "round_worker_seconds": both,
        "round_sigmoid_seconds": sigmoid,
        "round_decode_seconds": decode,
        "round_master_seconds": encode_weights + sigmoid + decode,
        "round_bytes_per_worker": int(round_bytes),
        "test_accuracy": result.history[-1].test_accuracy,
    }


def references(plan: Plan, split: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Float64 projected Nesterov GD with the true sigmoid (same step) and scikit-learn, on the same split."""
    x_train, y_train, x_test, y_test = split
    rate = CodedTrainer.create(RunInputs(plan, x_train, y_train, seed=0)).plan.learning_rate
    true = models.gradient_descent(x_train, y_train, rate, 50, radius=plan.weight_bound)[-1]
    sklearn = LogisticRegression(max_iter=10_000).fit(x_train[:, :-1], y_train)
    return {
        "float64_true_sigmoid": models.accuracy(x_test, y_test, true, "logistic"),
        "sklearn": float(sklearn.score(x_test[:, :-1], y_test)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every dataset at 1 residue, 2 and the automatic count, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, to check the script")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "precision.json")
    args = parser.parse_args(argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    results: dict[str, object] = {}
    for name, (x, y) in datasets(args.quick).items():
        split = prepared(x, y)
        auto = auto_precision(default_plan(), public_profile("standard", *split[0].shape))
        runs = [measure(plan_for(count, split[0].shape), split) for count in sorted({1, 2, auto.residues})]
        results[name] = {
            "shape": list(split[0].shape),
            "automatic_residues": auto.residues,
            "runs": runs,
            "references": references(auto, split),
        }
        print(name, results[name], flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "sigmoid": "exact (Plan r = 0, the CLI's default): two exchanges a round",
        "round_note": "round_worker_seconds = one worker's stage 0 then stage 1 on its prepared share (all "
        "residues); round_sigmoid_seconds = decode the R products, the true sigmoid, encode e (fresh masks) "
        "for all N; round_decode_seconds = decode the R gradient replies + CRT; round_bytes_per_worker = "
        "weights in + products out + e in + gradient out; every time the best of 3-5 calls",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "workers": WORKERS,
        "command": "python bench/bench_precision.py" + (" --quick" if args.quick else ""),
    }
    write_metrics(args.out, {"meta": meta, "datasets": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

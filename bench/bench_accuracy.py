"""Accuracy at the defaults: cpml (the exact sigmoid, and the paper's r = 1 polynomial) against float64 GD and
scikit-learn, on the bundled datasets and the mixed-scale synthetic tables.

The comparison is the one tests/test_training.py and tests/test_multiclass.py assert (their helpers are reused
here): standard scaling on the training split, an intercept column, automatic precision, N = 10 (Case 1),
50 iterations, the step from the curvature of the loss, Nesterov momentum; 5-fold stratified CV for the small
sets, an 80/20 split for the large tables, a 75/25 split for digits with ten classes. "float64 GD" is projected
Nesterov GD with the true sigmoid at the same step and iterations; scikit-learn is LogisticRegression
(one-vs-rest for ten classes, at the same 50 iterations). Writes bench/results/accuracy.json.

    python bench/bench_accuracy.py                  # about 3 minutes
    python bench/bench_accuracy.py --quick --out /tmp/a.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from cpml.protocol import Plan, RunInputs, auto_precision, models, public_profile, simulate
from cpml.reporting import write_metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from synthetic import realistic_table  # noqa: E402  (the generator the accuracy tests use)
from test_training import (  # noqa: E402  (the comparison the tests assert)
    accuracies,
    breast_cancer,
    cross_validated,
    digits_4_vs_9,
    prepared,
    wine_0_vs_rest,
)


def small_sets() -> dict[str, dict[str, object]]:
    """5-fold CV on the bundled binary sets, exact sigmoid and r = 1."""
    out: dict[str, dict[str, object]] = {}
    for name, dataset in (
        ("digits-4v9", digits_4_vs_9),
        ("wine-0-vs-rest", wine_0_vs_rest),
        ("breast-cancer", breast_cancer),
    ):
        x, y = dataset()
        exact, paper = cross_validated(x, y, r=0), cross_validated(x, y, r=1)
        x_train, _ = prepared(x, x)
        plan = auto_precision(Plan.case1(10, r=0), public_profile("standard", *x_train.shape))
        out[name] = {
            "rows": int(x.shape[0]),
            "features": int(x.shape[1]),
            "cpml_exact": round(float(exact["cpml"]), 4),
            "float64_gd_true_sigmoid": round(float(exact["true"]), 4),
            "scikit_learn": round(float(exact["sklearn"]), 4),
            "cpml_polynomial_r1": round(float(paper["cpml"]), 4),
            "float64_gd_r1_polynomial": round(float(paper["same_function"]), 4),
            "residues": plan.residues,
            "data_bits": plan.lx,
        }
        print(name, out[name], flush=True)
    return out


def large_tables(rows_list: list[int]) -> dict[str, dict[str, object]]:
    """An 80/20 split of the mixed-scale synthetic table at each size, exact sigmoid."""
    out: dict[str, dict[str, object]] = {}
    for rows in rows_list:
        x, y = realistic_table(rows, 100, seed=1)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        x_train, x_test = prepared(x_train, x_test)
        started = time.perf_counter()
        got = accuracies(x_train, y_train, x_test, y_test)
        out[f"realistic-{rows}x100"] = {
            "cpml_exact": round(float(got["cpml"]), 4),
            "float64_gd_true_sigmoid": round(float(got["true"]), 4),
            "scikit_learn": round(float(got["sklearn"]), 4),
            "residues": got["plan"].residues,
            "data_bits": got["plan"].lx,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(rows, out[f"realistic-{rows}x100"], flush=True)
    return out


def ten_classes() -> dict[str, object]:
    """Digits, all ten classes, one-vs-rest in one run (seed 0, 75/25 split), exact sigmoid and r = 1."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    scaler = StandardScaler().fit(x_train)
    ovr = OneVsRestClassifier(LogisticRegression(max_iter=50)).fit(scaler.transform(x_train), y_train)
    xt, xs = prepared(x_train, x_test)
    yt, ys = np.eye(10)[y_train], np.eye(10)[y_test]
    result = {"scikit_learn_ovr": round(float(ovr.score(scaler.transform(x_test), y_test)), 4)}
    for r, key in ((0, "cpml_exact"), (1, "cpml_polynomial_r1")):
        plan = auto_precision(Plan.case1(10, r=r, iterations=50), public_profile("standard", *xt.shape))
        run = simulate(RunInputs(plan, xt, yt, 0, xs, ys))
        result[key] = round(float(run.history[-1].test_accuracy), 4)
        if r == 0:
            true = models.gradient_descent(xt, yt, run.plan.learning_rate, 50, radius=plan.weight_bound)[-1]
            result["float64_gd_true_sigmoid"] = round(float(models.accuracy(xs, ys, true, "logistic")), 4)
    print("digits-10", result, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small sets and a 5,000-row table only")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "accuracy.json")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    results = {
        "benchmark": "test accuracy at the defaults against float64 GD with the true sigmoid and scikit-learn",
        "command": "python bench/bench_accuracy.py" + (" --quick" if args.quick else ""),
        "binary_5_fold_cv": small_sets(),
        "large_tables_80_20": large_tables([5_000] if args.quick else [50_000, 200_000]),
        "digits_ten_classes": ten_classes(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": load},
    }
    write_metrics(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

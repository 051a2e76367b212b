"""bench/bench_accuracy.py stays runnable: a quick run writes every comparison, and the exact sigmoid holds."""

from __future__ import annotations

import pytest
from helpers_bench import run_bench


@pytest.mark.slow
def test_quick_run_compares_every_dataset_with_float_gradient_descent_and_scikit_learn(tmp_path):
    result = run_bench("bench_accuracy.py", tmp_path / "accuracy.json", "--quick", timeout=900)
    assert set(result["binary_5_fold_cv"]) == {"digits-4v9", "wine-0-vs-rest", "breast-cancer"}
    rows = [*result["binary_5_fold_cv"].values(), *result["large_tables_80_20"].values()]
    for row in rows:
        assert row["cpml_exact"] >= row["float64_gd_true_sigmoid"] - 0.005, row
    ten = result["digits_ten_classes"]
    assert ten["cpml_exact"] >= ten["scikit_learn_ovr"] - 0.01, ten

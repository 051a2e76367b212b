"""bench/bench_accuracy.py stays runnable: a quick run writes every comparison, and the exact sigmoid holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_compares_every_dataset_with_float_gradient_descent_and_scikit_learn(tmp_path):
    out = tmp_path / "accuracy.json"
    run = subprocess.run(
        [sys.executable, "bench/bench_accuracy.py", "--quick", "--out", str(out)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["binary_5_fold_cv"]) == {"digits-4v9", "wine-0-vs-rest", "breast-cancer"}
    rows = [*result["binary_5_fold_cv"].values(), *result["large_tables_80_20"].values()]
    for row in rows:
        assert row["cpml_exact"] >= row["float64_gd_true_sigmoid"] - 0.005, row
    ten = result["digits_ten_classes"]
    assert ten["cpml_exact"] >= ten["scikit_learn_ovr"] - 0.01, ten

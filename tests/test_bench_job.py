"""bench/bench_job.py stays runnable: a tiny run of both sides writes a complete result file."""

from __future__ import annotations

import pytest
from helpers_bench import run_bench


@pytest.mark.slow
def test_quick_run_times_both_sides_and_scores_them_on_the_same_rows(tmp_path):
    result = run_bench("bench_job.py", tmp_path / "job.json", "--quick", timeout=600)
    assert result["task"] == {
        "images": 120,
        "pixels": 64,
        "train_rows": 96,
        "features": 65,
        "test_rows": 24,
        "iterations": 3,
        "labels": "digit >= 5 (scikit-learn digits, upsampled bilinearly)",
    }
    cpml, mpyc = result["cpml"], result["mpyc"]
    assert 0 < cpml["median_to_model_json"] <= cpml["median_to_exit"]
    assert mpyc["median"] > 0 and mpyc["parties"] == 3
    # the same update, sigmoid and step: 3 rounds from zero land both far above chance on the same test rows
    assert cpml["test_accuracy"] > 0.7 and mpyc["test_accuracy"] > 0.7
    assert result["speedup_to_model_json"] == pytest.approx(mpyc["median"] / cpml["median_to_model_json"])

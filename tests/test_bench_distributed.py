"""bench/bench_distributed.py stays runnable: a tiny run writes a complete result file."""

from __future__ import annotations

import pytest
from helpers_bench import run_bench


@pytest.mark.slow
def test_quick_run_writes_phases_and_checks_bit_identity(tmp_path):
    args = ("--quick", "--workers", "5", "--iterations", "2")
    results = run_bench("bench_distributed.py", tmp_path / "distributed.json", *args, timeout=300)["results"]
    assert [(r["dataset"], r["n_workers"]) for r in results] == [("digits", 5), ("cifar-synthetic", 5)]
    for r in results:
        assert r["weights_bit_identical"] is True
        assert r["shape"] == ([361, 65] if r["dataset"] == "digits" else [600, 65])  # + intercept column
        phases = r["distributed"]["rounds_phase_seconds"]
        assert set(phases) == {
            "encode_seconds",
            "send_seconds",
            "wait_seconds",
            "worker_compute_seconds",
            "decode_update_seconds",
        }
        assert 0 < phases["worker_compute_seconds"] <= phases["wait_seconds"]
        assert r["distributed"]["upload_bytes"] > 0 and r["simulator"]["encode_dataset_seconds"] > 0
        assert r["ratio_train_only"] > 0

"""Smoke test of bench/bench_field.py: the quick run writes a complete JSON result (it is not a timing test)."""

import subprocess
import sys

from helpers_bench import REPO, run_bench

SCRIPT = REPO / "bench" / "bench_field.py"

KERNELS = ("encoding", "worker", "decoding")
VARIANTS = ("exact", "raw_float64", "naive_int64", "galois")


def test_quick_run_writes_every_kernel_variant_ratio_and_machine_fact(tmp_path):
    report = run_bench("bench_field.py", tmp_path / "field.json", "--quick", "--repeats", "1", timeout=120)
    assert report["quick"] is True and report["plan"] == {"N": 50, "K": 10, "T": 7, "r": 1, "R": 49, "p": 2**25 - 39}
    assert set(report["datasets"]) == {"cifar", "gisette"} == set(report["summary"])
    for dataset in report["datasets"].values():
        for kernel in KERNELS:
            entry = dataset[kernel]
            for variant in VARIANTS:
                assert entry["seconds"][variant]["median"] > 0, (kernel, variant)
            assert set(entry["ratios"]) == {
                "exact_over_raw",
                "exact_over_raw_paired",
                "galois_over_exact",
                "naive_over_exact",
            }
        assert set(dataset["encoding"]["targets_met"]) == {
            "exact_within_1.5x_of_raw",
            "15x_faster_than_galois",
            "15x_faster_than_naive_int64",
        }
        assert dataset["encoding"]["shape"]["b"] == [17, dataset["rows_per_partition"] * dataset["d"]]
        assert dataset["masks"]["seconds"]["uniform"]["median"] > 0
        assert dataset["encode_full"]["ratios"]["encode_over_raw"] > 0
        assert dataset["encoding_large_prime"]["p"] == 2**31 - 1
    machine, software = report["machine"], report["software"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= 1
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3
    assert any(lib["user_api"] == "blas" for lib in software["threadpool_info"])
    assert isinstance(software["numpy_config"], dict) and software["numpy"]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "0", "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Argument 'repeats' must be at least 1, not 0." in done.stderr
    assert not (tmp_path / "x.json").exists()

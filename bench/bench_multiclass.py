"""What C one-vs-rest classes cost per round against one binary run on the same rows.

All C models share one encoded dataset and one pass of every worker over its share (the weights are d x C), so
a round of C classes should cost well under C binary rounds. Two measurements, each for C = 1 (binary) and
C = 10 on the same rows:

- phases, in process, at the default plan (the exact sigmoid: two exchanges a round): the master's weight
  encoding, one worker's compute on its share in both exchanges (the workers run in parallel, so one is what
  a round waits for), and the master's decoding (products, sigmoid values, gradient) and update, median over
  rounds; for
  digits (1797 x 64 + intercept, N = 10) and an MNIST-shaped job (8000 x 784 + intercept, N = 10);
- end to end: `cpml-master train` on digits with 10 embedded worker processes, the median round time in
  its rounds.jsonl (send, wait for R replies, decode, update, evaluate).

Writes bench/results/multiclass.json.

    python bench/bench_multiclass.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from cpml.protocol import CodedTrainer, Plan, RunInputs, auto_precision, prepare_share, public_profile, worker_step
from cpml.reporting import write_metrics

REPO = Path(__file__).resolve().parent.parent
CLASSES = 10


def labels(target: np.ndarray, classes: int) -> np.ndarray:
    """One-hot rows of `classes` classes, or 0/1 (is it the last class) for a binary run."""
    return np.eye(classes)[target % classes] if classes > 2 else (target % CLASSES == CLASSES - 1).astype(float)


def phases(x: np.ndarray, target: np.ndarray, classes: int, rounds: int) -> dict[str, float]:
    """Median seconds per round of each phase, for one run of `classes` classes (1: binary) on x."""
    # The default plan: the exact sigmoid (two exchanges a round), Case 1 with N = 10 (K = 4, T = 1).
    plan = auto_precision(Plan.case1(10, r=0, iterations=rounds), public_profile("standard", *x.shape))
    trainer = CodedTrainer.create(RunInputs(plan, x, labels(target, classes), seed=0))
    coefficients = trainer.job_spec.coefficient_array()
    encode, compute, decode = [], [], []
    prepared = [prepare_share(trainer.basis, share) for share in trainer.encode_dataset()]
    sent = received = 0  # one worker's bytes a round: values in, results out (both exchanges)
    while not trainer.done:
        start = time.perf_counter()
        values = trainer.weight_shares()
        encode.append(time.perf_counter() - start)
        sent, received = int(values[0].nbytes), 0
        worker = decoding = 0.0
        for stage in (0, 1):
            start = time.perf_counter()
            worker_step(trainer.basis, prepared[0], values[0], coefficients, stage)
            worker += time.perf_counter() - start
            replies = {
                i: worker_step(trainer.basis, prepared[i], values[i], coefficients, stage)
                for i in range(plan.threshold)
            }
            received += int(replies[0].nbytes)
            start = time.perf_counter()
            if stage == 0:  # decode the products, apply the sigmoid, encode the values
                values, _ = trainer.sigmoid_shares(trainer.round, replies)
                sent += int(values[0].nbytes)
            else:
                trainer.finish_round(trainer.round, replies)
            decoding += time.perf_counter() - start
        compute.append(worker)
        decode.append(decoding)
    out = {
        "encode_seconds": statistics.median(encode),
        "worker_compute_seconds": statistics.median(compute),
        "decode_update_seconds": statistics.median(decode),
    }
    out["round_seconds"] = sum(out.values())
    out["bytes_to_each_worker"] = sent
    out["bytes_from_each_worker"] = received
    return out


def end_to_end(classes: int, iterations: int) -> dict[str, float]:
    """Median round seconds of `cpml-master train` on all of digits with 10 local worker processes."""
    digits = load_digits()
    y = digits.target if classes > 2 else (digits.target == CLASSES - 1).astype(int)
    with tempfile.TemporaryDirectory(prefix="bench-multiclass-") as tmp:
        data = Path(tmp) / "digits.npz"
        np.savez(data, x=digits.data, y=y)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "cpml.master.cli",
                "train",
                "--dataset",
                str(data),
                "--workers-local",
                "10",
                "--iterations",
                str(iterations),
                "--out",
                str(Path(tmp) / "run"),
                "--log-level",
                "error",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-2000:])
        records = [json.loads(line) for line in (Path(tmp) / "run" / "rounds.jsonl").read_text().splitlines()]
        final = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["final"]
    rounds = records[1:]  # the first round also warms the workers' caches
    return {
        "round_seconds": statistics.median(r["total_seconds"] for r in rounds),
        "worker_compute_seconds": statistics.median(r["worker_compute_seconds"] for r in rounds),
        "bytes_sent_per_round": statistics.median(r["bytes_sent"] for r in rounds),
        "bytes_received_per_round": statistics.median(r["bytes_received"] for r in rounds),
        "test_accuracy": final["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "multiclass.json")
    args = parser.parse_args(argv)
    digits = load_digits()
    rng = np.random.default_rng(0)
    spread = digits.data.std(axis=0)
    pixels = (digits.data - digits.data.mean(axis=0)) / np.where(spread > 0, spread, 1.0)  # as --scaling standard
    jobs = {
        "digits 1797x65": (np.column_stack([pixels, np.ones(len(pixels))]), digits.target),
        "mnist-shaped 8000x785": (
            np.column_stack([rng.normal(size=(8000, 784)), np.ones(8000)]),
            rng.integers(0, CLASSES, 8000),
        ),
    }
    results: dict[str, dict[str, object]] = {}
    for name, (x, target) in jobs.items():
        with threadpool_limits(1, user_api="blas"):  # as the master and the worker daemons run BLAS
            row: dict[str, object] = {str(c): phases(x, target, c, args.rounds) for c in (1, CLASSES)}
        binary, many = row["1"], row[str(CLASSES)]
        row["round_ratio"] = many["round_seconds"] / binary["round_seconds"]  # type: ignore[index]
        row["worker_ratio"] = many["worker_compute_seconds"] / binary["worker_compute_seconds"]  # type: ignore[index]
        results[name] = row
        print(name, json.dumps(row), flush=True)
    e2e: dict[str, object] = {str(c): end_to_end(c, args.rounds + 1) for c in (1, CLASSES)}
    e2e["round_ratio"] = e2e[str(CLASSES)]["round_seconds"] / e2e["1"]["round_seconds"]  # type: ignore[index]
    results["cpml-master train digits, 10 worker processes"] = e2e
    print("end to end", json.dumps(e2e), flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "numpy": np.__version__,
        "classes": CLASSES,
        "rounds": args.rounds,
        "command": "python bench/bench_multiclass.py",
    }
    write_metrics(args.out, {"meta": meta, "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

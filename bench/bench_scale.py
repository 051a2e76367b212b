"""How a job grows with its rows: 50k, 200k and 1M rows x 100 features at the default settings.

The table is tests/synthetic.py's realistic_table (mixed scales, heavy tails, one-hot columns), saved as an .npz of
float64. Ten cpml-worker daemons (the default N = 10: Case 1, K = 3, T = 1) are started first and left up; each
size is one `cpml-master train` process (default flags, --iterations 10), and the bench reads from the master's
own JSON logs and metrics.json: data loaded (read, split, scaled), shares uploaded (encoded and sent), the
per-round phases (medians), and the master's peak resident memory (its own ru_maxrss) against the raw table's
bytes; a 1,000-row job first measures what any job holds (the interpreter, numpy, gRPC), which dominates the
smaller tables. Writes bench/results/scale.json.

    python bench/bench_scale.py                       # 50k, 200k, 1M rows (minutes; ~8 GB RAM with the workers)
    python bench/bench_scale.py --rows 2000,8000 --out /tmp/s.json   # small, to check the script
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
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from cpml.reporting import write_metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from bench_job import start_workers  # noqa: E402  (beside this script: one way to start the daemons)
from synthetic import realistic_table  # noqa: E402  (the generator bench_precision and the accuracy tests use)

BIN = Path(sys.executable).parent
FEATURES = 100
WORKERS = 10
FIXED_ROWS = 1000  # a job this small measures the master's fixed memory
# Linux keeps the peak resident memory a process had before exec in its ru_maxrss, and a child that subprocess
# starts (by vfork) had its parent's memory there: this script's, which generated the tables. So each master is
# forked from a fresh launcher interpreter (a few MB) that reports the master's rusage alone.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""
PHASES = (
    "encode_seconds",
    "send_seconds",
    "wait_seconds",
    "worker_compute_seconds",
    "decode_update_seconds",
    "total_seconds",
)


def run_size(rows: int, workers: list[str], iterations: int, directory: Path) -> dict:
    """One training process on a rows x 100 table: phase seconds and the master's peak memory."""
    x, y = realistic_table(rows, FEATURES, seed=1)
    dataset = directory / f"table{rows}.npz"
    np.savez(dataset, x=x, y=y)
    raw_bytes = x.nbytes
    del x, y
    out = directory / f"run{rows}"
    peak_file = directory / f"peak{rows}"
    began = time.time()
    run = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            LAUNCHER,
            str(peak_file),
            str(BIN / "cpml-master"),
            "train",
            "--dataset",
            str(dataset),
            "--workers",
            ",".join(workers),
            "--insecure",
            "--iterations",
            str(iterations),
            "--out",
            str(out),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        capture_output=True,
        text=True,
        timeout=7200,
    )
    ended = time.time()
    if run.returncode != 0:
        raise RuntimeError(f"cpml-master train failed on {rows} rows ({run.returncode}): {run.stderr[-2000:]}")
    peak = int(peak_file.read_text())
    events = {}
    for line in run.stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        events.setdefault(event["event"], stamp - began)
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    dataset.unlink()
    return {
        "rows": rows,
        "features": FEATURES,
        "raw_bytes": raw_bytes,
        "master_peak_bytes": peak,
        "master_peak_over_raw": peak / raw_bytes,
        "worker_share_bytes": metrics["upload"]["bytes_sent"] // metrics["plan"]["n_workers"],  # as sent
        "seconds": {
            "load_split_scale": events["data"],
            "plan": events["plan"],
            "upload": metrics["upload"]["seconds"],
            "upload_encode": metrics["upload"]["encode_seconds"],
            "rounds": sum(r["total_seconds"] for r in rounds),
            "to_exit": ended - began,
        },
        "round_median_seconds": {phase: statistics.median(r[phase] for r in rounds) for phase in PHASES},
        "plan": {k: metrics["plan"][k] for k in ("n_workers", "k", "t", "r", "residues", "lx", "lw")},
        "test_accuracy": metrics["final"]["test_accuracy"],
        "iterations": len(rounds),
    }


class ResidentPeak:
    """The largest resident memory (VmRSS) any of some processes reaches while this is entered, sampled every 5 ms."""

    # sampled: a live process's VmHWM is only updated on some unmaps, so it can miss a peak or come from a later one
    def __init__(self, pids: list[int]) -> None:
        self._pids, self.bytes, self._stop = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ResidentPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.bytes = max(self.bytes, *(_resident_bytes(pid) for pid in self._pids))


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="50000,200000,1000000", help="comma-separated table sizes")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    args = parser.parse_args()
    sizes = [int(v) for v in args.rows.split(",")]
    load_start = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workers, addresses = start_workers(WORKERS, Path(tmp))
        try:
            pids = [w.pid for w in workers]
            with ResidentPeak(pids) as fixed_worker:
                fixed = run_size(FIXED_ROWS, addresses, args.iterations, Path(tmp))["master_peak_bytes"]
            print(f"{FIXED_ROWS} rows: peak {fixed / 2**20:.0f} MiB (what any job holds)", flush=True)
            for rows in sorted(sizes):
                with ResidentPeak(pids) as worker_peak:
                    results.append(run_size(rows, addresses, args.iterations, Path(tmp)))
                results[-1]["master_peak_beyond_fixed_over_raw"] = (results[-1]["master_peak_bytes"] - fixed) / (
                    results[-1]["raw_bytes"]
                )
                r = results[-1]
                r["worker_peak_bytes"] = worker_peak.bytes
                seconds, per_round = r["seconds"], r["round_median_seconds"]["total_seconds"]
                print(
                    f"{rows} rows: peak {r['master_peak_bytes'] / 2**20:.0f} MiB ({r['master_peak_over_raw']:.2f}x "
                    f"the raw table), load {seconds['load_split_scale']:.2f} s, upload {seconds['upload']:.2f} s, "
                    f"round {per_round:.3f} s",
                    flush=True,
                )
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
    smallest = results[0]
    for r in results:  # time per row relative to the smallest size: 1.0 means linear
        scale = r["rows"] / smallest["rows"]
        r["per_row_vs_smallest"] = {
            "upload": r["seconds"]["upload"] / (scale * smallest["seconds"]["upload"]),
            "round": r["round_median_seconds"]["total_seconds"]
            / (scale * smallest["round_median_seconds"]["total_seconds"]),
            "load_split_scale": r["seconds"]["load_split_scale"] / (scale * smallest["seconds"]["load_split_scale"]),
        }
    write_metrics(
        args.out,
        {
            "benchmark": "a job's time and the master's memory against its rows",
            "command": "python bench/bench_scale.py " + " ".join(sys.argv[1:]),
            "workers": WORKERS,
            "fixed_overhead": {"rows": FIXED_ROWS, "master_peak_bytes": fixed, "worker_peak_bytes": fixed_worker.bytes},
            "results": results,
            "note": (
                "one cpml-master train process per size against 10 running daemons on this machine (they share "
                "its 2 cores); master_peak_bytes is its own ru_maxrss (forked from a small launcher: started "
                "from this script it would inherit this script's peak); fixed_overhead is the peak of a "
                f"{FIXED_ROWS}-row job (interpreter, numpy, gRPC, matplotlib), most of the peak at 50k rows, and "
                "master_peak_beyond_fixed_over_raw = (peak - fixed) / raw_bytes; load_split_scale and plan are "
                "seconds from the process start to its 'data' and 'plan' log lines; per_row_vs_smallest "
                "1.0 = linear in rows; worker_peak_bytes is the largest resident memory of any daemon during the job "
                "(fixed_overhead's: after the small job), worker_share_bytes one daemon's share as uploaded"
            ),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_start": load_start,
                "load_average_end": os.getloadavg(),
            },
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

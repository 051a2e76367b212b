"""End to end with real cpml-worker processes on 127.0.0.1: the CLI's embedded cluster, a worker SIGKILLed
mid-training, falling below R, and --resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cpml.field import DEFAULT_PRIME, residue_primes
from cpml.master.cluster import NotEnoughWorkers, Timeouts
from cpml.master.job import load_training_data
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.master.train import train
from cpml.protocol import Plan, RunInputs, simulate
from cpml.wire import serde

pytestmark = pytest.mark.slow

DATASET = "digits-4v9"


def _simulated(plan):
    """The in-process simulator on the data the master trains on (its default scaling and intercept)."""
    data = load_training_data(TrainSettings(dataset=DATASET))
    return simulate(RunInputs(plan, data.x_train, data.y_train, 0, data.x_test, data.y_test))


async def test_cluster_equals_the_simulator_bit_for_bit_at_the_new_defaults(tmp_path):
    settings = TrainSettings(
        dataset=DATASET,
        insecure=True,
        iterations=6,
        residues=3,
        out=tmp_path / "run",
        progress=False,
        chunk_bytes=4096,
        timeouts=Timeouts(connect=60, upload=60, round=30),
    )
    assert (settings.scaling, settings.intercept, settings.lx, settings.lw, settings.lc) == (
        "standard",
        True,
        None,
        None,
        None,
    )  # every default but the residues
    async with LocalWorkers(5, tmp_path / "workers") as local:  # real cpml-worker processes, port 0
        report = await train(TrainSettings(**{**settings.__dict__, "workers": tuple(local.addresses)}))
    plan = report.plan
    assert plan.residues == 3 and plan.moduli == residue_primes(DEFAULT_PRIME, 3)
    rows = -(-288 // plan.k)  # the digits training split, one partition per K
    per_residue = -(-rows // serde.rows_per_chunk(65, 4096))
    assert report.upload["chunks"] == 5 * 3 * per_residue  # every worker got every residue's rows
    reference = _simulated(plan)
    assert report.weights.tobytes() == reference.weights.tobytes()
    assert [r.loss for r in report.history] == [s.loss for s in reference.history]
    assert report.history[-1].test_accuracy == reference.history[-1].test_accuracy > 0.9


def test_cli_trains_on_an_embedded_local_cluster(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            "--dataset",
            DATASET,
            "--workers-local",
            "5",
            "--iterations",
            "6",
            "--out",
            str(tmp_path / "run"),
            "--log-format",
            "json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(re.search(r"test accuracy: ([\d.]+)", run.stdout).group(1)) > 0.9
    assert "N=5 workers (K=2, T=1, exact sigmoid, R=5)" in run.stdout
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert any("defeat T-privacy" in e["event"] for e in events if e["level"] == "warning")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    phases = metrics["rounds"][0]
    assert {
        "encode_seconds",
        "send_seconds",
        "wait_seconds",
        "worker_compute_seconds",
        "decode_update_seconds",
        "bytes_sent",
        "bytes_received",
    } <= set(phases)
    assert metrics["upload"]["bytes_sent"] > 0
    worker_logs = sorted((tmp_path / "run" / "workers").glob("worker-*.log"))
    assert len(worker_logs) == 5
    for log in worker_logs:  # every embedded worker drained and stopped when the run ended
        assert json.loads(log.read_text().strip().splitlines()[-1])["event"] == "worker stopped"


async def test_sigkilled_workers_are_dropped_then_below_r_resume_finishes(tmp_path):
    out = tmp_path / "run"
    settings = TrainSettings(
        dataset=DATASET,
        insecure=True,
        iterations=8,
        out=out,
        progress=False,
        timeouts=Timeouts(connect=60, upload=60, round=30),
        k=1,
        t=1,
    )
    async with LocalWorkers(5, tmp_path / "workers") as local:
        pids = [p.pid for p in local.processes]

        def kill_during_training(record):
            if record.round == 2:
                os.kill(pids[1], signal.SIGKILL)  # 4 of 5 left: R = 3 still reachable
            if record.round == 5:
                os.kill(pids[3], signal.SIGKILL)  # 2 left: below R
                os.kill(pids[4], signal.SIGKILL)

        with pytest.raises(NotEnoughWorkers, match="only 2 of 5 workers remain but R = 3"):
            await train(
                TrainSettings(**{**settings.__dict__, "workers": tuple(local.addresses)}), on_round=kill_during_training
            )
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["trainer"]["round"] in (5, 6)  # killed after round 5; round 6 may not have needed worker 3
    history = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all(1 not in r["workers_used"] for r in history[3:])

    async with LocalWorkers(3, tmp_path / "workers-again") as local:
        resumed = await train(TrainSettings(**{**settings.__dict__, "workers": tuple(local.addresses), "resume": True}))
    assert [r.round for r in resumed.history] == list(range(1, 9))
    reference = _simulated(resumed.plan.with_(n_workers=5))
    assert resumed.weights.tobytes() == reference.weights.tobytes()  # the same model as an unbroken run
    assert resumed.history[-1].test_accuracy == pytest.approx(reference.history[-1].test_accuracy)


def test_cli_exits_3_below_r_and_resume_continues(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = tmp_path / "run"

    def start(tag, flags):
        procs, files = [], []
        for i, extra in enumerate(flags):
            files.append(tmp_path / f"{tag}-{i}.port")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cpml.worker.cli",
                        "--listen",
                        "127.0.0.1:0",
                        "--insecure",
                        "--port-file",
                        str(files[-1]),
                        *extra,
                    ],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 60
        while not all(f.exists() for f in files):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        return procs, ",".join(f.read_text() for f in files)

    train_cmd = [
        sys.executable,
        "-m",
        "cpml.master.cli",
        "train",
        "--dataset",
        DATASET,
        "--insecure",
        "--iterations",
        "5",
        "--k",
        "1",
        "--t",
        "1",
        "--out",
        str(out),
        "--log-format",
        "json",
    ]
    failing = [("--fault-fail-after-rounds", "2")] * 3 + [()] * 2
    procs, workers = start("first", failing)
    try:
        run = subprocess.run(
            [*train_cmd, "--workers", workers], check=False, capture_output=True, text=True, timeout=180
        )
    finally:
        for p in procs:
            p.terminate()
    assert run.returncode == 3, run.stderr[-3000:]
    # round 3 at the earliest: a failing worker that straggled past a round (R = 3 of 5 did not need it) serves
    # its second round, and fails, one round later
    assert re.search(r"stopped: round [3-5]: only 2 of 5 workers remain but R = 3 replies are needed", run.stderr)
    assert "rerun with --resume" in run.stderr
    procs, workers = start("second", [()] * 3)
    try:
        run = subprocess.run(
            [*train_cmd, "--resume", "--workers", workers], check=False, capture_output=True, text=True, timeout=180
        )
    finally:
        for p in procs:
            p.terminate()
    assert run.returncode == 0, run.stderr[-3000:]
    model = json.loads((out / "model.json").read_text())
    assert len(json.loads((out / "metrics.json").read_text())["rounds"]) == 5
    reference = _simulated(Plan(**model["plan"]).with_(n_workers=5))
    assert np.array(model["weights"]).tobytes() == reference.weights.tobytes()


async def test_a_straggling_worker_process_never_slows_a_round(tmp_path):
    async with (
        LocalWorkers(4, tmp_path / "fast") as fast,
        LocalWorkers(1, tmp_path / "slow", extra_args=("--fault-reply-delay", "6")) as slow,
    ):
        settings = TrainSettings(
            dataset=DATASET,
            insecure=True,
            iterations=4,
            out=tmp_path / "run",
            progress=False,
            workers=(*fast.addresses[:2], *slow.addresses, *fast.addresses[2:]),
            k=1,
            t=1,
        )
        report = await train(settings)
    # R = 3 of 5: the 6 s straggler is never awaited (rounds take well under a second, a few on a loaded machine)
    assert max(r.wait_seconds for r in report.history) < 3.0
    assert all(2 not in r.workers_used for r in report.history)
    assert report.weights.tobytes() == _simulated(report.plan).weights.tobytes()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _start_long_master(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            "--dataset",
            DATASET,
            "--workers-local",
            "4",
            "--iterations",
            "100000",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.1)
    return proc


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find the worker processes")
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stopping_the_master_leaves_no_worker_behind(tmp_path, how):
    out = tmp_path / "run"
    proc = _start_long_master(out)
    workers = _processes_mentioning(str(out / "workers"))
    assert len(workers) == 4
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    if how == "sigterm":  # a graceful stop: checkpointed, workers stopped on the way out
        assert proc.returncode == 130, stderr[-2000:]
        assert "rerun with --resume" in stderr
        assert json.loads((out / "checkpoint.json").read_text())["trainer"]["round"] >= 1
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(out / "workers")):  # orphans notice their master is gone
        assert time.monotonic() < deadline, "embedded workers outlived their master"
        time.sleep(0.2)

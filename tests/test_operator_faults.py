"""Faults an operator hits on a CodedPrivateML cluster of real cpml-worker processes on 127.0.0.1."""

import asyncio
import subprocess
import sys
import time
from dataclasses import replace

import grpc
import pytest

from cpml.master.cluster import NotEnoughWorkers, Timeouts
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.master.train import train
from cpml.protocol import RunInputs
from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc

# breast cancer at the defaults: 2 residues x 152 rows x 31 columns x 4 bytes = 37,696 bytes per share (K = 3)
ONE_SHARE_CAP = "60000"


def settings(addresses, out, **changes):
    return TrainSettings(
        **{
            "dataset": "breast-cancer",
            "workers": tuple(addresses),
            "insecure": True,
            "iterations": 3,
            "out": out,
            "progress": False,
            **changes,
        }
    )


async def jobs_held(address):
    async with grpc.aio.insecure_channel(address) as channel:
        status = await pb_grpc.WorkerStub(channel).Status(pb.StatusRequest(), timeout=5)
    return status.jobs


@pytest.mark.slow
async def test_two_masters_racing_for_one_share_of_room_both_finish_and_leave_no_job(tmp_path):
    async with LocalWorkers(12, tmp_path / "w", extra_args=("--share-bytes-cap", ONE_SHARE_CAP)) as local:
        for attempt in range(3):  # the race goes differently each time; none may hang
            started = time.monotonic()
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    train(settings(local.addresses, tmp_path / f"a{attempt}")),
                    train(settings(local.addresses, tmp_path / f"b{attempt}")),
                    return_exceptions=True,
                ),
                60,
            )
            assert time.monotonic() - started < 60
            # the one that found too few workers with room released them, backed off and got its turn
            assert [type(o).__name__ for o in outcomes] == ["TrainReport", "TrainReport"], outcomes
            # every exit path ended its job: the workers hold nothing and the next attempt has room
            assert [await jobs_held(a) for a in local.addresses] == [0] * 12


@pytest.mark.slow
async def test_a_master_stopped_below_r_ends_its_job_on_the_survivors(tmp_path):
    async with LocalWorkers(5, tmp_path / "w", extra_args=("--fault-fail-after-rounds", "2")) as local:
        with pytest.raises(NotEnoughWorkers):
            await train(settings(local.addresses, tmp_path / "run", iterations=5, t=1, k=1))
        assert [await jobs_held(a) for a in local.addresses] == [0] * 5


@pytest.mark.slow
async def test_the_job_starts_with_the_workers_that_answer_while_r_do(tmp_path):
    async with (
        LocalWorkers(5, tmp_path / "w") as local,
        LocalWorkers(1, tmp_path / "small", extra_args=("--share-bytes-cap", "1000")) as small,
    ):
        dead = "127.0.0.1:1"  # nothing listens there
        addresses = [*local.addresses, dead, *small.addresses]  # N = 7, K = 1, T = 1: R = 3
        report = await train(
            settings(addresses, tmp_path / "run", k=1, t=1, iterations=2, timeouts=Timeouts(connect=3.0))
        )
        assert len(report.history) == 2
        assert set(report.dropped_workers) == {5, 6}
        assert "not healthy" in report.dropped_workers[5] and "holds at most 1000 bytes" in report.dropped_workers[6]


@pytest.mark.slow
def test_too_few_healthy_and_too_few_with_room_have_their_own_exit_codes(tmp_path):
    common = [
        sys.executable,
        "-m",
        "cpml.master.cli",
        "train",
        "--dataset",
        "breast-cancer",
        "--insecure",
        "--k",
        "1",
        "--t",
        "1",
        "--iterations",
        "1",
        "--connect-timeout",
        "2",
        "--log-level",
        "error",
    ]
    unreachable = subprocess.run(
        [*common, "--workers", ",".join(f"127.0.0.1:{port}" for port in (1, 2, 3, 4)), "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unreachable.returncode == 4, unreachable.stderr
    assert "0 answered, R = 3 needed" in unreachable.stderr

    async def full() -> subprocess.CompletedProcess:
        async with LocalWorkers(4, tmp_path / "w", extra_args=("--share-bytes-cap", "1000")) as local:
            return await asyncio.to_thread(
                subprocess.run,
                [*common, "--workers", ",".join(local.addresses), "--out", str(tmp_path / "b")],
                capture_output=True,
                text=True,
                timeout=120,
            )

    unsuitable = asyncio.run(full())
    assert unsuitable.returncode == 6, unsuitable.stderr
    assert (
        "workers cannot take the job" in unsuitable.stderr and "0 can take the job, R = 3 needed" in unsuitable.stderr
    )


async def upload_job(address, job_id="f" * 32):
    """Store one share of a small job on the worker, and open no compute stream (a master that died)."""
    import numpy as np

    from cpml.master.cluster import Cluster
    from cpml.protocol import CodedTrainer, Plan
    from cpml.wire import serde

    rng = np.random.default_rng(0)
    trainer = CodedTrainer.create(
        RunInputs(
            Plan(n_workers=4, k=1, t=1), rng.standard_normal((40, 5)), rng.integers(0, 2, 40).astype(float), seed=0
        )
    )
    spec = serde.WireJobSpec.of(trainer.job_spec, "logistic")
    async with Cluster([address]) as cluster:  # worker 0's share only
        await cluster.upload(job_id, spec, (replace(c, shares=c.shares[:1]) for c in trainer.share_chunks(8)))
    return job_id, spec.share_bytes


def jobs_cli(*args):
    return subprocess.run([sys.executable, "-m", "cpml.worker.jobs", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
async def test_operators_list_and_end_jobs_and_orphans_expire_soon(tmp_path):
    async with (
        LocalWorkers(1, tmp_path / "w", extra_args=("--orphan-seconds", "2")) as orphans,
        LocalWorkers(1, tmp_path / "v") as keeper,
    ):
        job_id, nbytes = await upload_job(keeper.addresses[0])
        listed = await asyncio.to_thread(jobs_cli, keeper.addresses[0])
        assert listed.returncode == 0 and job_id in listed.stdout and f" {nbytes} " in listed.stdout
        ended = await asyncio.to_thread(jobs_cli, keeper.addresses[0], "--end", job_id)
        assert f"ended {job_id} ({nbytes} bytes freed)" in ended.stdout and ended.stdout.endswith("no jobs\n")
        bad = await asyncio.to_thread(jobs_cli, keeper.addresses[0], "--end", "")
        assert bad.returncode == 2 and "empty job_id" in bad.stderr

        await upload_job(orphans.addresses[0])
        assert await jobs_held(orphans.addresses[0]) == 1
        await asyncio.sleep(4.5)  # --orphan-seconds 2, checked every second
        assert await jobs_held(orphans.addresses[0]) == 0


@pytest.mark.slow
async def test_sigterm_checkpoints_and_ends_the_job_on_every_worker(tmp_path):
    import signal

    async with LocalWorkers(4, tmp_path / "w", extra_args=("--fault-reply-delay", "0.2")) as local:
        master = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            "--dataset",
            "breast-cancer",
            "--insecure",
            "--k",
            "1",
            "--t",
            "1",
            "--iterations",
            "200",
            "--workers",
            ",".join(local.addresses),
            "--out",
            str(tmp_path / "run"),
            "--log-level",
            "error",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while sum([await jobs_held(a) for a in local.addresses]) < 4:  # training has started
            assert time.monotonic() < deadline and master.returncode is None
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        master.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(master.communicate(), 60)
        assert master.returncode == 130, stderr
        assert (tmp_path / "run" / "checkpoint.json").exists()
        assert [await jobs_held(a) for a in local.addresses] == [0] * 4

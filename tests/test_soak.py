"""A long run on real cpml-worker processes with workers killed, restarted and delayed at seeded points: more
failures in total than N - R, and the weights still end bit-identical to an undisturbed run."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from cpml.master.job import load_training_data
from cpml.master.settings import TrainSettings
from cpml.master.train import train
from cpml.protocol import RunInputs, simulate
from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc

N = 7  # K = 1, T = 1: R = 3 (the exact sigmoid), so at most N - R = 4 workers may be down at once


class Fleet:
    """cpml-worker processes that can be killed and restarted on the same address."""

    def __init__(self, workdir, delays):
        self.workdir, self.delays, self.processes, self.addresses = workdir, delays, [], []

    def _spawn(self, i, listen):
        port_file = self.workdir / f"w{i}.port"
        port_file.unlink(missing_ok=True)
        log = (self.workdir / f"w{i}.log").open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cpml.worker.cli",
                "--listen",
                listen,
                "--insecure",
                "--port-file",
                str(port_file),
                "--log-format",
                "json",
                "--drain-seconds",
                "0",
                "--fault-reply-delay",
                str(self.delays[i]),
                "--compute-threads",
                "1",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, f"worker {i} did not start"
            time.sleep(0.02)
        return proc, port_file.read_text().strip()

    def start(self):
        for i in range(N):
            proc, address = self._spawn(i, "127.0.0.1:0")
            self.processes.append(proc)
            self.addresses.append(address)

    def kill(self, i):
        self.processes[i].send_signal(signal.SIGKILL)
        self.processes[i].wait()

    def restart(self, i):
        self.processes[i], _ = self._spawn(i, self.addresses[i])

    def stop(self):
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def holds_share(address):
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            return (await pb_grpc.WorkerStub(channel).Status(pb.StatusRequest(), timeout=1)).jobs == 1
    except grpc.aio.AioRpcError:
        return False


async def chaos(fleet, rounds_done, rng, kills):
    """Kill two workers, bring them back, kill three, bring one back, kill another: seeded choices."""

    async def until(condition, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not await condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    async def back(workers):
        for i in workers:
            await asyncio.to_thread(fleet.restart, i)
        await until(lambda: _all([holds_share(fleet.addresses[i]) for i in workers]), f"{workers} rejoined")

    async def down(workers):
        for i in workers:
            fleet.kill(i)
            kills.append(i)

    await until(lambda: _now(len(rounds_done) >= 5), "training started")
    first = rng.sample(range(N), 2)
    await down(first)
    await asyncio.sleep(0.3)
    await back(first)
    second = rng.sample(range(N), 3)
    await down(second)
    await asyncio.sleep(0.3)
    await back(second[:1])
    await down([rng.choice([i for i in range(N) if i not in second[1:]])])


async def _all(awaitables):
    return all(await asyncio.gather(*awaitables))


async def _now(value):
    return value


@pytest.mark.slow
async def test_workers_killed_restarted_and_delayed_more_often_than_n_minus_r(tmp_path):
    rng = random.Random(7)
    delays = [0.05] * N  # rounds slow enough that restarts (seconds each under load) happen mid-run
    delays[rng.randrange(N)] = 0.15  # a straggler throughout
    fleet = Fleet(tmp_path, delays)
    await asyncio.to_thread(fleet.start)
    try:
        settings = TrainSettings(
            dataset="breast-cancer",
            workers=tuple(fleet.addresses),
            insecure=True,
            k=1,
            t=1,
            iterations=800,
            out=tmp_path / "run",
            progress=False,
        )
        rounds_done, kills = [], []
        training = asyncio.create_task(train(settings, on_round=rounds_done.append))
        await chaos(fleet, rounds_done, rng, kills)
        assert not training.done(), "the run ended before the chaos did"
        chaos_ended = len(rounds_done)
        report = await asyncio.wait_for(training, 300)
    finally:
        await asyncio.to_thread(fleet.stop)
    assert len(kills) == 6 > N - report.plan.threshold
    assert len(report.history) == 800 and chaos_ended < 800
    # the workers killed first came back and answered again
    assert set(kills[:2]) & {i for record in report.history[chaos_ended:] for i in record.workers_used}
    data = load_training_data(settings)
    undisturbed = simulate(RunInputs(report.plan, data.x_train, data.y_train, seed=settings.seed))
    assert np.array_equal(report.weights, undisturbed.weights)

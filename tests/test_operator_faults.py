"""Faults an operator hits on a CodedPrivateML cluster of real cpml-worker processes on 127.0.0.1."""

import asyncio
import time

import grpc
import pytest

from cpml.master.cluster import NotEnoughWorkers
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.master.train import train
from cpml.wire.generated.v1 import worker_pb2 as pb
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc

# breast cancer at the defaults: 2 residues x 152 rows x 31 columns x 4 bytes = 37,696 bytes per share (K = 3)
ONE_SHARE_CAP = "60000"


def settings(addresses, out, **changes):
    return TrainSettings(**{"dataset": "breast-cancer", "workers": tuple(addresses), "insecure": True,
                            "iterations": 3, "out": out, "progress": False, **changes})


async def jobs_held(address):
    async with grpc.aio.insecure_channel(address) as channel:
        status = await pb_grpc.WorkerStub(channel).Status(pb.StatusRequest(), timeout=5)
    return status.jobs


@pytest.mark.slow
async def test_two_masters_racing_for_one_share_of_room_both_end_and_leave_no_job(tmp_path):
    async with LocalWorkers(12, tmp_path / "w", extra_args=("--share-bytes-cap", ONE_SHARE_CAP)) as local:
        for attempt in range(3):  # the race goes differently each time; none may hang
            started = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(
                train(settings(local.addresses, tmp_path / f"a{attempt}")),
                train(settings(local.addresses, tmp_path / f"b{attempt}")), return_exceptions=True), 60)
            assert time.monotonic() - started < 60
            kinds = sorted(type(o).__name__ for o in outcomes)
            assert kinds in (["NotEnoughWorkers", "TrainReport"], ["NotEnoughWorkers", "NotEnoughWorkers"],
                             ["TrainReport", "TrainReport"]), outcomes
            assert all(not isinstance(o, BaseException) or isinstance(o, NotEnoughWorkers) for o in outcomes)
            # every exit path ended its job: the workers hold nothing and the next attempt has room
            assert [await jobs_held(a) for a in local.addresses] == [0] * 12


@pytest.mark.slow
async def test_a_master_stopped_below_r_ends_its_job_on_the_survivors(tmp_path):
    async with LocalWorkers(5, tmp_path / "w", extra_args=("--fault-fail-after-rounds", "2")) as local:
        with pytest.raises(NotEnoughWorkers):
            await train(settings(local.addresses, tmp_path / "run", iterations=5, t=1, k=1))
        assert [await jobs_held(a) for a in local.addresses] == [0] * 5

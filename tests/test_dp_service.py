"""The Aggregation gRPC service on 127.0.0.1:0: deadlines drop silent parties, a failed driver ends the run.

Every refusal of a malformed or hostile message is in test_hostile_messages.py."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np
import pytest

from cpml.dp.accountant import Budget
from cpml.dp.dpgd import LocalSettings
from cpml.dp.server import AggregationServer, Coordinator, CoordinatorFailed
from cpml.dp.session import AggregationSession, RunSettings
from cpml.wire import aggregation_serde as serde
from cpml.wire.generated.v1 import aggregation_pb2 as pb
from cpml.wire.generated.v1 import aggregation_pb2_grpc as pb_grpc

SIZES = (30, 90)
RUN = "svc"


@pytest.fixture
async def served():
    # A fixed step without momentum: the task then carries the aggregate itself.
    settings = RunSettings(RUN, len(SIZES), 3, Budget(2.0, 1e-5), LocalSettings(learning_rate=1.0, l2=0.0))
    rounds = []
    coordinator = Coordinator(
        AggregationSession(settings, 3), round_timeout=1.0, join_timeout=10.0, on_round=rounds.append
    )
    server = AggregationServer(coordinator, "127.0.0.1:0")
    address = await server.start()
    driver = asyncio.create_task(coordinator.run())
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AggregationStub(channel)
        ids = []
        for i, n in enumerate(SIZES):
            reply = await stub.Join(pb.JoinRequest(run_id=RUN, name=f"p{i}", records=n, dimension=3), timeout=5)
            ids.append(reply.party_id)
        yield stub, ids, rounds, driver
    driver.cancel()
    with contextlib.suppress(asyncio.CancelledError, CoordinatorFailed):
        await driver
    await server.stop(0)


def update(party_id: str, round_: int = 1, records: int = SIZES[0], weights=None, **kw):
    vector = serde.vector_to_proto(np.ones(3) if weights is None else np.asarray(weights))
    return pb.UpdateRequest(
        run_id=kw.get("run_id", RUN), party_id=party_id, round=round_, records=records, weights=kw.get("vector", vector)
    )


async def test_silent_party_is_dropped_at_the_deadline(served):
    stub, ids, rounds, _ = served
    task = await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[1], after_round=0), timeout=5)
    await stub.SubmitUpdate(update(ids[1], records=SIZES[1], weights=[2.0, 2.0, 2.0]), timeout=5)
    task = await stub.NextTask(
        pb.TaskRequest(run_id=RUN, party_id=ids[1], after_round=1), timeout=5
    )  # returns once the 1 s deadline closed round 1
    assert task.round == 2
    assert rounds[0].dropped == ("p0",)
    np.testing.assert_allclose(serde.vector_from_proto(task.weights, "t"), 2.0)  # renormalised
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[0], after_round=1), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dropped" in err.value.details()


async def test_a_failing_round_driver_ends_the_run_and_tells_the_parties(served, monkeypatch):
    # An unexpected error in the driver (e.g. an overflow in the noise bookkeeping) used to kill it
    # silently, leaving every party waiting on NextTask until its deadline.
    stub, ids, rounds, driver = served

    def broken_close_round(self):
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(AggregationSession, "close_round", broken_close_round)
    await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[0], after_round=0), timeout=5)
    await stub.SubmitUpdate(update(ids[0], weights=[1.0, 1.0, 1.0]), timeout=5)
    await stub.SubmitUpdate(update(ids[1], records=SIZES[1]), timeout=5)
    task = await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[0], after_round=1), timeout=5)
    assert task.finished
    assert "the aggregation server failed (OverflowError at test_dp_service.py:" in task.stop_reason
    with pytest.raises(CoordinatorFailed, match="OverflowError"):
        await driver
    assert rounds == []

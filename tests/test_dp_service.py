"""The Aggregation gRPC service on 127.0.0.1:0: bad input -> status + message, round unaffected."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from cpml.dp import serde
from cpml.dp.accountant import Budget
from cpml.dp.dpgd import LocalSettings
from cpml.dp.server import AggregationServer, Coordinator
from cpml.dp.session import AggregationSession, RunSettings
from cpml.wire.generated.v1 import aggregation_pb2 as pb
from cpml.wire.generated.v1 import aggregation_pb2_grpc as pb_grpc

SIZES = (30, 90)
RUN = "svc"


@pytest.fixture
async def served():
    settings = RunSettings(RUN, len(SIZES), 3, Budget(2.0, 1e-5), LocalSettings(l2=0.0))
    rounds = []
    coordinator = Coordinator(AggregationSession(settings, 3), round_timeout=1.0,
                              join_timeout=10.0, on_round=rounds.append)
    server = AggregationServer(coordinator, "127.0.0.1:0")
    address = await server.start()
    driver = asyncio.create_task(coordinator.run())
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AggregationStub(channel)
        ids = []
        for i, n in enumerate(SIZES):
            reply = await stub.Join(pb.JoinRequest(run_id=RUN, name=f"p{i}", records=n,
                                                   dimension=3), timeout=5)
            ids.append(reply.party_id)
        yield stub, ids, rounds, coordinator
    driver.cancel()
    await server.stop(0)


def update(party_id: str, round_: int = 1, records: int = SIZES[0], weights=None, **kw):
    vector = serde.vector_to_proto(np.ones(3) if weights is None else np.asarray(weights))
    return pb.UpdateRequest(run_id=kw.get("run_id", RUN), party_id=party_id, round=round_,
                            records=records, weights=kw.get("vector", vector))


BAD = {
    "unknown party": (lambda ids: update("0" * 32), grpc.StatusCode.NOT_FOUND,
                      "is not registered in run 'svc'; call Join first"),
    "record count": (lambda ids: update(ids[0], records=31), grpc.StatusCode.INVALID_ARGUMENT,
                     "registered 30 records but reports 31"),
    "dimension": (lambda ids: update(ids[0], weights=np.ones(5)),
                  grpc.StatusCode.INVALID_ARGUMENT, "has 5 values, expected 3"),
    "nan": (lambda ids: update(ids[0], weights=[0.0, np.nan, 0.0]),
            grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    "inf": (lambda ids: update(ids[0], weights=[np.inf, 0.0, 0.0]),
            grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    "truncated vector": (lambda ids: update(ids[0], vector=pb.Vector(size=3, data=b"\0" * 16)),
                         grpc.StatusCode.INVALID_ARGUMENT, "declares 3 float64 values but carries"),
    "old round": (lambda ids: update(ids[0], round_=0), grpc.StatusCode.FAILED_PRECONDITION,
                  "is for round 0, but round 1 is open"),
    "unknown run": (lambda ids: update(ids[0], run_id="other"), grpc.StatusCode.NOT_FOUND,
                    "Run 'other' is not served here"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_update_gets_a_status_and_the_round_goes_on(served, case):
    stub, ids, rounds, coordinator = served
    make, code, message = BAD[case]
    task = await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[0], after_round=0),
                               timeout=5)
    assert task.round == 1 and not task.finished
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitUpdate(make(ids), timeout=5)
    assert err.value.code() == code
    assert message in err.value.details()
    # Both honest parties still complete round 1, and the aggregate is the weighted mean.
    await stub.SubmitUpdate(update(ids[0], weights=[1.0, 1.0, 1.0]), timeout=5)
    await stub.SubmitUpdate(update(ids[1], records=SIZES[1], weights=[5.0, 5.0, 5.0]), timeout=5)
    task = await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[0], after_round=1),
                               timeout=5)
    assert task.round == 2
    np.testing.assert_allclose(serde.vector_from_proto(task.weights, "t"), 4.0)
    assert rounds[0].dropped == () and rounds[0].released


async def test_join_refusals(served):
    stub, ids, rounds, coordinator = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Join(pb.JoinRequest(run_id=RUN, name="late", records=5, dimension=3),
                        timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "has started" in err.value.details() or "already has" in err.value.details()


async def test_silent_party_is_dropped_at_the_deadline(served):
    stub, ids, rounds, coordinator = served
    task = await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[1], after_round=0),
                               timeout=5)
    await stub.SubmitUpdate(update(ids[1], records=SIZES[1], weights=[2.0, 2.0, 2.0]), timeout=5)
    task = await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[1], after_round=1),
                               timeout=5)  # returns once the 1 s deadline closed round 1
    assert task.round == 2
    assert rounds[0].dropped == ("p0",)
    np.testing.assert_allclose(serde.vector_from_proto(task.weights, "t"), 2.0)  # renormalised
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.NextTask(pb.TaskRequest(run_id=RUN, party_id=ids[0], after_round=1),
                            timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dropped" in err.value.details()

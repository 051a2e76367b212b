"""Every RPC of a worker daemon behind one guard: health included, Mpc job ids checked, peers bounded."""

import grpc
import pytest
from helpers_cluster import running_worker
from sklearn.datasets import load_breast_cancer

from cpml.mpc import MpcPlan, MpcSession
from cpml.protocol import Plan, RunInputs
from cpml.wire import mpc_serde
from cpml.wire.generated.v1 import mpc_pb2 as pb
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc

DEADLINE = 10.0


def party_spec():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0) / 8
    session = MpcSession.create(
        MpcPlan("bgw", 3, 1, groups=1), RunInputs(Plan.case2(9, iterations=1), x[:60], y[:60], seed=1)
    )
    return session.party_spec(0)


async def test_health_answers_undecodable_bytes_with_invalid_argument_and_keeps_serving():
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(b"\xff\xff\xff", timeout=DEADLINE)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "grpc.health.v1.HealthCheckRequest" in err.value.details()
        assert await check(b"", timeout=DEADLINE)  # SERVING still


@pytest.mark.parametrize("job_id", ["", "x" * 129, "job\x00id"])
async def test_mpc_deliver_results_and_leave_refuse_bad_job_ids(job_id):
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.MpcStub(channel)
        calls = {
            "Deliver": lambda: stub.Deliver(pb.MpcEnvelope(job_id=job_id), timeout=DEADLINE),
            "Leave": lambda: stub.Leave(pb.MpcLeaveRequest(job_id=job_id), timeout=DEADLINE),
            "Results": lambda: _first(stub.Results(pb.MpcResultsRequest(job_id=job_id), timeout=DEADLINE)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name


async def _first(stream):
    async for reply in stream:
        return reply


@pytest.mark.parametrize(
    "peer",
    ["unix:/tmp/cpml.sock", "dns:///example.com:80", "127.0.0.1:0", "127.0.0.1:70000", "host name:80", "127.0.0.1"],
)
async def test_a_join_cannot_aim_a_worker_at_anything_but_host_port(peer):
    spec = party_spec()
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.MpcStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Join(
                mpc_serde.join_to_proto("job", spec, [worker.address, peer, worker.address]), timeout=DEADLINE
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "never a unix:" in err.value.details()


async def test_mpc_peer_hosts_bound_where_a_worker_connects():
    spec = party_spec()
    async with (
        running_worker(mpc_peer_hosts=("127.0.0.1",)) as worker,
        grpc.aio.insecure_channel(worker.address) as channel,
    ):
        stub = pb_grpc.MpcStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Join(
                mpc_serde.join_to_proto("job", spec, [worker.address, "10.1.2.3:50051", worker.address]),
                timeout=DEADLINE,
            )
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED and "--mpc-peer-hosts" in err.value.details()
        await stub.Join(mpc_serde.join_to_proto("ok", spec, [worker.address] * 3), timeout=DEADLINE)


async def test_the_aggregation_server_health_is_guarded_too():
    from cpml.dp.accountant import Budget
    from cpml.dp.dpgd import LocalSettings
    from cpml.dp.server import AggregationServer, Coordinator
    from cpml.dp.session import AggregationSession, RunSettings

    settings = RunSettings("guarded", 2, 3, Budget(2.0, 1e-5), LocalSettings(learning_rate=1.0, l2=0.0))
    server = AggregationServer(
        Coordinator(AggregationSession(settings, 3), round_timeout=1.0, join_timeout=5.0), "127.0.0.1:0"
    )
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await check(b"\xff\xff\xff", timeout=DEADLINE)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)


async def test_a_failure_after_the_client_went_away_is_not_logged_as_a_bug(monkeypatch):
    import asyncio

    from structlog.testing import capture_logs

    from cpml.worker.service import WorkerService

    async def slow_then_broken(self, request, context):
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:  # a handler caught up in its own clean-up when the client left
            pass
        raise RuntimeError("while refusing a client that is gone")

    monkeypatch.setattr(WorkerService, "Status", slow_then_broken)
    from cpml.wire.generated.v1 import worker_pb2 as wpb
    from cpml.wire.generated.v1 import worker_pb2_grpc as wpb_grpc

    with capture_logs() as logs:
        async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
            call = wpb_grpc.WorkerStub(channel).Status(wpb.StatusRequest(), timeout=DEADLINE)
            await asyncio.sleep(0.1)
            call.cancel()
            await asyncio.sleep(0.8)
    assert not [e for e in logs if e["event"] == "request failed unexpectedly"], logs
    assert [e for e in logs if e["event"] == "request ended by the client"]

"""The baselines over real gRPC on 127.0.0.1 port 0: workers talk to each other through the Mpc service."""

import contextlib
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sklearn.datasets import load_breast_cancer

from cpml.master.cluster import Cluster, Timeouts
from cpml.master.mpc_train import run_mpc_job
from cpml.mpc import MASTER, Kind, Message, MpcPlan, MpcSession
from cpml.protocol import Plan, simulate
from cpml.wire import mpc_serde
from cpml.wire.generated.v1 import mpc_pb2 as pb
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc
from cpml.wire.generated.v1 import worker_pb2_grpc
from cpml.worker.mpc_service import MpcService
from cpml.worker.service import WorkerService
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import ShareStore

DEADLINE = 10.0


@contextlib.asynccontextmanager
async def mpc_workers(n: int):
    """n in-process servers with the Worker, Mpc and health services, each on its own port."""
    servers, services, addresses = [], [], []
    executor = ThreadPoolExecutor(max_workers=2)
    settings = WorkerSettings(listen="127.0.0.1:0", insecure=True)
    try:
        for _ in range(n):
            server = grpc.aio.server()
            service = MpcService(settings, executor)
            pb_grpc.add_MpcServicer_to_server(service, server)
            worker_pb2_grpc.add_WorkerServicer_to_server(WorkerService(ShareStore(1 << 30), settings, executor), server)
            checker = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(checker, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            await checker.set("cpml.v1.Worker", health_pb2.HealthCheckResponse.SERVING)
            servers.append(server)
            services.append(service)
            addresses.append(f"127.0.0.1:{port}")
        yield addresses
    finally:
        for service in services:
            await service.close()
        for server in servers:
            await server.stop(0.2)
        executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0) / 8
    return x[:150], y[:150]


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
async def test_networked_baseline_trains_bit_identically_to_codedprivateml(data, protocol):
    x, y = data
    plan = Plan.case2(15, iterations=3)
    reference = simulate(plan, x, y, seed=4)
    session = MpcSession.create(MpcPlan.paper(protocol, 15), plan, x, y, seed=4)
    async with mpc_workers(15) as addresses:
        async with Cluster(addresses, timeouts=Timeouts(connect=10, upload=30, round=30, control=5)) as cluster:
            await cluster.wait_healthy()
            report = await run_mpc_job(session, cluster, chunk_bytes=4096, round_timeout=30.0)
    assert np.array_equal(session.weights, reference.trajectory[-1])
    assert [r.loss for r in report.history] == [h.loss for h in reference.history]
    n = session.mpc.group_size
    by_kind = {}
    for stats in report.workers.values():
        for kind, count in stats["messages_by_kind"].items():
            by_kind[kind] = by_kind.get(kind, 0) + count
    if protocol == "bgw":
        assert by_kind["reshare"] == 3 * plan.iterations * n * (n - 1)
    else:
        assert by_kind["masked"] == by_kind["opened"] == 3 * plan.iterations * (n - 1)
        assert by_kind["double"] == 3 * n * (n - 1)
    assert by_kind["gradient"] == 3 * n * plan.iterations
    assert report.setup["messages"] >= session.mpc.active_workers


async def test_bad_messages_get_status_codes_and_the_worker_keeps_serving(data):
    x, y = data
    session = MpcSession.create(MpcPlan("bgw", 9, 1), Plan.case2(9, iterations=1), x, y, seed=1)
    async with mpc_workers(3) as addresses:
        async with grpc.aio.insecure_channel(addresses[0]) as channel:
            stub = pb_grpc.MpcStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Deliver(mpc_serde.envelope_to_proto("nope", Message(
                    MASTER, 0, Kind.WEIGHTS, 0, 0, np.zeros((30, 1), dtype=np.uint32))), timeout=DEADLINE)
            assert err.value.code() is grpc.StatusCode.NOT_FOUND and "Join it first" in err.value.details()
            await stub.Join(mpc_serde.join_to_proto("job", session.party_spec(0), addresses), timeout=DEADLINE)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Join(mpc_serde.join_to_proto("job", session.party_spec(0), addresses), timeout=DEADLINE)
            assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
            good = Message(MASTER, 0, Kind.WEIGHTS, 0, 0, np.zeros((30, 1), dtype=np.uint32))
            corrupt = mpc_serde.envelope_to_proto("job", good)
            corrupt.crc32 ^= 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Deliver(corrupt, timeout=DEADLINE)
            assert err.value.code() is grpc.StatusCode.DATA_LOSS
            foreign = Message(7, 0, Kind.RESHARE, 0, 0, np.zeros((50, 1), dtype=np.uint32))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Deliver(mpc_serde.envelope_to_proto("job", foreign), timeout=DEADLINE)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "does not accept reshare from sender 7" in err.value.details()
            big = Message(MASTER, 0, Kind.WEIGHTS, 0, 0, np.full((30, 1), 2**31, dtype=np.uint32))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Deliver(mpc_serde.envelope_to_proto("job", big), timeout=DEADLINE)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "not field elements" in err.value.details()
            await stub.Deliver(mpc_serde.envelope_to_proto("job", good), timeout=DEADLINE)  # still serving
            left = await stub.Leave(pb.MpcLeaveRequest(job_id="job"), timeout=DEADLINE)
            assert left.existed
            assert not (await stub.Leave(pb.MpcLeaveRequest(job_id="job"), timeout=DEADLINE)).existed


async def test_an_unreachable_peer_fails_the_job_and_the_master_is_told(data):
    x, y = data
    session = MpcSession.create(MpcPlan("bgw", 9, 1), Plan.case2(9, iterations=1), x, y, seed=1)
    async with mpc_workers(1) as addresses:
        peers = [addresses[0], "127.0.0.1:1", "127.0.0.1:1"]  # nobody listens on port 1
        async with grpc.aio.insecure_channel(addresses[0]) as channel:
            stub = pb_grpc.MpcStub(channel)
            await stub.Join(mpc_serde.join_to_proto("job", session.party_spec(0), peers), timeout=DEADLINE)
            results = stub.Results(pb.MpcResultsRequest(job_id="job"), timeout=DEADLINE)
            for message in session.data_messages(1000):
                if message.receiver == 0:
                    await stub.Deliver(mpc_serde.envelope_to_proto("job", message), timeout=DEADLINE)
            for message in session.weight_messages():
                if message.receiver == 0:
                    await stub.Deliver(mpc_serde.envelope_to_proto("job", message), timeout=DEADLINE)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in results:
                    pass
            assert err.value.code() is grpc.StatusCode.ABORTED
            assert re.search(r"worker [12] refused or did not take a message: UNAVAILABLE", err.value.details())

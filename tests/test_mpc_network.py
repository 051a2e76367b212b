"""The baselines over real gRPC on 127.0.0.1 port 0: workers talk to each other through the Mpc service."""

import asyncio
import contextlib
import re
import time

import grpc
import numpy as np
import pytest
from helpers_cluster import make_pki, running_worker
from sklearn.datasets import load_breast_cancer
from structlog.testing import capture_logs

from cpml.master.cluster import Cluster, Timeouts
from cpml.master.mpc_train import MpcJobFailed, run_mpc_job
from cpml.mpc import MASTER, Kind, Message, MpcParty, MpcPlan, MpcSession
from cpml.protocol import Plan, RunInputs, simulate
from cpml.wire import mpc_serde
from cpml.wire.generated.v1 import mpc_pb2 as pb
from cpml.wire.generated.v1 import mpc_pb2_grpc as pb_grpc
from cpml.wire.tls import channel_credentials
from cpml.worker.mpc_service import MpcService

DEADLINE = 10.0


@contextlib.asynccontextmanager
async def mpc_workers(n: int, **settings):
    """n real worker daemons (Worker, Mpc and health services) in this process, each on its own port."""
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(running_worker(**settings)) for _ in range(n)]
        yield [w.address for w in workers]


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0) / 8
    return x[:150], y[:150]


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
async def test_networked_baseline_trains_bit_identically_to_codedprivateml(data, protocol):
    x, y = data
    plan = Plan.case2(15, iterations=3)
    assert plan.residues >= 2  # every share, message and decoding in two prime fields
    reference = simulate(RunInputs(plan, x, y, seed=4))
    session = MpcSession.create(MpcPlan.paper(protocol, 15), RunInputs(plan, x, y, seed=4))
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


async def test_single_modulus_joins_and_payloads_are_refused_not_misread(data):
    # cpml 0.1 masters sent one `modulus` and payloads without the residue axis: a worker refuses both with
    # INVALID_ARGUMENT and says why, rather than computing in the wrong field or misreading the shapes.
    x, y = data
    session = MpcSession.create(MpcPlan("bgw", 3, 1, groups=1), RunInputs(Plan.case2(9, iterations=1), x, y, seed=1))
    spec = session.party_spec(0)
    async with mpc_workers(1) as addresses, grpc.aio.insecure_channel(addresses[0]) as channel:
        stub = pb_grpc.MpcStub(channel)
        old = mpc_serde.join_to_proto("old", spec, addresses * 3)
        del old.moduli[:]
        old.modulus = spec.moduli[0]
        old.coefficients.CopyFrom(mpc_serde.tensor_to_proto(spec.coefficient_array()[0]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Join(old, timeout=DEADLINE)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "names the single modulus 33554393 (the cpml 0.1 format)" in err.value.details()
        await stub.Join(mpc_serde.join_to_proto("new", spec, addresses * 3), timeout=DEADLINE)
        weights = next(m for m in session.weight_messages() if m.receiver == 0)
        one_field = mpc_serde.envelope_to_proto("new", Message(MASTER, 0, Kind.WEIGHTS, 0, 0, weights.payload[0]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Deliver(one_field, timeout=DEADLINE)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (
            "weights payload holds 30 residue slice(s) but the job computes modulo 2 prime(s) (33554393, 33554383)"
        ) in err.value.details()
        await stub.Deliver(mpc_serde.envelope_to_proto("new", weights), timeout=DEADLINE)  # both fields: taken
        assert (await stub.Leave(pb.MpcLeaveRequest(job_id="new"), timeout=DEADLINE)).existed


async def test_an_unexpected_failure_in_a_party_reaches_the_master_at_once(data, monkeypatch):
    # A bug inside the protocol code (here a KeyError quoting a share value) used to end the worker's task
    # silently: the master only learnt of it from its round timeout. Now the job fails at once, the status
    # names the exception's type and place but not its text, and the daemon serves the next job.
    x, y = data
    secret = 31337123
    broken = {"on": True}
    handle = MpcParty.handle

    def failing_handle(self, message):
        if broken["on"] and message.kind is Kind.WEIGHTS:
            raise KeyError(f"share value {secret}")
        return handle(self, message)

    monkeypatch.setattr(MpcParty, "handle", failing_handle)
    plan = Plan.case2(9, iterations=1)
    timeouts = Timeouts(connect=10, upload=30, round=30, control=5)
    with capture_logs() as logs:
        async with mpc_workers(3) as addresses, Cluster(addresses, timeouts=timeouts) as cluster:
            await cluster.wait_healthy()
            session = MpcSession.create(MpcPlan("bh08", 3, 1, groups=1), RunInputs(plan, x, y, seed=2))
            began = time.monotonic()
            with pytest.raises(MpcJobFailed) as err:
                await run_mpc_job(session, cluster, chunk_bytes=4096, round_timeout=30.0)
            assert time.monotonic() - began < 10  # the failure, not the 30 s round timeout
            broken["on"] = False
            good = MpcSession.create(MpcPlan("bh08", 3, 1, groups=1), RunInputs(plan, x, y, seed=2))
            await run_mpc_job(good, cluster, chunk_bytes=4096, round_timeout=30.0)
    assert np.array_equal(good.weights, simulate(RunInputs(plan, x, y, seed=2)).weights)
    assert re.search(
        r"ABORTED: .*failed processing weights of round 0: KeyError at test_mpc_network.py:\d+", str(err.value)
    )
    assert str(secret) not in str(err.value)
    assert any(e.get("error") == "KeyError" and e["event"] == "mpc step failed" for e in logs)
    assert not [e for e in logs if str(secret) in repr(e)]


async def test_an_unreachable_peer_fails_the_job_and_the_master_is_told(data):
    x, y = data
    session = MpcSession.create(MpcPlan("bgw", 9, 1), RunInputs(Plan.case2(9, iterations=1), x, y, seed=1))
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


async def test_workers_talk_to_each_other_over_mutual_tls(data, tmp_path):
    x, y = data
    pki = make_pki(tmp_path, "mpc")  # the worker certificate serves and authenticates as a client
    ca, cert, key = pki.ca, pki.server_cert, pki.server_key
    plan = Plan.case2(9, iterations=2)
    session = MpcSession.create(MpcPlan("bh08", 3, 1, groups=1), RunInputs(plan, x, y, seed=6))
    tls = dict(insecure=False, tls_cert=cert, tls_key=key, tls_client_ca=ca)
    async with mpc_workers(3, **tls) as addresses:
        async with Cluster(
            addresses, channel_credentials(ca, cert, key), timeouts=Timeouts(connect=10, upload=30, round=30, control=5)
        ) as cluster:
            await cluster.wait_healthy()
            report = await run_mpc_job(session, cluster, chunk_bytes=4096, round_timeout=30.0)
    assert np.array_equal(session.weights, simulate(RunInputs(plan, x, y, seed=6)).weights)
    assert sum(w["messages_by_kind"]["masked"] for w in report.workers.values()) == 2 * 2


@pytest.fixture
def held_join(monkeypatch):
    """A slow worker: the one at group position 2 holds its Join until a Deliver (or, with until="Leave",
    a Leave) has been answered on it, or 0.5 s have passed. Returns the state: until, job_id, worker."""
    state = {"until": "Deliver", "job_id": None, "worker": None}
    reached = asyncio.Event()
    join, deliver, leave = MpcService.Join, MpcService.Deliver, MpcService.Leave

    async def late_join(self, request, context):
        if request.position == 2:
            state["job_id"], state["worker"] = request.job_id, self
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reached.wait(), 0.5)
        return await join(self, request, context)

    async def watched_deliver(self, request, context):
        try:
            return await deliver(self, request, context)
        finally:
            if self is state["worker"] and state["until"] == "Deliver":
                reached.set()

    async def watched_leave(self, request, context):
        try:
            return await leave(self, request, context)
        finally:
            if self is state["worker"] and state["until"] == "Leave":
                reached.set()

    monkeypatch.setattr(MpcService, "Join", late_join)
    monkeypatch.setattr(MpcService, "Deliver", watched_deliver)
    monkeypatch.setattr(MpcService, "Leave", watched_leave)
    return state


async def test_a_worker_slow_to_join_gets_no_peer_message_before_its_join(data, held_join):
    x, y = data
    plan = Plan.case2(9, iterations=1)
    session = MpcSession.create(MpcPlan("bh08", 3, 1, groups=1), RunInputs(plan, x, y, seed=2))
    timeouts = Timeouts(connect=10, upload=30, round=30, control=5)
    async with mpc_workers(3) as addresses, Cluster(addresses, timeouts=timeouts) as cluster:
        await cluster.wait_healthy()
        await run_mpc_job(session, cluster, chunk_bytes=4096, round_timeout=30.0)
    assert np.array_equal(session.weights, simulate(RunInputs(plan, x, y, seed=2)).weights)


async def test_a_refused_join_leaves_no_job_behind_on_a_worker_still_joining(data, held_join, monkeypatch):
    x, y = data
    held_join["until"] = "Leave"
    join = MpcService.Join

    async def refuse_position_1(self, request, context):
        if request.position == 1:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no room for another job")
        return await join(self, request, context)

    monkeypatch.setattr(MpcService, "Join", refuse_position_1)
    session = MpcSession.create(MpcPlan("bh08", 3, 1, groups=1), RunInputs(Plan.case2(9, iterations=1), x, y, seed=2))
    timeouts = Timeouts(connect=10, upload=30, round=30, control=5)
    async with mpc_workers(3) as addresses:
        async with Cluster(addresses, timeouts=timeouts) as cluster:
            await cluster.wait_healthy()
            with pytest.raises(MpcJobFailed, match="worker 1 .* refused to join the bh08 job: RESOURCE_EXHAUSTED"):
                await run_mpc_job(session, cluster, chunk_bytes=4096, round_timeout=30.0)
        async with grpc.aio.insecure_channel(addresses[2]) as channel:
            leave = pb.MpcLeaveRequest(job_id=held_join["job_id"])
            left = await pb_grpc.MpcStub(channel).Leave(leave, timeout=DEADLINE)
    assert not left.existed  # the master's Leave came after worker 2's Join, so no orphan job is left there

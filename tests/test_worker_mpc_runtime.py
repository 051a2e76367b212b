"""The worker's MPC runtime without gRPC: runtimes linked in memory, the master played by an MpcSession."""

import asyncio
import contextlib
import dataclasses
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cpml.errors import CpmlError
from cpml.mpc import Kind, Message, MpcParty, MpcPlan, MpcSession, ProtocolError, simulate_mpc
from cpml.protocol import Plan, RunInputs
from cpml.wire.serde import MalformedMessage
from cpml.worker.mpc_runtime import (
    DuplicateMessage,
    JobClosed,
    JobFailed,
    JobHasFailed,
    MpcRuntime,
    PeerNotAllowed,
    PeerRefused,
    ResultsAlreadyOpen,
    RoundTooFarAhead,
    UnknownMpcJob,
)
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import JobExists, ShareStore, ShareStoreFull

PLAN = Plan.case2(9, iterations=2)
ADDRESSES = [f"worker{i}:{5000 + i}" for i in range(3)]
DEADLINE = 10.0


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((60, 8)) / 8, rng.integers(0, 2, 60).astype(float)


def _session(protocol="bgw"):
    return MpcSession.create(MpcPlan(protocol, 3, 1, groups=1), RunInputs(PLAN, *_data(), seed=5))


class MemoryLink:
    """A PeerLink that hands a copy of each message to another runtime, refusing as a network peer would."""

    def __init__(self, runtimes, address):
        self.runtimes, self.address, self.closed = runtimes, address, False

    async def send(self, job_id, message):
        runtime = self.runtimes.get(self.address)
        if runtime is None:
            raise PeerRefused("UNAVAILABLE: nobody listens there")
        try:
            runtime.job(job_id).deliver(dataclasses.replace(message, payload=message.payload.copy()))
        except CpmlError as exc:
            raise PeerRefused(f"{exc.status}: {exc}") from None

    async def close(self):
        self.closed = True


class Network:
    """Worker runtimes by address, linked in memory; `links` are the links they opened."""

    def __init__(self, executor):
        self.executor = executor
        self.runtimes, self.stores, self.links = {}, {}, []

    def start(self, address, cap=1 << 26, **settings):
        """A runtime at `address` (replacing the one there), with a store of `cap` bytes."""
        self.stores[address] = ShareStore(cap)
        settings = WorkerSettings(insecure=True, share_bytes_cap=cap, **settings)
        self.runtimes[address] = MpcRuntime(settings, self.executor, self.stores[address], self._connect)
        return self.runtimes[address]

    def _connect(self, address):
        self.links.append(MemoryLink(self.runtimes, address))
        return self.links[-1]


@pytest.fixture
async def network():
    """Three runtimes at ADDRESSES."""
    with ThreadPoolExecutor(2) as executor:
        network = Network(executor)
        for address in ADDRESSES:
            network.start(address)
        yield network
        for runtime in network.runtimes.values():
            await runtime.close()


def _join_all(runtimes, session, job_id="job"):
    return [runtimes[address].join(job_id, session.party_spec(w), ADDRESSES) for w, address in enumerate(ADDRESSES)]


def _deliver(runtimes, message, job_id="job"):
    runtimes[ADDRESSES[message.receiver]].job(job_id).deliver(message)


async def _train(runtimes, session, job_id="job"):
    """Play the master: share the data, then each round the weights, and collect the gradient shares."""
    jobs = _join_all(runtimes, session, job_id)
    replies = asyncio.Queue()

    async def read(job):
        with contextlib.suppress(JobClosed):
            async for message in job.results():
                replies.put_nowait(message)

    readers = [asyncio.create_task(read(job)) for job in jobs]
    try:
        for message in session.data_messages(25):
            _deliver(runtimes, message, job_id)
        while not session.done:
            for message in session.weight_messages():
                _deliver(runtimes, message, job_id)
            while session.receive(await asyncio.wait_for(replies.get(), DEADLINE)) is None:
                pass
    finally:
        left = [await runtime.leave(job_id) for runtime in runtimes.values()]
        await asyncio.gather(*readers)
    return left


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
async def test_a_job_routed_in_memory_trains_and_talks_like_the_simulator(network, protocol):
    session = _session(protocol)
    left = await _train(network.runtimes, session)
    reference = simulate_mpc(session.mpc, RunInputs(PLAN, *_data(), seed=5))
    assert np.array_equal(session.weights, reference.training.weights)
    sent = Counter()
    for job in left:
        sent.update(job.sent_by_kind()[0])
    from_master = ("setup", "offline", "online", Kind.DATA.value, Kind.WEIGHTS.value)
    assert sent == {kind: n for kind, n in reference.traffic.messages.items() if kind not in from_master}
    assert all(link.closed for link in network.links) and len(network.links) == 3 * 2
    assert all(store.used_bytes == 0 for store in network.stores.values())


def _bad_peer(runtimes, session):
    runtimes[ADDRESSES[0]].join("job", session.party_spec(0), [ADDRESSES[0], "unix:/tmp/peer", ADDRESSES[2]])


@pytest.mark.parametrize(
    "join, settings, error, says",
    [
        (_bad_peer, {}, MalformedMessage, "never a unix: or other gRPC target"),
        (_join_all, {"mpc_peer_hosts": ("127.0.0.1",)}, PeerNotAllowed, r"--mpc-peer-hosts \(127.0.0.1\)"),
        (_join_all, {"cap": 1 << 10}, ShareStoreFull, r"its party \(share, products and BH08 pool\)"),
        (lambda runtimes, session: _join_all(runtimes, session, job_id=""), {}, MalformedMessage, "empty job_id"),
    ],
)
async def test_a_refused_join_leaves_nothing_behind(network, join, settings, error, says):
    refusing = network.start(ADDRESSES[0], **settings)
    with pytest.raises(error, match=says):
        join(network.runtimes, _session())
    assert not refusing._jobs and network.stores[ADDRESSES[0]].used_bytes == 0 and not network.links
    with pytest.raises(UnknownMpcJob, match="the master must Join it first"):
        refusing.job("job")


async def test_a_second_join_of_one_job_is_refused(network):
    runtime, spec = network.runtimes[ADDRESSES[0]], _session().party_spec(0)
    job = runtime.join("job", spec, ADDRESSES)
    held = network.stores[ADDRESSES[0]].used_bytes
    with pytest.raises(JobExists, match="MPC job 'job' already exists on this worker; Leave it first"):
        runtime.join("job", spec, ADDRESSES)
    assert runtime.job("job") is job and network.stores[ADDRESSES[0]].used_bytes == held and len(network.links) == 2


def _reshare(spec, round_number, sender=1):
    """A peer's reshare message to worker 0 (its values are not looked at)."""
    return Message(sender, 0, Kind.RESHARE, round_number, 0, np.zeros((spec.residues, spec.rows, spec.r), np.uint32))


@pytest.mark.parametrize(
    "messages, error",
    [
        (lambda weights, spec: [weights, weights], DuplicateMessage),
        (lambda weights, spec: [dataclasses.replace(weights, round=2)], RoundTooFarAhead),
        (lambda weights, spec: [_reshare(spec, 0, sender=0)], ProtocolError),  # its own share, from outside
        (lambda weights, spec: [dataclasses.replace(weights, receiver=1)], ProtocolError),  # for another worker
    ],
)
async def test_a_message_the_party_must_not_buffer_is_refused(network, messages, error):
    session = _session()
    spec = session.party_spec(0)
    job = network.runtimes[ADDRESSES[0]].join("job", spec, ADDRESSES)
    *taken, refused = messages(next(m for m in session.weight_messages() if m.receiver == 0), spec)
    for message in taken:
        job.deliver(message)
    with pytest.raises(error):
        job.deliver(refused)
    assert job.inbox.qsize() == len(taken) and job.failure is None


async def test_a_late_message_is_dropped_unqueued(network):
    spec = _session().party_spec(0)
    job = network.runtimes[ADDRESSES[0]].join("job", spec, ADDRESSES)
    job.party._round = 5  # as if five rounds were done
    job.deliver(_reshare(spec, 3))
    assert job.inbox.qsize() == 0 and not job.seen
    job.deliver(_reshare(spec, 6))  # one ahead: kept
    assert job.inbox.qsize() == 1 and job.seen == {(Kind.RESHARE, 6, 0, 1)}


async def test_a_refusing_peer_fails_the_job_and_the_master_is_told(network):
    del network.runtimes[ADDRESSES[1]], network.runtimes[ADDRESSES[2]]  # nobody at the peers' addresses
    session = _session()
    job = network.runtimes[ADDRESSES[0]].join("job", session.party_spec(0), ADDRESSES)
    results = job.results()
    weights = next(m for m in session.weight_messages() if m.receiver == 0)
    for message in [*session.data_messages(25), weights]:
        if message.receiver == 0:
            job.deliver(message)
    with pytest.raises(JobFailed, match=r"worker [12] refused or did not take a message: UNAVAILABLE"):
        await asyncio.wait_for(anext(results), DEADLINE)
    with pytest.raises(JobHasFailed, match="MPC job 'job' failed: worker"):
        job.deliver(dataclasses.replace(weights, round=1))
    with pytest.raises(JobFailed):  # a reader that comes later learns it too
        await anext(job.results())


async def test_leaving_ends_the_open_results_and_frees_the_party(network):
    runtime = network.runtimes[ADDRESSES[0]]
    job = runtime.join("job", _session().party_spec(0), ADDRESSES)
    assert network.stores[ADDRESSES[0]].used_bytes > 0
    results = job.results()
    reader = asyncio.create_task(anext(results))
    await asyncio.sleep(0.01)
    assert job.results_open
    with pytest.raises(ResultsAlreadyOpen):
        await anext(job.results())
    assert await runtime.leave("job") is job
    with pytest.raises(JobClosed, match="MPC job 'job' was left or expired on this worker"):
        await asyncio.wait_for(reader, DEADLINE)
    assert await runtime.leave("job") is None
    assert network.stores[ADDRESSES[0]].used_bytes == 0 and all(link.closed for link in job.links.values())
    with pytest.raises(UnknownMpcJob):
        runtime.job("job")


async def test_only_idle_jobs_expire(network):
    runtime, store = network.start(ADDRESSES[0], job_idle_seconds=60), network.stores[ADDRESSES[0]]
    session = _session()
    idle, busy = (runtime.join(job_id, session.party_spec(0), ADDRESSES) for job_id in ("idle", "busy"))
    idle.touched -= 61  # as if no message had come for a minute
    busy.touched -= 61
    busy.deliver(next(m for m in session.data_messages(25) if m.receiver == 0))  # a message: busy again
    assert await runtime.expire_idle() == ["idle"]
    assert all(link.closed for link in idle.links.values())
    assert runtime.job("busy") is busy and store.used_bytes > 0
    busy.touched -= 61
    assert await runtime.expire_idle() == ["busy"] and store.used_bytes == 0


async def test_a_failing_party_step_fails_the_job_without_quoting_its_error(network, monkeypatch):
    secret = 31337123

    def failing_handle(self, message):
        raise KeyError(f"share value {secret}")

    monkeypatch.setattr(MpcParty, "handle", failing_handle)
    session = _session()
    job = network.runtimes[ADDRESSES[0]].join("job", session.party_spec(0), ADDRESSES)
    results = job.results()
    job.deliver(next(m for m in session.weight_messages() if m.receiver == 0))
    with pytest.raises(JobFailed) as err:
        await asyncio.wait_for(anext(results), DEADLINE)
    assert re.search(
        r"failed processing weights of round 0: KeyError at test_worker_mpc_runtime.py:\d+", str(err.value)
    )
    assert str(secret) not in str(err.value)

"""The BGW and BH08 baselines compute exactly what CodedPrivateML computes, with O(N^2) vs O(N) messages,
in every residue field of the same basis (plans here default to 2 residues)."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from cpml.mpc import (
    MASTER,
    Kind,
    Message,
    MpcParty,
    MpcPlan,
    MpcSession,
    PartySpec,
    ProtocolError,
    simulate_mpc,
)
from cpml.mpc.party import DoubleSharingPool
from cpml.protocol import CodedTrainer, Plan, RunInputs, simulate, worker_compute


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0) / 8
    return x[:240], y[:240]


def deliver(pending, parties, session, rng=None):
    """Move messages until none is left; return what the master finished."""
    finished = []
    while pending:
        message = pending.pop(int(rng.integers(len(pending))) if rng is not None else 0)
        if message.receiver == MASTER:
            outcome = session.receive(message)
            finished += [outcome] if outcome is not None else []
        else:
            pending += parties[message.receiver].handle(message)
    return finished


def started(session):
    parties = {w: MpcParty(session.party_spec(w)) for w in range(session.mpc.active_workers)}
    pending = [m for party in parties.values() for m in party.start()]
    pending += list(session.data_messages(rows_per_chunk=25))
    return parties, pending


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
@pytest.mark.parametrize(
    ("plan", "n_workers", "t"),
    [
        (Plan(n_workers=10, k=3, t=1, iterations=1), 10, 1),
        (Plan(n_workers=16, k=3, t=1, r=2, lx=2, lw=4, lc=3, p=2**31 - 1, iterations=1), 15, 2),
        (Plan(n_workers=10, k=3, t=1, residues=3, iterations=1), 10, 1),
    ],
)
def test_decoded_blocks_equal_the_codedprivateml_decoding_exactly(data, protocol, plan, n_workers, t):
    x, y = data
    assert plan.residues >= 2
    # CPML with K = 3 partitions and the MPC with G = 3 groups split the rows identically.
    trainer = CodedTrainer.create(RunInputs(plan, x, y, seed=11))
    shares = trainer.encode_dataset()
    w_shares = trainer.weight_shares()
    coefficients = trainer.job_spec.coefficient_array()
    replies = {i: worker_compute(trainer.basis, shares[i], w_shares[i], coefficients) for i in range(plan.n_workers)}
    cpml_blocks = np.stack(
        [
            scheme.decode({i: reply[j] for i, reply in replies.items()}, plan.threshold)
            for j, scheme in enumerate(trainer.schemes)
        ]
    )  # residues x K x d

    session = MpcSession.create(MpcPlan(protocol, n_workers, t), RunInputs(plan, x, y, seed=11))
    parties, pending = started(session)
    pending += session.weight_messages()
    gradient_shares = {}
    while pending:
        message = pending.pop()
        if message.receiver == MASTER:
            gradient_shares[message.sender] = message.payload
        else:
            pending += parties[message.receiver].handle(message)
    assert np.array_equal(session.decode_blocks(gradient_shares), cpml_blocks)
    assert np.array_equal(session.decode_sums(gradient_shares), trainer.decode_sums(replies))
    assert np.array_equal(session.decode_gradient(gradient_shares), trainer.decode_gradient(replies))


def test_decoded_blocks_equal_a_python_int_reference(data):
    x, y = data
    plan = Plan(n_workers=10, k=3, t=1, iterations=1)
    session = MpcSession.create(MpcPlan("bh08", 9, 1), RunInputs(plan, x, y, seed=5))
    parties, pending = started(session)
    pending += session.weight_messages()
    wbar = session.quantized_weights()
    blocks = {}
    while pending:
        message = pending.pop(0)
        if message.receiver == MASTER:
            blocks[message.sender] = message.payload
        else:
            pending += parties[message.receiver].handle(message)
    decoded = session.decode_blocks(blocks)  # residues x G x d
    assert decoded.shape[0] == plan.residues == 2
    c = [int(v) for v in session.coefficients]
    for g in range(3):
        xg = session.partitions[g].astype(object)
        z = xg @ wbar[:, 0].astype(object)
        s = np.array([(c[0] + c[1] * v) for v in z], dtype=object)
        for j, p in enumerate(plan.moduli):
            assert [int(v) % p for v in xg.T @ s] == decoded[j, g].tolist()


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
@pytest.mark.parametrize("r", [1, 2])
def test_training_trajectory_is_bit_identical_to_the_codedprivateml_simulator(data, protocol, r):
    x, y = data
    if r == 1:
        plan = Plan.case2(15, iterations=4)
    else:
        plan = Plan.case2(22, r=2, lx=2, lw=4, lc=3, p=2**31 - 1, iterations=3)
    assert plan.residues >= 2
    reference = simulate(RunInputs(plan, x, y, seed=7))
    run = simulate_mpc(MpcPlan.paper(protocol, 15), RunInputs(plan, x, y, seed=7), delivery_seed=3, rows_per_chunk=30)
    assert np.array_equal(run.training.trajectory, reference.trajectory)
    assert [h.loss for h in run.training.history] == [h.loss for h in reference.history]


def per_round(run, kind):
    return run.traffic.messages[kind.value] / run.training.plan.iterations


@pytest.mark.parametrize("n_workers", [9, 21, 33])
def test_message_counts_are_quadratic_for_bgw_and_linear_for_bh08(data, n_workers):
    x, y = data
    plan = Plan.case2(n_workers, iterations=2)
    mpc = {proto: MpcPlan.paper(proto, n_workers) for proto in ("bgw", "bh08")}
    n, g = mpc["bgw"].group_size, mpc["bgw"].groups
    bgw = simulate_mpc(mpc["bgw"], RunInputs(plan, x, y, seed=1))
    bh08 = simulate_mpc(mpc["bh08"], RunInputs(plan, x, y, seed=1))
    # Worker-to-worker messages per round and multiplication: n(n-1) reshares vs 2(n-1) to and from a king.
    assert per_round(bgw, Kind.RESHARE) == g * n * (n - 1)
    assert per_round(bh08, Kind.MASKED) == per_round(bh08, Kind.OPENED) == g * (n - 1)
    assert bh08.traffic.messages["offline"] == g * n * (n - 1)  # once per job, not per round
    for run in (bgw, bh08):
        assert per_round(run, Kind.WEIGHTS) == per_round(run, Kind.GRADIENT) == g * n
    # one field element per row of a group's block in each residue field: the bytes grow with the residues,
    # the message counts do not (one message carries every residue)
    product_bytes = 4 * plan.residues * (-(-x.shape[0] // 3))
    assert bgw.traffic.bytes["reshare"] == 2 * g * n * (n - 1) * product_bytes
    assert bh08.traffic.bytes["masked"] == bh08.traffic.bytes["opened"] == 2 * g * (n - 1) * product_bytes


def test_late_duplicate_and_foreign_messages(data):
    x, y = data
    session = MpcSession.create(MpcPlan("bgw", 9, 1), RunInputs(Plan.case2(9, iterations=3), x, y, seed=2))
    parties, pending = started(session)
    deliver(pending, parties, session)
    weights = session.weight_messages()
    first = weights[0]
    sent = parties[0].handle(first)
    with pytest.raises(ProtocolError, match="duplicate weights message from worker -1"):
        parties[0].handle(first)
    deliver(sent + weights[1:], parties, session)
    assert session.round == 1
    assert parties[0].handle(first) == []  # a late message of a finished round is dropped
    bad = Message(5, 0, Kind.RESHARE, 1, 0, first.payload)
    with pytest.raises(ProtocolError, match="worker 0 does not accept reshare from sender 5"):
        parties[0].handle(bad)
    wrong_shape = Message(1, 0, Kind.RESHARE, 1, 0, np.zeros(3, dtype=np.uint32))
    with pytest.raises(ProtocolError, match=r"reshare payload must have shape \(2, 80, 1\), not \(3,\)"):
        parties[0].handle(wrong_shape)
    single_field = Message(1, 0, Kind.RESHARE, 1, 0, np.zeros((80, 1), dtype=np.uint32))  # no residue axis
    with pytest.raises(ProtocolError, match=r"reshare payload must have shape \(2, 80, 1\), not \(80, 1\)"):
        parties[0].handle(single_field)
    p2 = session.plan.moduli[1]
    outside = np.zeros((2, 80, 1), dtype=np.uint32)
    outside[1, 0, 0] = p2  # below the first modulus, but not an element of the second field
    with pytest.raises(ProtocolError, match=f"reshare payload holds values outside F_{p2}"):
        parties[0].handle(Message(1, 0, Kind.RESHARE, 1, 0, outside))
    with pytest.raises(ProtocolError, match="a bgw worker does not accept masked messages"):
        parties[0].handle(Message(1, 0, Kind.MASKED, 1, 0, np.zeros((2, 80, 1), dtype=np.uint32)))
    assert session.receive(Message(0, MASTER, Kind.GRADIENT, 0, 0, np.zeros((2, 30), dtype=np.uint32))) is None


def test_plan_and_pool_refusals():
    with pytest.raises(
        ValueError, match=r"Argument 'n_workers' must be at least 9 for T = floor\(\(N-3\)/6\) >= 1, not 8\."
    ):
        MpcPlan.paper("bgw", 8)
    with pytest.raises(ValueError, match=r"Argument 'protocol' must be one of bgw, bh08, not 'spdz'\."):
        MpcPlan("spdz", 9, 1)
    with pytest.raises(ValueError, match=r"Argument 'n_workers' must be at least G\(2T\+1\) = 15"):
        MpcPlan("bgw", 14, 2)
    assert (MpcPlan.paper("bh08", 50).t, MpcPlan.paper("bh08", 50).group_size) == (7, 15)
    pool = DoubleSharingPool(np.arange(4, dtype=np.uint32), np.arange(4, dtype=np.uint32))
    pool.take(3)
    with pytest.raises(RuntimeError, match="prepared 4 double sharings but 5 are needed"):
        pool.take(2)


@pytest.mark.parametrize("protocol", ["bgw", "bh08"])
def test_one_residue_field_still_trains_bit_identically(data, protocol):
    x, y = data
    plan = Plan.case2(15, residues=1, lx=2, lw=5, lc=6, iterations=3)
    reference = simulate(RunInputs(plan, x, y, seed=7))
    run = simulate_mpc(MpcPlan.paper(protocol, 15), RunInputs(plan, x, y, seed=7), delivery_seed=5, rows_per_chunk=30)
    assert np.array_equal(run.training.trajectory, reference.trajectory)
    assert run.traffic.bytes["gradient"] == plan.iterations * 15 * 4 * x.shape[1]  # one field: d elements each


def test_a_party_spec_refuses_moduli_it_cannot_compute_over():
    spec = dict(protocol="bgw", t=1, group_size=3, first=0, position=0, rows=2, d=1, r=1, start_round=0, rounds=1)
    with pytest.raises(ValueError, match=r"Argument 'moduli' must be distinct"):
        PartySpec(moduli=(31, 31), coefficients=((0, 1), (0, 1)), **spec)
    with pytest.raises(ValueError, match=r"Argument 'moduli' must all exceed 2\(2T\+1\) = 6, not \(31, 5\)\."):
        PartySpec(moduli=(31, 5), coefficients=((0, 1), (0, 1)), **spec)
    with pytest.raises(ValueError, match=r"Argument 'coefficients' must hold one row per modulus \(2\), not 1\."):
        PartySpec(moduli=(31, 29), coefficients=((0, 1),), **spec)
    with pytest.raises(ValueError, match=r"Argument 'coefficients' must hold elements of F_29"):
        PartySpec(moduli=(31, 29), coefficients=((0, 1), (0, 30)), **spec)

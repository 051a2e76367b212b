"""The master against in-process workers on 127.0.0.1:0: bit-identity, stragglers, failures, resume, TLS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import structlog
from helpers_cluster import make_pki, running_worker

from cpml.data import load_dataset
from cpml.errors import ExitCode
from cpml.master import cli
from cpml.master.cluster import NotEnoughWorkers, Timeouts, WorkersUnreachable
from cpml.master.job import PLAINTEXT_WARNING, ResumeError, load_training_data, plan_changes
from cpml.master.mpc_train import make_mpc_plans
from cpml.master.rejoin import Rejoiner
from cpml.master.rounds import RoundTimeout
from cpml.master.settings import TrainSettings, parse_train_args, train_settings
from cpml.master.train import make_plan, train
from cpml.protocol import DataProfile, Plan, RunInputs, auto_precision, simulate

DATASET = "digits-4v9"


def _settings(addresses, tmp_path, **overrides) -> TrainSettings:
    return TrainSettings(
        **{
            "dataset": DATASET,
            "workers": tuple(addresses),
            "insecure": True,
            "iterations": 4,
            "out": tmp_path / "run",
            "timeouts": Timeouts(connect=10, upload=30, round=10),
            "progress": False,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def _workers(n, faults=None, **common):
    faults = faults or {}
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(running_worker(**{**common, **faults.get(i, {})})) for i in range(n)]
        yield servers


def _simulated(plan, seed=0):
    """The in-process simulator on the data the master trains on (its default scaling and intercept)."""
    data = load_training_data(TrainSettings(dataset=DATASET, seed=seed))
    return simulate(RunInputs(plan, data.x_train, data.y_train, seed, data.x_test, data.y_test))


async def test_weights_are_bit_identical_to_the_simulator(tmp_path):
    async with _workers(5) as servers:
        with structlog.testing.capture_logs() as logs:
            report = await train(_settings([s.address for s in servers], tmp_path, chunk_bytes=2048))
    assert PLAINTEXT_WARNING in [e["event"] for e in logs if e["log_level"] == "warning"]
    reference = _simulated(report.plan)
    assert report.weights.tobytes() == reference.weights.tobytes()
    assert [r.loss for r in report.history] == [s.loss for s in reference.history]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 4 and metrics["upload"]["chunks"] > 5 * 10  # many small chunks
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    np.testing.assert_array_equal(model["weights"], report.weights)


async def test_eval_every_skips_the_metrics_between_evaluations_and_keeps_the_weights(tmp_path):
    async with _workers(5) as servers:
        report = await train(_settings([s.address for s in servers], tmp_path, iterations=5, eval_every=2))
    assert [r.loss is not None for r in report.history] == [False, True, False, True, True]  # and the last
    assert [r.test_accuracy is not None for r in report.history] == [False, True, False, True, True]
    assert all(r.test_r2 is None and r.test_rmse is None for r in report.history)  # a classifier has no R², ever
    reference = _simulated(report.plan)
    assert report.weights.tobytes() == reference.weights.tobytes()
    assert report.history[-1].loss == reference.history[-1].loss
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert [r["loss"] is None for r in rounds] == [True, False, True, False, False]
    with pytest.raises(ValueError, match="Argument 'eval_every' must be positive, not 0"):
        train_settings(parse_train_args(["--dataset", DATASET, "--eval-every", "0"]))


async def test_a_straggler_never_delays_a_round(tmp_path):
    async with _workers(5, faults={2: {"fault_reply_delay": 1.5}}) as servers:
        report = await train(_settings([s.address for s in servers], tmp_path, k=1, t=1))
    assert all(r.wait_seconds < 1.0 for r in report.history)  # R = 3 of 5: the slow one is never waited for
    assert all(2 not in r.workers_used for r in report.history)
    assert report.weights.tobytes() == _simulated(report.plan).weights.tobytes()


async def test_a_failing_worker_is_dropped_and_training_continues(tmp_path):
    async with _workers(5, faults={0: {"fault_fail_after_rounds": 2}}) as servers:
        report = await train(_settings([s.address for s in servers], tmp_path, k=1, t=1))
    assert list(report.dropped_workers) == [0]
    # UNAVAILABLE with the fault's message; gRPC core reports INTERNAL instead when the master was writing its
    # next round at the moment the worker ended the stream (seen under load): a dropped worker either way
    assert re.search(r"compute stream failed: (UNAVAILABLE: fault injection|INTERNAL)", report.dropped_workers[0])
    assert all(0 not in r.workers_used for r in report.history[2:])
    assert report.weights.tobytes() == _simulated(report.plan).weights.tobytes()


async def test_a_round_short_of_r_waits_for_a_share_being_sent_again(tmp_path, monkeypatch):
    # worker 0 drops after round 2 and its share is re-sent slowly (a fault-injected worker reports NOT_SERVING
    # for good, so the health check is replaced by a slow yes); worker 1 drops in round 5, leaving 2 < R = 3 live:
    # the round waits for worker 0's share instead of failing, and worker 0 answers that same round
    async def slowly(self, worker):
        await asyncio.sleep(2.0)  # longer than rounds 3 and 4 take even on a loaded machine
        return True

    monkeypatch.setattr(Rejoiner, "_serving", slowly)
    faults = {0: {"fault_fail_after_rounds": 2}, 1: {"fault_fail_after_rounds": 4}}
    async with _workers(4, faults=faults) as servers:
        report = await train(_settings([s.address for s in servers], tmp_path, iterations=6, k=1, t=1))
    assert 0 not in report.history[3].workers_used and 0 in report.history[4].workers_used
    assert 1 not in report.history[5].workers_used
    assert report.weights.tobytes() == _simulated(report.plan).weights.tobytes()


async def test_a_shortfall_checks_for_a_worker_whose_failure_was_only_just_seen(monkeypatch):
    # rounds take milliseconds: a stream's failure can be read in the very round that falls short, after the
    # between-rounds check ran; the shortfall itself must start the check, not give up at once
    dead = types.SimpleNamespace(alive=False, rejoinable=True)

    async def answers(self, waiting):
        return waiting

    monkeypatch.setattr(Rejoiner, "_bring_back", answers)
    rejoiner = Rejoiner(types.SimpleNamespace(workers=[dead]), None, "job", None, 1)
    assert await rejoiner.in_flight(5.0) == [dead]


async def test_below_r_it_checkpoints_and_resume_finishes_identically(tmp_path):
    faulty = {i: {"fault_fail_after_rounds": 2} for i in range(3)}
    async with _workers(5, faults=faulty) as servers:
        with pytest.raises(NotEnoughWorkers, match=r"only 2 of 5 workers remain but R = 3 replies are needed"):
            await train(_settings([s.address for s in servers], tmp_path, iterations=5, k=1, t=1))
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    # round 2, or 3 when a failing worker straggled past a round (R = 3 of 5 did not need it): it serves its second
    # round one round later (as in test_e2e); the checkpoint and the rounds log agree either way
    assert state["trainer"]["round"] in (2, 3)
    assert len((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()) == state["trainer"]["round"]
    async with _workers(3) as servers:  # fewer workers than before: N changes, R = 3 still fits
        resumed = await train(_settings([s.address for s in servers], tmp_path, iterations=5, resume=True))
    assert len(resumed.history) == 5 and resumed.plan.n_workers == 3
    full = _simulated(resumed.plan.with_(n_workers=5))
    assert resumed.weights.tobytes() == full.weights.tobytes()
    # resuming a finished run touches no worker and reports the same model
    again = await train(_settings([f"127.0.0.1:{port}" for port in (1, 2, 3)], tmp_path, iterations=5, resume=True))
    assert again.weights.tobytes() == full.weights.tobytes() and len(again.history) == 5


def test_resume_keeps_the_checkpoints_weight_bound_unless_one_is_given():
    # the default radius changed (4 -> 16 with the exact sigmoid): a checkpoint made with 4 resumes with 4
    saved = Plan.case1(10, r=0, weight_bound=4.0)
    assert plan_changes(TrainSettings(dataset=DATASET), saved) == []
    assert plan_changes(TrainSettings(dataset=DATASET, weight_bound=16.0), saved) == [
        "--weight-bound 16.0 (checkpoint: 4.0)"
    ]
    assert Plan.case1(10, r=0).weight_bound == 16.0 and Plan.case1(10, r=1).weight_bound == 4.0


async def test_resume_refuses_other_data_or_a_missing_checkpoint(tmp_path):
    with pytest.raises(ResumeError, match="needs a checkpoint at"):
        await train(_settings(["127.0.0.1:1"], tmp_path, resume=True))
    async with _workers(4) as servers:
        await train(_settings([s.address for s in servers], tmp_path, iterations=1))
    with pytest.raises(ResumeError, match="made on different training data"):
        await train(_settings(["127.0.0.1:1"], tmp_path, resume=True, seed=5))


async def test_a_round_without_r_replies_in_time_times_out(tmp_path):
    async with _workers(4, fault_reply_delay=2.0) as servers:
        settings = _settings(
            [s.address for s in servers], tmp_path, timeouts=Timeouts(connect=10, upload=30, round=0.5)
        )
        with pytest.raises(RoundTimeout, match=r"round 1: only 0 of the 3 replies needed arrived within 0.5s"):
            await train(settings)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["trainer"]["round"] == 0


async def test_unreachable_workers_are_reported_by_address(tmp_path):
    async with running_worker() as alive:
        settings = _settings(
            [alive.address, "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], tmp_path, timeouts=Timeouts(connect=1.0)
        )
        with pytest.raises(
            WorkersUnreachable,
            match=r"3 of 4 workers were not healthy within 1s \(1 answered, "
            r"R = 3 needed\): 127.0.0.1:1",
        ):
            await train(settings)


async def test_mutual_tls_training(tmp_path):
    pki = make_pki(tmp_path / "pki")
    tls = {"insecure": False, "tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_client_ca": pki.ca}
    async with _workers(4, **tls) as servers:
        good = _settings(
            [s.address for s in servers],
            tmp_path,
            insecure=False,
            tls_ca=pki.ca,
            tls_cert=pki.client_cert,
            tls_key=pki.client_key,
            iterations=2,
        )
        with structlog.testing.capture_logs() as logs:
            report = await train(good)
        assert len(report.history) == 2
        assert not [e for e in logs if "T-privacy" in e["event"]]  # no plaintext warning over TLS
        anonymous = _settings(
            [s.address for s in servers], tmp_path, insecure=False, tls_ca=pki.ca, timeouts=Timeouts(connect=1.0)
        )
        with pytest.raises(WorkersUnreachable):
            await train(anonymous)


def test_settings_refuse_plaintext_to_remote_workers_without_the_flag(tmp_path):
    with pytest.raises(ValueError, match="Argument 'tls_ca' must be given .* pass --insecure"):
        TrainSettings(dataset=DATASET, workers=("10.0.0.1:50051",))
    assert TrainSettings(dataset=DATASET).embedded  # loopback workers: plaintext by default, with a warning
    with pytest.raises(ValueError, match="Argument 'k' needs --t"):
        TrainSettings(dataset=DATASET, k=2)


def test_flags_and_environment_build_settings():
    args = parse_train_args(
        ["--workers", "a:1, b:2", "--insecure", "--k", "1", "--t", "1"],
        {"CPML_MASTER_DATASET": "breast-cancer", "CPML_MASTER_ITERATIONS": "7"},
    )
    s = train_settings(args)
    assert (s.dataset, s.workers, s.iterations, s.k, s.t, s.insecure) == (
        "breast-cancer",
        ("a:1", "b:2"),
        7,
        1,
        1,
        True,
    )


def test_plans_follow_the_case_presets_and_overrides():
    x = load_dataset(DATASET).x_train
    assert (
        make_plan(TrainSettings(dataset=DATASET, case=1), 10, x).k,
        make_plan(TrainSettings(dataset=DATASET, case=1), 10, x).t,
    ) == (4, 1)
    case2 = make_plan(TrainSettings(dataset=DATASET, case=2), 15, x)
    assert (case2.k, case2.t) == (5, 3)
    paper = make_plan(TrainSettings(dataset=DATASET, case=2, sigmoid="polynomial"), 15, x)
    assert (paper.k, paper.t, paper.r) == (3, 2, 1)
    fixed = make_plan(TrainSettings(dataset=DATASET, t=2, lx=1, lw=3, lc=4), 12, x)
    assert (fixed.t, fixed.lx, fixed.lw, fixed.lc) == (2, 1, 3, 4)


def test_the_sigmoid_setting_picks_the_degree_and_is_checked():
    assert TrainSettings(dataset=DATASET).degree == 0  # the exact sigmoid by default
    assert TrainSettings(dataset=DATASET, sigmoid="polynomial", r=3).degree == 3
    assert TrainSettings(dataset=DATASET, model="linear").degree == 1  # no sigmoid: one exchange
    assert TrainSettings(dataset=DATASET, protocol="bgw").degree == 1  # the baselines evaluate the polynomial
    with pytest.raises(ValueError, match="must be polynomial for the MPC baseline 'bgw'"):
        TrainSettings(dataset=DATASET, protocol="bgw", sigmoid="exact")
    with pytest.raises(ValueError, match="Argument 'sigmoid' must be one of exact, polynomial, not 'cubic'"):
        TrainSettings(dataset=DATASET, sigmoid="cubic")


def _precision(plan):
    return plan.residues, plan.moduli, (plan.lx, plan.lw, plan.lc)


@pytest.mark.parametrize("scaling", ["standard", "minmax"])
def test_default_plans_choose_residues_and_levels_by_the_shape_alone(scaling):
    # Workers see the moduli, and the levels through the sigmoid coefficients: neither may depend on the data.
    x = load_dataset(DATASET).x_train
    others = (np.zeros_like(x), np.random.default_rng(1).random(x.shape) ** 4, 1000 * x)
    settings = TrainSettings(dataset=DATASET, scaling=scaling)
    assert (settings.residues, settings.lx, settings.lw, settings.lc) == (None, None, None, None)  # automatic
    plan = make_plan(settings, 10, x)
    assert plan.residues >= 1 and len(plan.moduli) == plan.residues
    for other in others:
        assert _precision(make_plan(settings, 10, other)) == _precision(plan)
    baseline = TrainSettings(dataset=DATASET, scaling=scaling, protocol="bh08", iterations=4)
    _, mpc_plan = make_mpc_plans(baseline, "bh08", x)
    for other in others:
        assert _precision(make_mpc_plans(baseline, "bh08", other)[1]) == _precision(mpc_plan)


def test_without_a_public_bound_the_precision_would_tell_the_data_apart():
    x = load_dataset(DATASET).x_train
    plan = make_plan(TrainSettings(dataset=DATASET), 10, x)
    chosen = {_precision(auto_precision(plan, DataProfile.of(v, 1))) for v in (x, 64 * x, 2**12 * x)}
    assert len(chosen) > 1  # planned from the data's own norms: why 'none' scaling logs a warning


def test_aggregate_is_dispatched_lazily(monkeypatch):
    calls = []
    fake = types.ModuleType(cli.AGGREGATE_MODULE)

    def build_parser():
        parser = argparse.ArgumentParser()
        parser.add_argument("--rounds", type=int)
        return parser

    fake.build_parser = build_parser
    fake.run = lambda args: calls.append(args.rounds) or 7
    monkeypatch.setitem(sys.modules, cli.AGGREGATE_MODULE, fake)
    assert cli.main(["aggregate", "--rounds", "3"]) == 7
    assert calls == [3]
    code = (
        "import sys; from cpml.master import cli; cli.build_parser(); "
        "assert not any(m.startswith('cpml.dp') for m in sys.modules), 'train imported cpml.dp'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_help_imports_nothing_heavy():
    # what keeps `cpml-master train --help` at a tenth of a second: no numpy, grpc, asyncio or scikit-learn
    code = (
        "import sys; from cpml.master import cli\n"
        "try:\n    cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'grpc', 'asyncio', 'sklearn', "
        "'structlog', 'scipy', 'matplotlib'})\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "no-such-data", "--out", str(tmp_path)]) == ExitCode.USAGE
    assert "Argument 'dataset' must be one of digits-4v9, breast-cancer" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", DATASET, "--workers", "127.0.0.1:1"]) == ExitCode.USAGE
    assert "pass --insecure" in capsys.readouterr().err


async def test_a_late_reply_for_an_old_round_is_dropped_not_mixed_in():
    from helpers_cluster import small_job, stub_for, upload

    from cpml.master.cluster import Cluster
    from cpml.master.rounds import ComputeStreams

    job = small_job("late-job")
    async with _workers(5, faults={4: {"fault_reply_delay": 0.4}}) as servers:
        for server in servers:
            async with stub_for(server.address) as stub:
                await upload(stub, job.chunks())
        async with (
            Cluster([s.address for s in servers]) as cluster,
            ComputeStreams(
                cluster.workers,
                job.job_id,
                job.moduli,
                (job.spec.cols,),
                threshold=4,
                round_timeout=5,
                stream_timeout=30,
            ) as streams,
        ):
            weights = {k: np.stack([job.weights(k)] * 5) for k in (0, 1)}
            first, traffic0 = await streams.run_round(0, weights[0])
            assert 4 not in first and traffic0.late_replies == 0
            await asyncio.sleep(0.6)  # the straggler's round-0 reply is now waiting in the queue
            second, traffic1 = await streams.run_round(1, weights[1])
    assert traffic1.late_replies == 1
    expected = job.expected(1)
    assert expected.shape == (2, job.spec.cols) and len(second) == 4
    for reply in second.values():
        np.testing.assert_array_equal(reply, expected)


async def test_workers_that_cannot_take_the_job_are_named_before_any_upload(tmp_path):
    from cpml.master.cluster import WorkersUnsuitable

    async with _workers(4, faults={1: {"share_bytes_cap": 1000}, 3: {"max_message_bytes": 4096}}) as servers:
        with pytest.raises(WorkersUnsuitable) as err:
            await train(_settings([s.address for s in servers], tmp_path))
        assert all(s.store.used_bytes == 0 for s in servers)
    message = str(err.value)
    settings = _settings([], tmp_path)
    x = load_training_data(settings).x_train  # 288 x 65 with the intercept; K = 1 with 4 workers
    plan = make_plan(settings, 4, x)
    share_bytes = plan.residues * -(-len(x) // plan.k) * x.shape[1] * 4  # residues x rows x d x 4 bytes
    assert share_bytes == 2 * 288 * 65 * 4
    assert (
        f"worker 1 at {servers[1].address} holds at most 1000 bytes of shares, less than this {share_bytes}-byte share"
        in message
    )
    assert f"worker 3 at {servers[3].address} accepts messages up to 4096 bytes; lower --chunk-bytes" in message


async def test_workers_whose_message_limit_cannot_carry_a_rounds_values_are_named_before_any_upload(tmp_path):
    from cpml.master.cluster import WorkersUnsuitable

    # breast cancer, N = 4 (K = 1): every round sends and returns 455 share rows x 2 residues x 4 bytes
    async with _workers(4, max_message_bytes=4096) as servers:
        settings = _settings([s.address for s in servers], tmp_path, dataset="breast-cancer", chunk_bytes=2048)
        with pytest.raises(
            WorkersUnsuitable, match=r"this job's rounds carry 3640-byte values .* --sigmoid polynomial"
        ):
            await train(settings)
        assert all(s.store.used_bytes == 0 for s in servers)
        report = await train(replace(settings, sigmoid="polynomial", iterations=1))  # d x r values: it fits
    assert report.plan.r == 1


def test_settings_refuse_a_worker_listed_twice():
    with pytest.raises(ValueError, match="Argument 'workers' must list each worker once, not a:1 twice."):
        TrainSettings(dataset=DATASET, workers=("a:1", "b:1", "a:1"), insecure=True)


def test_the_precision_line_names_what_l_c_quantizes():
    from cpml.master.cli import precision_line

    exact = Plan(n_workers=10, k=3, t=1, r=0, learning_rate=0.5)
    assert "data 8, weights 10, sigmoid values 8; step 0.5" in precision_line(exact)
    assert "coefficients 8" in precision_line(exact.with_(r=1))

"""`cpml-master aggregate` embedded: splits a bundled dataset, runs parties over loopback gRPC."""

from __future__ import annotations

import json

import pytest
import structlog

from cpml.master.cli import main


@pytest.fixture(autouse=True)
def restore_structlog():
    """The CLIs configure structlog for the process; put the previous setup back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_embedded_run_writes_metrics_model_and_plot(tmp_path, capsys):
    out = tmp_path / "agg"
    code = main(
        [
            "aggregate",
            "--dataset",
            "breast-cancer",
            "--parties",
            "4",
            "--rho",
            "3",
            "--rounds",
            "5",
            "--epsilon",
            "1",
            "--out",
            str(out),
            "--log-level",
            "warning",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "5 rounds of weighted aggregation over 4 parties" in printed
    assert "released model: epsilon 1.0" in printed or "released model: epsilon 0.99" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    sizes = sorted(p["records"] for p in metrics["parties"])
    assert sizes[-1] / sizes[0] == pytest.approx(3, abs=0.1)
    assert sum(p["weight"] for p in metrics["parties"]) == pytest.approx(1.0)
    eps = [h["epsilon"] for h in metrics["history"]]
    assert eps == sorted(eps) and eps[-1] <= 1.0  # reported after every round, never past budget
    assert all("test_accuracy" in h for h in metrics["history"])
    # Embedded mode measures every round against the non-private optimum of the pooled rows.
    assert all(h["optimality_gap"] > 0 for h in metrics["history"])
    assert metrics["nonprivate"]["test_accuracy"] > 0.9
    assert "optimality gap F(w) - F(w*)" in printed
    assert metrics["settings"]["step_rule"].startswith("public")
    assert (out / "curves.png").stat().st_size > 0
    assert len(json.loads((out / "model.json").read_text())["weights"]) == 31


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epsilon", "0"], "Argument 'epsilon' must be a positive finite number, not 0.0."),
        (["--rho", "0.5"], "Argument 'rho' must be at least 1, not 0.5."),
        (["--momentum", "1"], "Argument 'momentum' must lie in [0, 1), not 1.0."),
        (["--learning-rate", "-2"], "Argument 'learning_rate' must be a positive number"),
        (["--listen", "127.0.0.1:0"], "Argument 'listen' must come with --tls-cert/--tls-key or"),
        (["--sampling-rate", "0.5", "--accountant", "rdp"], "Argument 'accountant' must be 'pld'"),
    ],
)
def test_bad_arguments_exit_2_with_the_argument_named(tmp_path, capsys, flags, message):
    code = main(["aggregate", "--rounds", "2", "--out", str(tmp_path), "--log-level", "error", *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_embedded_parties_draw_their_noise_from_os_urandom(tmp_path, monkeypatch):
    import os

    from cpml.dp import noise

    requested = []
    real_urandom = os.urandom

    def counting_urandom(n: int) -> bytes:
        requested.append(n)
        return real_urandom(n)

    monkeypatch.setattr(noise.os, "urandom", counting_urandom)
    code = main(
        ["aggregate", "--parties", "2", "--rho", "2", "--rounds", "3", "--out", str(tmp_path), "--log-level", "error"]
    )
    assert code == 0
    # 2 parties x 3 rounds x Box-Muller on 32 uniforms (31 weights) x 8 bytes each.
    assert requested.count(32 * 8) == 2 * 3


def test_resume_continues_a_checkpointed_run(tmp_path, capsys):
    import argparse

    from cpml.dp import aggregate_cli
    from cpml.dp.dpgd import dp_gradient_steps
    from cpml.dp.noise import SeededGaussian
    from cpml.dp.session import AggregationSession
    from cpml.dp.settings import aggregate_settings

    out = tmp_path / "agg"
    flags = [
        "--parties",
        "3",
        "--rho",
        "2",
        "--rounds",
        "6",
        "--epsilon",
        "1",
        "--out",
        str(out),
        "--log-level",
        "error",
    ]
    parser = argparse.ArgumentParser()
    aggregate_cli.add_arguments(parser)
    prepared = aggregate_cli._prepare(aggregate_settings(parser.parse_args(flags)))
    settings, shards = prepared.run_settings, prepared.shards
    # Three rounds by hand with the CLI's own split, checkpointed as the CLI does.
    session = AggregationSession(settings, shards[0][0].shape[1])
    parties = [session.register(f"party-{k}", len(y), x.shape[1]) for k, (x, y) in enumerate(shards)]
    session.start()
    source = SeededGaussian(0)
    while session.round < 3 and session.open_round():
        for party, (x, y) in zip(parties, shards):
            task = session.task_for(party.party_id)
            session.submit(
                party.party_id,
                task.round,
                len(y),
                dp_gradient_steps(task.weights, x, y, task.noise_multiplier, task.local, source),
            )
        session.close_round()
    out.mkdir()
    rows = [{"round": r, "epsilon": 0.0} for r in (1, 2, 3)]
    (out / "checkpoint.json").write_text(json.dumps({"session": session.state(), "history": rows}))

    assert main(["aggregate", *flags, "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["round"] for h in metrics["history"]] == [1, 2, 3, 4, 5, 6]
    assert metrics["guarantees"]["release_epsilon"] == pytest.approx(1.0, rel=0.01)
    capsys.readouterr()
    # The run is now over: resuming it again is refused.
    assert main(["aggregate", *flags, "--resume"]) == 2
    assert "Argument 'resume' must name a run with rounds left" in capsys.readouterr().err

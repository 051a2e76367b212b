"""The command-line tools on inputs a new user has: one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cpml.dp import party_cli
from cpml.dp.party_cli import load_party_data
from cpml.dp.session import CHECKPOINT_VERSION
from cpml.errors import ExitCode
from cpml.master import cli
from cpml.worker import cli as worker_cli

FEATURES = np.random.default_rng(5).normal(size=(40, 3))
LABELS = (FEATURES[:, 0] > 0).astype(int)


def _train(tmp_path, *flags: str) -> list[str]:
    return [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--iterations",
        "2",
        "--workers-local",
        "4",
        "--log-level",
        "error",
        "--no-progress",
        *flags,
    ]


def _csv(path, labels=("0", "1"), header=True):
    lines = (["a,b,c,label"] if header else []) + [
        ",".join([*map(str, x), labels[y]]) for x, y in zip(FEATURES, LABELS)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _one_error_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(prefix), err
    return err


def test_train_reports_the_label_mapping_of_text_labels(tmp_path, capsys):
    path = _csv(tmp_path / "d.csv", labels=("no", "yes"))
    assert cli.main(_train(tmp_path, "--dataset", path)) == ExitCode.OK
    assert "labels: no -> 0, yes -> 1" in capsys.readouterr().out.splitlines()
    notes = json.loads((tmp_path / "run" / "model.json").read_text())["notes"]
    assert "d.csv: comma-separated, header line (a, b, c, label), labels from column 4 ('label')" in notes


def _checkpoint(tmp_path, text: str) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "checkpoint.json").write_text(text)


def _intact_fingerprint_but_no_plan(tmp_path) -> None:
    from cpml.master.job import CHECKPOINT_FORMAT, data_fingerprint, load_training_data
    from cpml.master.settings import parse_train_args, train_settings

    settings = train_settings(parse_train_args(_train(tmp_path, "--dataset", "digits-4v9")[1:]))
    fingerprint = data_fingerprint(load_training_data(settings))
    _checkpoint(
        tmp_path, json.dumps({"format": CHECKPOINT_FORMAT, "data_sha256": fingerprint, "trainer": {"round": 1}})
    )


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (None, ["--dataset", "{tmp}/x1d.npz"], "Argument 'dataset' must hold a 2-D array 'x'"),  # was IndexError
        (None, ["--dataset", "digits-4v9", "--seed", "-1"], "Argument 'seed' must be an integer from 0"),
        (None, ["--dataset", "digits-4v9", "--chunk-bytes", "0"], "Argument 'chunk_bytes' must be positive, not 0."),
        (
            None,
            ["--dataset", "digits-4v9", "--connect-timeout", "0"],
            "Argument 'connect_timeout' must be a positive number of seconds, not 0.0.",
        ),
        (None, ["--dataset", "digits-4v9", "--round-timeout", "-1"], "Argument 'round_timeout' must be a positive"),
        (
            None,
            ["--dataset", "digits-4v9", "--workers", "a,b,c,d", "--insecure"],
            "Argument 'workers' must list host:port addresses (port 1-65535), not 'a'.",
        ),
        (None, ["--dataset", "digits-4v9", "--workers", "h:1,h:2,h:3,h:99999", "--insecure"], "not 'h:99999'."),
        (None, ["--dataset", "digits-4v9", "--positive-label", "7"], "Argument 'positive_label' must be one of"),
        (None, ["--dataset", "{tmp}/d.csv", "--label-column", "class"], "Argument 'label_column' must name exactly"),
        (
            "file",
            ["--dataset", "digits-4v9", "--out", "{tmp}/taken"],
            "Argument 'out' must be a directory, not '{tmp}/taken', which is a file.",
        ),
        ("file", ["--dataset", "digits-4v9", "--out", "{tmp}/taken/run"], "which would be under the file"),
        ("[]", ["--dataset", "digits-4v9", "--resume"], "Argument 'resume' needs a checkpoint written by cpml-master"),
        ("{bad", ["--dataset", "digits-4v9", "--resume"], "Argument 'resume' needs a readable checkpoint"),
        ("no plan", ["--dataset", "digits-4v9", "--resume"], "Argument 'resume' needs an intact checkpoint"),
    ],
)
def test_train_refuses_bad_input_in_one_line_with_exit_2(tmp_path, capsys, setup, flags, message):
    np.savez(tmp_path / "x1d.npz", x=FEATURES[:, 0], y=LABELS)
    _csv(tmp_path / "d.csv")
    if setup == "file":
        (tmp_path / "taken").write_text("")
    elif setup == "no plan":
        _intact_fingerprint_but_no_plan(tmp_path)
    elif setup:
        _checkpoint(tmp_path, setup)
    argv = _train(tmp_path, *(f.format(tmp=tmp_path) for f in flags))  # a later --out wins
    assert cli.main(argv) == ExitCode.USAGE
    assert message.format(tmp=tmp_path) in _one_error_line(capsys, "cpml-master train: ")


def test_an_unexpected_failure_is_one_line_with_exit_1(tmp_path, capsys, monkeypatch):
    from cpml.master import train

    async def broken(settings, on_round=None):
        raise KeyError("surprise")

    monkeypatch.setattr(train, "train", broken)
    assert cli.main(_train(tmp_path, "--dataset", "digits-4v9")) == ExitCode.FAILED
    assert "failed: KeyError: 'surprise' (--log-level debug shows the traceback)" in _one_error_line(
        capsys, "cpml-master train: "
    )


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    np.savez(tmp_path / "x1d.npz", x=FEATURES[:, 0], y=LABELS)
    run = subprocess.run(
        [sys.executable, "-m", "cpml.master.cli", *_train(tmp_path, "--dataset", str(tmp_path / "x1d.npz"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("cpml-master train: Argument 'dataset' must hold a 2-D array")
    assert len(run.stderr.strip().splitlines()) == 1 and run.stdout == ""


@pytest.mark.slow
def test_baselines_train_with_the_intercept_they_are_asked_for(tmp_path, capsys):
    path = _csv(tmp_path / "d.csv")
    argv = _train(tmp_path, "--dataset", path, "--protocol", "bgw", "--intercept")
    argv[argv.index("--workers-local") + 1] = "9"  # 3 groups of 2T+1 with T = 1
    assert cli.main(argv) == ExitCode.OK
    weights = json.loads((tmp_path / "run" / "model.json").read_text())["weights"]
    assert len(weights) == FEATURES.shape[1] + 1  # --intercept was once dropped for bgw/bh08


def _aggregate(tmp_path, *flags: str) -> list[str]:
    return [
        "aggregate",
        "--parties",
        "2",
        "--rho",
        "1",
        "--rounds",
        "2",
        "--out",
        str(tmp_path / "agg"),
        "--log-level",
        "error",
        *flags,
    ]


def test_aggregate_reads_a_csv_by_label_name_with_text_labels(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text(
        "diagnosis,a,b,c\n" + "\n".join(",".join(["BM"[y], *map(str, x)]) for x, y in zip(FEATURES, LABELS)) + "\n"
    )
    code = cli.main(_aggregate(tmp_path, "--dataset", str(path), "--label-column", "diagnosis"))
    assert code == 0
    assert "labels: B -> 0, M -> 1" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    ("checkpoint", "flags", "message"),
    [
        (None, ["--out", "{tmp}/taken"], "Argument 'out' must be a directory, not '{tmp}/taken', which is a file."),
        (None, ["--round-timeout", "0"], "Argument 'round_timeout' must be a positive number of seconds, not 0.0."),
        (None, ["--join-timeout", "-1"], "Argument 'join_timeout' must be a positive number of seconds"),
        ("[]", ["--resume"], "lacks its session state and history."),
        (
            '{"session": {"version": 1}, "history": []}',
            ["--resume"],
            f"Argument 'resume' must be a version {CHECKPOINT_VERSION} checkpoint, not 1.",
        ),
        (
            f'{{"session": {{"version": {CHECKPOINT_VERSION}}}, "history": []}}',
            ["--resume"],
            "with a damaged session state",
        ),
    ],
)
def test_aggregate_refuses_bad_input_in_one_line_with_exit_2(tmp_path, capsys, checkpoint, flags, message):
    (tmp_path / "taken").write_text("")
    if checkpoint is not None:
        (tmp_path / "agg").mkdir()
        (tmp_path / "agg" / "checkpoint.json").write_text(checkpoint)
    argv = _aggregate(tmp_path, *(f.format(tmp=tmp_path) for f in flags))
    assert cli.main(argv) == 2
    assert message.format(tmp=tmp_path) in _one_error_line(capsys, "cpml-master aggregate: ")


def test_party_maps_text_labels_only_with_an_explicit_positive_label(tmp_path):
    path = _csv(tmp_path / "d.csv", labels=("no", "yes"))
    with pytest.raises(
        ValueError,
        match=r"Argument 'data' must have labels 0/1 or -1/1 \(or pass "
        r"--positive-label\), not no, yes in column 4 \('label'\)",
    ):
        load_party_data(path, "auto", -1, "none")
    _, y = load_party_data(path, "auto", "label", "none", positive_label="yes")
    np.testing.assert_array_equal(y, LABELS)
    # a party holding only negatives maps them all to 0, whatever the others hold
    only_no = tmp_path / "no.csv"
    only_no.write_text("a,label\n1,no\n2,no\n")
    assert load_party_data(str(only_no), "auto", -1, "none", positive_label="yes")[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="Argument 'positive_label' must be one of the labels in column 4"):
        load_party_data(path, "auto", -1, "none", positive_label="Yes")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--out", "{tmp}"], "Argument 'out' must be a file path for the model, not the directory '{tmp}'."),
        (["--wait-timeout", "0"], "Argument 'wait_timeout' must be a positive number of seconds, not 0.0."),
        (["--data", "{tmp}/x1d.npz"], "Argument 'data' must hold a 2-D array 'x'"),
    ],
)
def test_party_refuses_bad_input_before_connecting(tmp_path, capsys, flags, message):
    np.savez(tmp_path / "x1d.npz", x=FEATURES[:, 0], y=LABELS)
    argv = [
        "--server",
        "127.0.0.1:1",
        "--data",
        _csv(tmp_path / "d.csv"),
        "--insecure",
        "--log-level",
        "error",
        *(f.format(tmp=tmp_path) for f in flags),
    ]
    assert party_cli.main(argv) == ExitCode.USAGE
    assert message.format(tmp=tmp_path) in _one_error_line(capsys, "cpml-party: ")


def test_worker_refuses_a_port_file_in_a_missing_directory(tmp_path, capsys):
    # it used to bind, fail writing the file, and print a grpc teardown traceback
    port_file = tmp_path / "missing" / "port"
    code = worker_cli.main(["--listen", "127.0.0.1:0", "--insecure", "--port-file", str(port_file)])
    assert code == ExitCode.USAGE
    assert f"must be in an existing directory, not '{port_file}'" in _one_error_line(capsys, "cpml-worker: ")

"""--resume continues the checkpoint's plan or refuses to change it, and survives a torn rounds log."""

import json
import subprocess
import sys

import pytest

from cpml.master.job import plan_changes, read_rounds
from cpml.master.settings import TrainSettings
from cpml.protocol import Plan

DATASET = "breast-cancer"


def cli(tmp_path, *flags):
    """cpml-master train on embedded workers; returns the finished process."""
    command = [
        sys.executable,
        "-m",
        "cpml.master.cli",
        "train",
        "--dataset",
        DATASET,
        "--workers-local",
        "4",
        "--t",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--log-level",
        "error",
        *flags,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_plan_changes_lists_every_flag_set_to_something_else():
    saved = Plan(n_workers=4, k=1, t=1, r=1, p=33554393, residues=2, learning_rate=0.5)
    same = TrainSettings(dataset=DATASET)
    assert plan_changes(same, saved) == []  # unset flags follow the checkpoint
    changed = TrainSettings(dataset=DATASET, prime=2147483647, k=2, t=1, r=2, learning_rate=0.25, residues=3)
    assert plan_changes(changed, saved) == [
        "--prime 2147483647 (checkpoint: 33554393)",
        "--residues 3 (checkpoint: 2)",
        "--k 2 (checkpoint: 1)",
        "--r 2 (checkpoint: 1)",
        "--learning-rate 0.25 (checkpoint: 0.5)",
    ]
    assert plan_changes(TrainSettings(dataset=DATASET, sigmoid="exact"), saved) == [
        "--sigmoid exact (checkpoint: polynomial)"
    ]
    exact = saved.with_(r=0)
    assert plan_changes(TrainSettings(dataset=DATASET, r=3), exact) == []  # --r is the polynomial's degree
    assert plan_changes(TrainSettings(dataset=DATASET, sigmoid="polynomial"), exact) == [
        "--sigmoid polynomial (checkpoint: exact)"
    ]


def test_a_torn_last_line_of_the_rounds_log_is_dropped_and_a_torn_middle_one_refused(tmp_path):
    record = {
        "round": 1,
        "loss": 0.5,
        "train_accuracy": 0.9,
        "test_accuracy": 0.9,
        "workers_used": [0, 1],
        "encode_seconds": 0.0,
        "send_seconds": 0.0,
        "wait_seconds": 0.0,
        "decode_update_seconds": 0.0,
        "total_seconds": 0.0,
        "bytes_sent": 1,
        "bytes_received": 1,
        "late_replies": 0,
    }
    log = tmp_path / "rounds.jsonl"
    log.write_text(json.dumps(record) + "\n" + json.dumps({**record, "round": 2})[:40])
    assert [r.round for r in read_rounds(log, 5)] == [1]
    log.write_text(json.dumps(record)[:40] + "\n" + json.dumps({**record, "round": 2}) + "\n")
    with pytest.raises(ValueError):
        read_rounds(log, 5)


@pytest.mark.slow
def test_resume_refuses_a_changed_plan_and_repairs_a_torn_log(tmp_path):
    first = cli(tmp_path, "--iterations", "3")
    assert first.returncode == 0, first.stderr
    changed = cli(tmp_path, "--iterations", "5", "--resume", "--prime", "2147483647", "--sigmoid", "polynomial")
    assert changed.returncode == 2
    assert (
        "must continue the checkpoint's plan, not change it: --prime 2147483647 (checkpoint: 33554393), "
        "--sigmoid polynomial (checkpoint: exact)"
    ) in changed.stderr
    shorter = cli(tmp_path, "--iterations", "2", "--resume")
    assert shorter.returncode == 2 and "pass --iterations 3 or more" in shorter.stderr
    rounds = tmp_path / "run" / "rounds.jsonl"
    rounds.write_text(rounds.read_text() + '{"round": 4, "loss": 0.')  # a crash while appending
    resumed = cli(tmp_path, "--iterations", "5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["round"] for line in rounds.read_text().splitlines()] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prime", "33554395"], "Argument '--prime' must be prime, not 33554395."),
        (
            ["--learning-rate", "0"],
            "Argument '--learning-rate' must be a positive finite number (leave it out for 1/L)",
        ),
        (["--workers-local", "2"], "Argument '--workers-local (or --workers)' must be at least 3"),
        (["--weight-bound", "-1"], "Argument '--weight-bound' must be a positive finite number, not -1.0."),
    ],
)
def test_plan_refusals_name_the_flag_the_user_typed(tmp_path, flags, message):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpml.master.cli",
            "train",
            "--dataset",
            DATASET,
            "--out",
            str(tmp_path / "run"),
            "--log-level",
            "error",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and message in run.stderr, run.stderr

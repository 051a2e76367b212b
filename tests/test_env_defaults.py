"""Every command reads its flags' defaults from the environment, the same way."""

import argparse

import pytest

from cpml.dp import aggregate_cli
from cpml.env_defaults import apply_env_defaults, parse_bool, variable
from cpml.master import cli
from cpml.master.settings import parse_train_args
from cpml.worker.settings import settings_from_args


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--share-bytes", type=int, default=1)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--quiet", action="store_false", dest="loud")
    parser.add_argument("--intercept", action=argparse.BooleanOptionalAction, default=True)
    return parser


def test_a_variable_sets_a_default_converted_by_the_flags_type_and_the_command_line_wins():
    parser = _parser()
    apply_env_defaults(
        parser, "X_", {"X_SHARE_BYTES": "7", "X_NAME": "n", "X_FAST": "yes", "X_QUIET": "true", "X_INTERCEPT": "off"}
    )
    args = parser.parse_args([])
    assert (args.share_bytes, args.name, args.fast, args.loud, args.intercept) == (7, "n", True, False, False)
    assert parser.parse_args(["--share-bytes", "9", "--intercept"]).share_bytes == 9
    assert parser.parse_args(["--intercept"]).intercept is True


def test_without_variables_nothing_changes_and_a_bad_boolean_is_refused():
    parser = _parser()
    apply_env_defaults(parser, "X_", {})
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is still required
    with pytest.raises(SystemExit):
        apply_env_defaults(_parser(), "X_", {"X_FAST": "maybe"})
    assert variable("CPML_WORKER_", "--share-bytes-cap") == "CPML_WORKER_SHARE_BYTES_CAP"
    assert [parse_bool(t) for t in ("1", "TRUE", "on", "0", "No", "")] == [True] * 3 + [False] * 3


def test_every_command_reads_its_prefix():
    worker = settings_from_args(
        [], {"CPML_WORKER_INSECURE": "true", "CPML_WORKER_SHARE_BYTES_CAP": "1MiB", "CPML_WORKER_STOP_WITH_PARENT": "1"}
    )
    assert worker.insecure and worker.share_bytes_cap == 1 << 20 and worker.stop_with_parent
    train = parse_train_args(
        [], {"CPML_MASTER_DATASET": "breast-cancer", "CPML_MASTER_INTERCEPT": "false", "CPML_MASTER_DETECT": "true"}
    )
    assert (train.dataset, train.intercept, train.detect) == ("breast-cancer", False, True)
    assert parse_train_args(["--dataset", "x"], {}).intercept is True


def test_predict_export_and_aggregate_read_theirs(monkeypatch):
    monkeypatch.setenv("CPML_PREDICT_MODEL", "m.json")
    monkeypatch.setenv("CPML_EXPORT_MODEL", "e.json")
    monkeypatch.setenv("CPML_AGGREGATE_ROUNDS", "7")
    parser = cli.build_parser()
    assert str(parser.parse_args(["predict", "--data", "d.csv"]).model) == "m.json"
    assert str(parser.parse_args(["export", "--out", "p.skops"]).model) == "e.json"
    assert aggregate_cli.build_parser().parse_args([]).rounds == 7

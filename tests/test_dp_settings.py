"""`cpml-master aggregate` and `cpml-party` parse into frozen settings, their flags checked before any file."""

import dataclasses
from pathlib import Path

import pytest

from cpml.dp import aggregate_cli, party_cli
from cpml.dp.settings import aggregate_settings, party_settings


def _aggregate(*flags):
    return aggregate_settings(aggregate_cli.build_parser().parse_args(list(flags)))


def _party(*flags):
    return party_settings(party_cli.build_parser().parse_args(["--server", "h:1", "--data", "d.csv", *flags]))


def test_aggregate_settings_hold_the_flags_as_given():
    settings = _aggregate("--classes", "a, b,,c", "--party-names", "x, y", "--rounds", "3", "--format", "csv")
    assert settings.classes == ("a", "b", "c") and settings.named_parties == ("x", "y")
    assert settings.rounds == 3 and settings.data_format == "csv" and settings.out == Path("runs/aggregate")
    assert settings.run_id is None and settings.parties is None  # settled when the run is prepared
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rounds = 4


def test_aggregate_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("CPML_AGGREGATE_JOIN_TIMEOUT", "30")
    monkeypatch.setenv("CPML_AGGREGATE_INSECURE", "yes")
    settings = _aggregate("--listen", "127.0.0.1:0")
    assert settings.join_timeout == 30.0 and settings.insecure


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scheme", "centralized", "--listen", "h:1", "--insecure"], "Argument 'scheme' must be weighted or"),
        (["--run-id", ""], "Argument 'run_id' must be 1 to 128 printable characters, not ''."),
        (["--run-id", "r" * 129], "Argument 'run_id' must be 1 to 128 printable characters"),
        (["--run-id", "a\tb"], "Argument 'run_id' must be 1 to 128 printable characters, not 'a\\tb'."),
        (["--parties", "0"], "Argument 'parties' must be at least 1, not 0."),
        (["--parties", "1"], "Argument 'parties' must be at least 2 to split, not 1."),
        (["--round-timeout", "0"], "Argument 'round_timeout' must be a positive number of seconds, not 0.0."),
        (["--join-timeout", "inf"], "Argument 'join_timeout' must be a positive number of seconds, not inf."),
        (["--join-timeout", "nan"], "Argument 'join_timeout' must be a positive number of seconds, not nan."),
        (["--listen", "h:1", "--tls-cert", "c"], "Argument 'listen' must come with --tls-cert/--tls-key or"),
        (
            ["--listen", "h:1", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca", "--party-tokens", "t"],
            "Argument 'party_tokens' must not come with --tls-client-ca",
        ),
        (
            ["--listen", "h:1", "--insecure", "--party-tokens", "t", "--party-names", "a,b"],
            "Argument 'party_names' must not come with --party-tokens (the file names the parties), not 'a,b'.",
        ),
    ],
)
def test_aggregate_settings_refuse_flags_that_do_not_fit(flags, message):
    with pytest.raises(ValueError) as err:
        _aggregate(*flags)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "flags",
    [
        ["--parties", "1", "--scheme", "centralized"],  # one pooled party
        ["--parties", "1", "--listen", "h:1", "--insecure"],  # one remote party
        ["--listen", "h:1", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca", "--party-names", "a"],
    ],
)
def test_aggregate_settings_take_what_fits(flags):
    _aggregate(*flags)  # no ValueError


def test_party_settings_hold_the_flags_as_given(monkeypatch):
    monkeypatch.setenv("CPML_PARTY_FORMAT", "npz")
    settings = _party("--classes", "x,y,z", "--tls-cert", "c.pem", "--tls-key", "k.pem")
    assert settings.data_format == "npz" and settings.classes == ("x", "y", "z") and settings.certificate
    assert not _party("--tls-cert", "c.pem", "--insecure").certificate  # plaintext presents no certificate
    assert _party().run_id is None  # checked when joining, after the party's own files
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server = "elsewhere:1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-epsilon", "0"], "Argument 'max_epsilon' must be positive, not 0.0."),
        (["--max-epsilon", "-1"], "Argument 'max_epsilon' must be positive, not -1.0."),
        (["--wait-timeout", "0"], "Argument 'wait_timeout' must be a positive number of seconds, not 0.0."),
    ],
)
def test_party_settings_refuse_flags_that_do_not_fit(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _party(*flags)

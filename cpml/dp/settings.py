"""`cpml-master aggregate` and `cpml-party` settings: frozen dataclasses built from their parsed flags (which
default to CPML_AGGREGATE_* and CPML_PARTY_* variables). The flags are checked here, before any file is read;
what needs the files (data, feature bounds, tokens, checkpoint) is checked where they are read."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpml.cli_args import comma_list, settings_fields
from cpml.errors import argument_error

MAX_RUN_ID_LENGTH = 128


@dataclass(frozen=True)
class AggregateSettings:
    """Everything `cpml-master aggregate` is configured with, as given (the run id and party count are settled
    when the run is prepared: from the checkpoint, the token file or the defaults)."""

    run_id: str | None
    parties: int | None
    scheme: str
    rounds: int
    epsilon: float
    delta: float
    accountant: str | None
    learning_rate: float | None
    momentum: float | None
    clip: float
    l2: float
    local_steps: int
    sampling_rate: float
    round_timeout: float
    join_timeout: float
    test_data: str | None
    dataset: str
    data_format: str
    label_column: str
    positive_label: str | None
    classes: tuple[str, ...]
    rho: float
    scaling: str | None
    test_fraction: float
    seed: int
    listen: str | None
    port_file: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    insecure: bool
    party_tokens: Path | None
    party_names: str | None
    feature_bounds: Path | None
    out: Path
    resume: bool
    log_level: str
    log_format: str

    def __post_init__(self) -> None:
        if self.scheme == "centralized" and self.listen:
            raise ValueError(
                "Argument 'scheme' must be weighted or unweighted with --listen, "
                "not 'centralized' (it needs the pooled data)."
            )
        if self.run_id is not None and not (
            self.run_id and len(self.run_id) <= MAX_RUN_ID_LENGTH and self.run_id.isprintable()
        ):
            raise argument_error("run_id", f"be 1 to {MAX_RUN_ID_LENGTH} printable characters", self.run_id)
        if self.parties is not None and self.parties < 1:
            raise argument_error("parties", "be at least 1", self.parties)
        for name in ("round_timeout", "join_timeout"):
            seconds = getattr(self, name)
            if not (seconds > 0 and math.isfinite(seconds)):
                raise argument_error(name, "be a positive number of seconds", seconds)
        if not self.listen:
            if self.scheme != "centralized" and self.parties is not None and self.parties < 2:
                raise argument_error("parties", "be at least 2 to split", self.parties)
            return
        if not (self.insecure or (self.tls_cert and self.tls_key)):
            raise ValueError(
                f"Argument 'listen' must come with --tls-cert/--tls-key or --insecure, not {self.listen!r} alone."
            )
        if self.tls_client_ca is not None and self.party_tokens is not None:
            raise argument_error(
                "party_tokens",
                "not come with --tls-client-ca (a party's client certificate names it)",
                str(self.party_tokens),
            )
        if self.tls_client_ca is None and self.party_tokens is not None and self.party_names is not None:
            raise argument_error(
                "party_names", "not come with --party-tokens (the file names the parties)", self.party_names
            )

    @property
    def named_parties(self) -> tuple[str, ...] | None:
        """The names of --party-names, or None when it is not given."""
        if self.party_names is None:
            return None
        return comma_list(self.party_names)


def aggregate_settings(args: argparse.Namespace) -> AggregateSettings:
    """AggregateSettings from parsed `aggregate` arguments (raises ValueError naming a bad argument)."""
    return AggregateSettings(**_given(AggregateSettings, args))


@dataclass(frozen=True)
class PartySettings:
    """Everything `cpml-party` is configured with. The run id and the party's identity are checked when it
    joins, after its data: a party learns first whether its own files are usable."""

    server: str
    data: str
    data_format: str
    label_column: str
    positive_label: str | None
    classes: tuple[str, ...]
    scaling: str
    feature_bounds: Path | None
    run_id: str | None
    token_file: Path | None
    name: str | None
    max_epsilon: float | None
    wait_timeout: float
    out: Path | None
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    insecure: bool
    log_level: str
    log_format: str

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise argument_error("max_epsilon", "be positive", self.max_epsilon)
        if not self.wait_timeout > 0:
            raise argument_error("wait_timeout", "be a positive number of seconds", self.wait_timeout)

    @property
    def certificate(self) -> bool:
        """Whether the party proves its name with a client certificate."""
        return self.tls_cert is not None and not self.insecure


def party_settings(args: argparse.Namespace) -> PartySettings:
    """PartySettings from parsed `cpml-party` arguments (raises ValueError naming a bad argument)."""
    return PartySettings(**_given(PartySettings, args))


def _given(settings: type[AggregateSettings | PartySettings], args: argparse.Namespace) -> dict[str, Any]:
    """The settings' fields as parsed; --classes as a tuple of labels (empty when not given)."""
    return settings_fields(settings, args) | {"classes": comma_list(args.classes)}

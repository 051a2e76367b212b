"""Argument groups every cpml command shares, light to import (`--help` must not load numpy or grpc)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cpml.logs import FORMATS, LEVELS
from cpml.options import DATA_FORMATS


def add_log_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """--log-level and --log-format, the same for every command (a parser or an argument group)."""
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    parser.add_argument(
        "--log-format", choices=FORMATS, default="auto", help="json, console, or auto (console on a terminal)"
    )


def add_client_tls_arguments(parser: argparse.ArgumentParser | Any, peer: str = "worker") -> None:
    """--tls-ca/--tls-cert/--tls-key for every client of a cpml daemon (a parser or an argument group)."""
    parser.add_argument("--tls-ca", type=Path, default=None, help=f"CA that signed the {peer}'s certificate")
    parser.add_argument("--tls-cert", type=Path, default=None, help=f"client certificate, for a {peer} with mutual TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="the client certificate's key")


def comma_list(text: object) -> tuple[str, ...]:
    """The items of a comma-separated flag or variable, stripped, empty ones dropped (None or '' gives none)."""
    return tuple(item.strip() for item in str(text or "").split(",") if item.strip())


def settings_fields(settings: type[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of a settings dataclass that args holds by name ('' is None where the field defaults to None)."""
    given = {}
    for field in dataclasses.fields(settings):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            given[field.name] = None if field.default is None and value == "" else value
    return given


def add_data_file_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """--format and --label-column: how every command that reads a data file reads it (a parser or a group)."""
    parser.add_argument("--format", dest="data_format", choices=DATA_FORMATS, default="auto")
    parser.add_argument(
        "--label-column",
        default="-1",
        help="CSV label column: a 0-based index (negative from the end; default -1, the last) or a header name",
    )

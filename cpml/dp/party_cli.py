"""`cpml-party`: join a WD-DP run with local data and train with differentially private GD.

    cpml-party --server host:port --run-id RUN --data records.csv --token-file hospital-a.token
               [--feature-bounds schema.json] [--tls-ca ca.pem]

The data never leaves the process; only noisy models do. Rows are put in the unit ball (with a
bias column) so the per-record loss is 1-Lipschitz, and per-record gradients are clipped too.
The party proves its name with the join token its operator handed out (--token-file, one line
`name:token`), or with its client certificate when the server demands one (--tls-cert/--tls-key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import structlog

from cpml import runner
from cpml.cli_args import add_client_tls_arguments, add_data_file_arguments, add_log_arguments
from cpml.dp.settings import PartySettings, party_settings
from cpml.env_defaults import apply_env_defaults
from cpml.errors import ExitCode, argument_error, check_output_dir, exit_codes_help, refuse, unexpected
from cpml.files import write_atomically
from cpml.logs import configure_logging

if TYPE_CHECKING:
    from cpml.dp.features import FeatureBounds

log = structlog.get_logger(__name__)

COMMAND = "cpml-party"
EXIT_CODES = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.UNREACHABLE, ExitCode.REFUSED, ExitCode.LEFT_EARLY)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The party's flags."""
    parser.add_argument("--server", required=True, help="aggregation server host:port")
    parser.add_argument("--data", required=True, help="CSV, .npz or svmlight file of this party")
    add_data_file_arguments(parser)
    parser.add_argument(
        "--positive-label",
        help="the label value that becomes class 1 (needed unless labels are 0/1 or -1/1;"
        " every party of a run must pass the same)",
    )
    parser.add_argument(
        "--classes",
        metavar="LABEL,LABEL,...",
        help="more than two classes (one-vs-rest): the run's public list of labels, in the same"
        " order for every party and the server",
    )
    parser.add_argument(
        "--scaling",
        default="none",
        choices=("none", "minmax", "standard"),
        help="feature scaling on this party's data; 'none' keeps the guarantee"
        " exact (the others use data statistics DP does not cover)",
    )
    parser.add_argument(
        "--feature-bounds",
        type=Path,
        help="the run's public schema of feature bounds (JSON; the same file as the"
        " server's): clips and maps each feature to [-1, 1], inside the guarantee",
    )
    parser.add_argument("--run-id", help="the run to join (the id the server printed)")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="this party's join token from the server's operator (one line: name:token"
        " or token); not needed with a client certificate",
    )
    parser.add_argument(
        "--name",
        help="public name of this party in the run (default: the name in --token-file, or the client certificate's CN)",
    )
    parser.add_argument(
        "--max-epsilon",
        type=float,
        help="leave the run before this party's updates reveal more than this epsilon to the server",
    )
    parser.add_argument("--wait-timeout", type=float, default=600.0, help="seconds to wait for the next round")
    parser.add_argument("--out", type=Path, help="write the released model here")
    add_client_tls_arguments(parser, "server")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC (models travel unencrypted)")
    add_log_arguments(parser)


def load_party_data(
    path: str,
    fmt: str,
    label_column: int | str,
    scaling: str,
    positive_label: str | None = None,
    bounds: FeatureBounds | None = None,
    classes: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Features in the unit ball with a bias column, and 0/1 labels (one-hot rows over `classes`), from a file."""
    from cpml.data import is_label, read_raw, scale
    from cpml.dp.dpgd import add_bias_and_normalise
    from cpml.dp.features import check_scaling, warn_if_dominated

    check_scaling(bounds, scaling)
    if not Path(path).is_file():
        raise argument_error("data", "be an existing file", path)
    try:
        raw = read_raw(path, fmt, label_column)
        labels = raw.labels
    except ValueError as exc:  # the shared reader names the master's --dataset; here the flag is --data
        raise ValueError(str(exc).replace("Argument 'dataset'", "Argument 'data'", 1)) from None
    values = np.unique(labels)
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:5].tolist()) + (
        ", ..." if len(values) > 5 else ""
    )
    where = raw.label_source or repr(path)
    if classes:
        y = _one_hot(labels, classes, positive_label, where)
    elif positive_label is not None:
        # Each party maps its own labels, so the mapping must not depend on which labels it happens to hold.
        y = is_label(labels, positive_label)
        if len(values) > 2:
            raise ValueError(
                f"Argument 'data' must have at most two label values, not {len(values)} ({shown}) in {where}."
            )
        if len(values) == 2 and not y.any():
            raise argument_error("positive_label", f"be one of the labels in {where} ({shown})", positive_label)
        if not y.any():
            log.warning("no record of this party has the positive label", positive_label=positive_label)
        y = y.astype(np.float64)
    elif set(values.tolist()) <= {0, 1}:
        y = np.asarray(labels, dtype=np.float64)
    elif set(values.tolist()) <= {-1, 1}:
        y = (np.asarray(labels) > 0).astype(np.float64)
    else:
        raise ValueError(
            f"Argument 'data' must have labels 0/1 or -1/1 (or pass --positive-label), not {shown} in {where}."
        )
    if bounds is not None:
        x = bounds.apply(bounds.match(raw.x, raw.features, Path(path).name))
        hint = "check the bounds in --feature-bounds"
    else:
        x, _, _ = scale(raw.x, raw.x, scaling)
        hint = (
            "pass the run's public schema of feature bounds with --feature-bounds FILE (the same file"
            " for every party and the server; the guarantee stays exact)"
        )
    warn_if_dominated(x, hint)
    return add_bias_and_normalise(x), y


def _one_hot(labels: np.ndarray, classes: Sequence[str], positive_label: str | None, where: str) -> np.ndarray:
    """One-hot rows over the run's public classes, refusing a label not among them."""
    from cpml.data import is_label

    if positive_label is not None or len(classes) < 3 or len(set(classes)) != len(classes):
        raise argument_error("classes", "list 3 or more distinct labels without --positive-label", ",".join(classes))
    hits = np.column_stack([is_label(labels, c) for c in classes])
    unknown = ~hits.any(axis=1)
    if unknown.any():
        raise ValueError(
            f"Argument 'data' must hold only the run's classes ({', '.join(classes)}), not "
            f"{labels[int(np.flatnonzero(unknown)[0])]!r} in {where} ({int(unknown.sum())} such row(s))."
        )
    return hits.astype(np.float64)


def build_parser() -> argparse.ArgumentParser:
    """The `cpml-party` parser, its exit codes in the epilog and its defaults from CPML_PARTY_* variables."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.split("\n\n")[0] + " Every flag also reads CPML_PARTY_<FLAG> from the environment.",
        epilog=exit_codes_help(*EXIT_CODES),
    )
    add_arguments(parser)
    apply_env_defaults(parser, "CPML_PARTY_", os.environ)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (cpml.errors.ExitCode)."""
    from cpml.dp.features import read_feature_bounds, run_schema
    from cpml.dp.party import NoiseTooLow, PartyConfig, run_party
    from cpml.wire.tls import channel_credentials
    from cpml.wire.tls_diagnosis import TlsSettings, diagnose

    try:
        settings = party_settings(build_parser().parse_args(argv))
        configure_logging(settings.log_level, settings.log_format)
        if settings.out is not None:
            if settings.out.is_dir():
                raise ValueError(
                    f"Argument 'out' must be a file path for the model, not the directory {str(settings.out)!r}."
                )
            check_output_dir(settings.out.parent)
        bounds = read_feature_bounds(settings.feature_bounds) if settings.feature_bounds is not None else None
        x, y = load_party_data(
            settings.data,
            settings.data_format,
            settings.label_column,
            settings.scaling,
            settings.positive_label,
            bounds,
            settings.classes,
        )
        credentials = None
        if not settings.insecure:
            credentials = channel_credentials(settings.tls_ca, settings.tls_cert, settings.tls_key)
        run_id, name, token = _joining(settings)
    except ValueError as exc:
        return refuse(COMMAND, exc)
    if settings.insecure:
        log.warning("plaintext gRPC (--insecure): the join token and noisy models travel unencrypted")
    config = PartyConfig(
        server=settings.server,
        run_id=run_id,
        name=name,
        max_epsilon=settings.max_epsilon,
        wait_timeout=settings.wait_timeout,
        token=token,
        feature_schema=run_schema(bounds, settings.classes),
    )
    try:
        outcome = runner.run(run_party(config, x, y, credentials))
    except NoiseTooLow as exc:
        return refuse(COMMAND, exc, ExitCode.REFUSED)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            tls = None if settings.insecure else TlsSettings(settings.tls_ca, settings.tls_cert, settings.tls_key)
            cause = diagnose(settings.server, tls)  # a TLS mistake, named instead of "Socket closed"
            status = f"{exc.code().name}: {exc.details()}"
            return refuse(COMMAND, f"cannot reach the server: {cause or status}", ExitCode.UNREACHABLE)
        return refuse(COMMAND, f"server said {exc.code().name}: {exc.details()}", ExitCode.REFUSED)
    except Exception as exc:  # a bug or an environment failure: one line, the traceback only on request
        return unexpected(COMMAND, exc)
    if not outcome.finished:
        print(
            f"cpml-party: left after {outcome.rounds} rounds ({outcome.reason}); this party's"
            f" updates revealed epsilon {outcome.party_epsilon:.4f} to the server"
        )
        return ExitCode.LEFT_EARLY
    print(f"run finished after {outcome.rounds} rounds from this party ({outcome.reason})")
    print(
        f"released model: epsilon {outcome.release_epsilon:.4f}; this party's updates revealed"
        f" epsilon {outcome.party_epsilon:.4f} to the server"
    )
    if settings.out is not None and outcome.weights is not None:
        weights, release, own = outcome.weights.tolist(), outcome.release_epsilon, outcome.party_epsilon
        model = {"weights": weights, "release_epsilon": release, "party_epsilon": own}
        write_atomically(settings.out, json.dumps(model, indent=2))  # makes the parent directory too
        print(f"model: {settings.out}")
    return ExitCode.OK


def _joining(settings: PartySettings) -> tuple[str, str, str]:
    """The run this party joins, and its name and join token (from --name, --token-file, the certificate)."""
    from cpml.dp.auth import certificate_name, read_party_token

    if not settings.run_id:
        raise argument_error("run_id", "name the run to join (the id cpml-master aggregate printed)", settings.run_id)
    if settings.token_file is None and not settings.certificate:
        raise ValueError(
            "Argument 'token_file' must give this party's join token (from the server's operator) unless it presents a"
            " client certificate (--tls-cert/--tls-key), not neither."
        )
    token_name, token = read_party_token(settings.token_file) if settings.token_file else (None, "")
    if settings.name and token_name and settings.name != token_name:
        raise argument_error("name", f"be the name its token was issued to ({token_name!r})", settings.name)
    name = settings.name or token_name
    if not name and settings.certificate and settings.tls_cert is not None:
        name = certificate_name(settings.tls_cert)
    if not name:
        raise ValueError("Argument 'name' must be given when --token-file holds a bare token, not missing.")
    return settings.run_id, name, token


if __name__ == "__main__":
    sys.exit(main())

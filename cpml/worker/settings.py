"""The worker's settings: a frozen dataclass built from command-line flags, defaulting to CPML_WORKER_* env vars."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

from cpml.cli_args import add_log_arguments, comma_list, settings_fields
from cpml.env_defaults import apply_env_defaults, parse_bool
from cpml.errors import ExitCode, exit_codes_help

ENV_PREFIX = "CPML_WORKER_"
# An exchange over a share this small (times its classes) takes a millisecond or two, and runs on the event loop:
# the hand-off to a compute thread and back cost a fifth of each daemon's CPU in a round with 50 daemons on two
# cores (bench_distributed). Larger exchanges run on the executor, so the daemon keeps answering meanwhile.
INLINE_WORK_BYTES = 16 << 20
_UNITS = {
    "": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}


def parse_bytes(text: str) -> int:
    """Parse a byte count such as 4096, 512MiB or 4G."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"a byte count such as 4096, 512MiB or 4GiB, not {text!r}")
    return int(match.group(1)) * _UNITS[unit]


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the daemon is configured with; fault-injection fields are for tests and off by default."""

    listen: str = "127.0.0.1:50051"
    share_bytes_cap: int = 4 << 30
    max_message_bytes: int = 8 << 20
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    port_file: Path | None = None
    drain_seconds: float = 10.0
    job_idle_seconds: float = 3600.0
    orphan_seconds: float = 300.0  # a job with no open compute stream (its master gone) is forgotten sooner
    mpc_peer_hosts: tuple[str, ...] = ()  # hosts an MPC Join may name as peers (empty: any host:port)
    compute_threads: int = 2
    stop_with_parent: bool = False
    log_level: str = "info"
    log_format: str = "auto"
    fault_reply_delay: float = 0.0
    fault_fail_after_rounds: int = 0
    fault_wrong_results: str = ""  # "offset" or "random": return wrong but well-formed results
    fault_wrong_every: int = 1  # only in rounds whose number is a multiple of this
    fault_wrong_fraction: float = 0.1  # of the result's entries (at least one)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "Argument 'tls_cert' must come with 'tls_key' (both or neither), "
                f"not cert={self.tls_cert} key={self.tls_key}."
            )
        if self.tls_cert is None and not self.insecure:
            raise ValueError(
                "Argument 'tls_cert' must be given (with --tls-key) to serve over TLS, not None; "
                "pass --insecure to serve plaintext on a network you trust"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "Argument 'tls_client_ca' needs --tls-cert and --tls-key (mutual TLS is TLS), "
                f"not {self.tls_client_ca} alone."
            )
        for name in ("share_bytes_cap", "max_message_bytes", "compute_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"Argument '{name}' must be positive, not {getattr(self, name)}.")
        for name in (
            "drain_seconds",
            "job_idle_seconds",
            "orphan_seconds",
            "fault_reply_delay",
            "fault_fail_after_rounds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"Argument '{name}' must not be negative, not {getattr(self, name)}.")
        if self.insecure and self.tls_cert is not None:
            raise ValueError("Argument 'insecure' must be off when --tls-cert is given, not on.")

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.tls_cert is not None


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The cpml-worker argument parser, with defaults taken from CPML_WORKER_* variables in environ."""
    d = SimpleNamespace(**{f.name: f.default for f in fields(WorkerSettings)})

    p = argparse.ArgumentParser(
        prog="cpml-worker",
        description="CodedPrivateML worker daemon: stores coded shares and computes on them. "
        f"Every flag also reads {ENV_PREFIX}<FLAG> from the environment (e.g. {ENV_PREFIX}LISTEN).",
        epilog=exit_codes_help(ExitCode.OK, ExitCode.USAGE, ExitCode.CANNOT_SERVE),
    )
    p.add_argument("--listen", default=d.listen, help="host:port to serve on (port 0: any free port)")
    p.add_argument(
        "--share-bytes-cap",
        type=parse_bytes,
        default=str(d.share_bytes_cap),
        help="most bytes of shares held at once; uploads beyond it get RESOURCE_EXHAUSTED (default 4GiB). "
        "A job that is computing also holds a centred copy of its share: its bytes again as int32 "
        "(with numba installed), twice them as float64 (without)",
    )
    p.add_argument(
        "--max-message-bytes", type=parse_bytes, default=str(d.max_message_bytes), help="gRPC message size limit"
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="CA (PEM) that must sign client certificates: enables mutual TLS",
    )
    p.add_argument(
        "--insecure",
        type=parse_bool,
        nargs="?",
        const=True,
        default="false",
        metavar="true|false",
        help="serve plaintext (no TLS); anyone on the network path can read shares",
    )
    p.add_argument(
        "--port-file", type=Path, default=None, help="write the bound host:port here once serving (useful with port 0)"
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=d.drain_seconds,
        help="on SIGTERM, let calls in flight finish for this long",
    )
    p.add_argument(
        "--job-idle-seconds",
        type=float,
        default=d.job_idle_seconds,
        help="forget a job unused for this long (also the most a compute stream may stay silent)",
    )
    p.add_argument(
        "--mpc-peer-hosts",
        default="",
        help="comma-separated hosts an MPC baseline job may make this worker connect to (default: any "
        "host:port; set it on networks where that matters)",
    )
    p.add_argument(
        "--orphan-seconds",
        type=float,
        default=d.orphan_seconds,
        help="forget a job with no open compute stream after this long (a master that died "
        "without ending it); default 300",
    )
    p.add_argument(
        "--compute-threads",
        type=int,
        default=d.compute_threads,
        help=f"threads computing rounds (of different jobs) at once; a round over a share under "
        f"{INLINE_WORK_BYTES >> 20} MiB is computed on the event loop, without a thread hand-off",
    )
    p.add_argument(
        "--stop-with-parent",
        action="store_true",
        help="exit when the process that started this worker exits (used for embedded workers)",
    )
    add_log_arguments(p)
    faults = p.add_argument_group("fault injection (tests only; off by default)")
    faults.add_argument(
        "--fault-reply-delay", type=float, default=0.0, help="sleep this many seconds before every round reply"
    )
    faults.add_argument(
        "--fault-fail-after-rounds",
        type=int,
        default=0,
        help="end compute streams with UNAVAILABLE after this many rounds and report NOT_SERVING "
        "from then on: a worker that broke and stays broken (0: never)",
    )
    faults.add_argument(
        "--fault-wrong-results",
        choices=("", "offset", "random"),
        default="",
        help="return wrong but well-formed results: add 1 to, or randomize, some entries",
    )
    faults.add_argument(
        "--fault-wrong-every",
        type=int,
        default=1,
        help="lie only in rounds whose number is a multiple of this (default every round)",
    )
    faults.add_argument(
        "--fault-wrong-fraction",
        type=float,
        default=0.1,
        help="fraction of the result's entries that are wrong (at least one)",
    )
    apply_env_defaults(p, ENV_PREFIX, environ)
    return p


def settings_from_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> WorkerSettings:
    """Parse flags (falling back to the environment) into WorkerSettings; exit 2 with a message on bad input."""
    parser = build_parser(os.environ if environ is None else environ)
    args = parser.parse_args(argv)
    try:
        hosts = tuple(host.lower() for host in comma_list(args.mpc_peer_hosts))
        return WorkerSettings(**settings_fields(WorkerSettings, args) | {"mpc_peer_hosts": hosts})
    except ValueError as exc:
        parser.error(str(exc))

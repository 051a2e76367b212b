"""`cpml-master train` settings: a frozen dataclass built from flags, defaulting to CPML_MASTER_* env vars."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Only modules that import nothing heavy: `cpml-master train --help` parses these flags (0.1 s, not 1 s).
from cpml.cli_args import (
    add_client_tls_arguments,
    add_data_file_arguments,
    add_log_arguments,
    comma_list,
    settings_fields,
)
from cpml.env_defaults import apply_env_defaults
from cpml.options import DEFAULT_CHUNK_BYTES, DEFAULT_PRIME, MODELS, MPC_PROTOCOLS, SCALINGS, SIGMOIDS

ENV_PREFIX = "CPML_MASTER_"
TRAIN_PROTOCOLS = ("cpml", *MPC_PROTOCOLS)
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d{1,5})")  # host:port or [v6]:port


@dataclass(frozen=True)
class Timeouts:
    """Deadlines (seconds) for every kind of call the master makes."""

    connect: float = 60.0
    upload: float = 600.0
    round: float = 120.0
    control: float = 10.0


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run is configured with."""

    dataset: str
    data_format: str = "auto"
    label_column: int | str = -1  # an index (negative from the end) or a CSV header name
    positive_label: str | None = None  # the raw label that becomes 1 (default: the larger of the two)
    categorical: tuple[int | str, ...] = ()  # columns to one-hot encode besides a CSV's text columns
    test_fraction: float = 0.2  # 0: no test split (every row trains)
    test_data: str | None = None  # a file of test rows; then every row of dataset trains
    scaling: str = "standard"
    intercept: bool = True
    workers: tuple[str, ...] = ()
    local_workers: int = 10
    case: int = 1
    protocol: str = "cpml"  # or a baseline of cpml.mpc: "bgw", "bh08"
    sigmoid: str | None = None  # exact (None: exact, or the checkpoint's on --resume) or polynomial (the paper's)
    r: int = 1
    k: int | None = None
    t: int | None = None
    lx: int | None = None
    lw: int | None = None
    lc: int | None = None
    weight_bound: float | None = None  # None: the sigmoid's default (cpml.protocol.plan.default_weight_bound)
    sigmoid_interval: float = 8.0
    prime: int = DEFAULT_PRIME
    residues: int | None = None  # how many residue primes; None: the fewest that give the data 8+ bits
    byzantine: int = 0  # wrong results to correct per round (waits for R + 2A replies)
    detect: bool = False  # wait for R + 1 replies and refuse a round whose results disagree
    learning_rate: float | None = None
    iterations: int = 50
    model: str = "logistic"
    seed: int = 0
    out: Path = Path("runs/latest")
    resume: bool = False
    checkpoint_every: int = 1
    eval_every: int = 1  # compute the loss and accuracies every this many rounds (and after the last)
    insecure: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress: bool | None = None
    local_worker_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workers and not self.insecure and self.tls_ca is None:
            raise ValueError(
                "Argument 'tls_ca' must be given to reach remote workers over TLS (add --tls-cert and --tls-key "
                "for mutual TLS), not None; pass --insecure to send shares in plaintext on a network you trust"
            )
        if len(set(self.workers)) != len(self.workers):
            repeated = sorted({a for a in self.workers if self.workers.count(a) > 1})
            raise ValueError(f"Argument 'workers' must list each worker once, not {', '.join(repeated)} twice.")
        if self.protocol not in TRAIN_PROTOCOLS:
            raise ValueError(f"Argument 'protocol' must be one of {', '.join(TRAIN_PROTOCOLS)}, not {self.protocol!r}.")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "Argument 'tls_cert' must come with 'tls_key' (both or neither), "
                f"not cert={self.tls_cert} key={self.tls_key}."
            )
        if self.k is not None and self.t is None:
            raise ValueError(f"Argument 'k' needs --t as well (K and T fix each other's limits), not k={self.k} alone.")
        if self.sigmoid is not None and self.sigmoid not in SIGMOIDS:
            raise ValueError(f"Argument 'sigmoid' must be one of {', '.join(SIGMOIDS)}, not {self.sigmoid!r}.")
        if self.sigmoid == "exact" and self.protocol != "cpml":
            raise ValueError(
                f"Argument 'sigmoid' must be polynomial for the MPC baseline {self.protocol!r} (its parties evaluate "
                f"the degree-r polynomial), not 'exact'; leave --sigmoid out or pass --sigmoid polynomial."
            )
        if self.case not in (1, 2):
            raise ValueError(f"Argument 'case' must be 1 or 2, not {self.case}.")
        if not self.workers and self.local_workers < 1:
            raise ValueError(f"Argument 'local_workers' must be positive, not {self.local_workers}.")
        if self.checkpoint_every < 1:
            raise ValueError(f"Argument 'checkpoint_every' must be positive, not {self.checkpoint_every}.")
        if self.eval_every < 1:
            raise ValueError(f"Argument 'eval_every' must be positive, not {self.eval_every}.")
        if self.chunk_bytes < 1:
            raise ValueError(f"Argument 'chunk_bytes' must be positive, not {self.chunk_bytes}.")
        for name in ("connect", "upload", "round", "control"):
            seconds = getattr(self.timeouts, name)
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ValueError(f"Argument '{name}_timeout' must be a positive number of seconds, not {seconds}.")
        for address in self.workers:
            match = _ADDRESS.fullmatch(address)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"Argument 'workers' must list host:port addresses (port 1-65535), not {address!r}.")

    @property
    def n_workers(self) -> int:
        """N: the remote workers given, or the number of local workers to start."""
        return len(self.workers) or self.local_workers

    @property
    def degree(self) -> int:
        """The plan's r: 0 for the exact sigmoid of a CodedPrivateML logistic regression, else --r."""
        exact = self.sigmoid in (None, "exact") and self.model == "logistic" and self.protocol == "cpml"
        return 0 if exact else self.r

    @property
    def embedded(self) -> bool:
        """Whether the master starts its own loopback workers."""
        return not self.workers

    @property
    def transport(self) -> str:
        """How shares travel to the workers, as the model artifact's privacy section states it."""
        if self.embedded:
            return "embedded cpml-worker processes on 127.0.0.1: plaintext loopback, nothing leaves this machine"
        if self.insecure:
            return (
                "plaintext gRPC (--insecure): an eavesdropper on every master-worker link would see all N "
                "shares and defeat T-privacy"
            )
        return "mutual TLS (client certificate)" if self.tls_cert is not None else "TLS (server certificates)"


def add_train_arguments(p: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Add the `train` flags to a parser; defaults come from CPML_MASTER_<FLAG> variables in environ."""
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        required=True,
        help="digits-4v9, breast-cancer, diabetes (real-valued targets: --model linear), digits "
        "(ten classes), or a .csv/.npz/.svm file",
    )
    add_data_file_arguments(data)
    data.add_argument(
        "--categorical",
        default="",
        metavar="COL[,COL]",
        help="feature columns to one-hot encode, by 0-based index (negative from the end) or header "
        "name as --label-column; a CSV's text columns are encoded anyway (empty, '?' and 'NA' "
        "cells as the category 'missing')",
    )
    data.add_argument(
        "--positive-label",
        default=None,
        help="the label value that becomes class 1 (default: the larger number, or the later text in sorted order)",
    )
    data.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="held-out share of --dataset (default 0.2, stratified); 0 trains on every row",
    )
    data.add_argument(
        "--test-data",
        default=None,
        help="a file of test rows with the training file's columns; every --dataset row then trains "
        "(--test-fraction is not used)",
    )
    data.add_argument(
        "--scaling",
        choices=SCALINGS,
        default="standard",
        help="standard (default: mean 0, std 1), minmax ([0, 1]) or none, on the training split",
    )
    data.add_argument(
        "--intercept",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append a constant-1 feature so the model learns a bias, as scikit-learn does "
        "(default; --no-intercept leaves it out)",
    )

    cluster = p.add_argument_group("cluster")
    cluster.add_argument(
        "--workers",
        default="",
        help="comma-separated host:port of running cpml-worker daemons; omit to start local workers on 127.0.0.1",
    )
    cluster.add_argument(
        "--workers-local",
        dest="local_workers",
        type=int,
        default=10,
        help="how many local workers to start when --workers is omitted (default 10)",
    )
    cluster.add_argument(
        "--insecure",
        action="store_true",
        default=False,
        help="talk plaintext to remote workers (an eavesdropper on all links defeats T-privacy)",
    )
    add_client_tls_arguments(cluster, "workers")
    cluster.add_argument(
        "--tls-server-name", default=None, help="expect this name in every worker's certificate instead of its host"
    )
    cluster.add_argument("--connect-timeout", type=float, default=60.0)
    cluster.add_argument("--upload-timeout", type=float, default=600.0)
    cluster.add_argument("--round-timeout", type=float, default=120.0)
    cluster.add_argument(
        "--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES, help="largest share chunk sent in one message"
    )

    plan = p.add_argument_group("plan")
    plan.add_argument(
        "--case",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: T=1, largest K (speed); 2: parallelism about equal to privacy",
    )
    plan.add_argument(
        "--protocol",
        choices=TRAIN_PROTOCOLS,
        default="cpml",
        help="cpml (default), or an MPC baseline of the paper: bgw, bh08 (3 groups of 2T+1 "
        "workers, T = --t or floor((N-3)/6))",
    )
    plan.add_argument(
        "--sigmoid",
        choices=SIGMOIDS,
        default=None,
        help="exact (default): the workers compute X̃w̃ and X̃ᵀẽ and the master applies the true sigmoid in "
        "between (two exchanges a round, R = 2(K+T-1)+1); polynomial: the paper's degree-r fit, evaluated by "
        "the workers (one exchange, R = (2r+1)(K+T-1)+1; the MPC baselines always use it)",
    )
    plan.add_argument("--r", type=int, default=1, help="degree of the sigmoid polynomial (--sigmoid polynomial)")
    plan.add_argument("--k", type=int, default=None, help="override K (needs --t)")
    plan.add_argument("--t", type=int, default=None, help="override T, the colluding workers tolerated")
    plan.add_argument("--lx", type=int, default=None, help="data quantization bits (default: auto)")
    plan.add_argument("--lw", type=int, default=None, help="weight quantization bits (default: auto)")
    plan.add_argument("--lc", type=int, default=None, help="coefficient quantization bits (default: auto)")
    plan.add_argument(
        "--weight-bound",
        type=float,
        default=None,
        help="keep ||w||_2 within this radius (projected GD); the overflow guard relies on it (default: 16 with "
        "the exact sigmoid, 4 with the polynomial)",
    )
    plan.add_argument("--sigmoid-interval", type=float, default=8.0, help="fit the sigmoid polynomial on [-a, a]")
    plan.add_argument(
        "--prime",
        type=int,
        default=DEFAULT_PRIME,
        help="the largest residue prime; the others are the next primes below it",
    )
    plan.add_argument(
        "--byzantine",
        type=int,
        default=0,
        metavar="A",
        help="correct up to A workers that return wrong results each round (waits for R + 2A "
        "replies; the culprits are named and dropped); needs N >= R + 2A",
    )
    plan.add_argument(
        "--detect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait for R + 1 replies and stop, without updating, when results disagree",
    )
    plan.add_argument(
        "--residues",
        type=int,
        default=None,
        help="how many primes carry every value (default: the fewest that give the data at least 8 fractional bits)",
    )
    plan.add_argument("--learning-rate", type=float, default=None, help="default: 1/L")
    plan.add_argument("--iterations", type=int, default=50)
    plan.add_argument("--model", choices=MODELS, default="logistic")
    plan.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the split and the weight rounding (masks always come from the OS CSPRNG)",
    )

    run = p.add_argument_group("output")
    run.add_argument(
        "--out",
        type=Path,
        default="runs/latest",
        help="directory for model.json, metrics.json, curves.png and checkpoint.json",
    )
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.json")
    run.add_argument("--checkpoint-every", type=int, default=1)
    run.add_argument(
        "--eval-every",
        type=int,
        default=1,
        metavar="N",
        help="compute the loss and accuracy every N rounds and after the last (default 1): each costs "
        "passes over all the training and test rows, as much as a round on a large dataset",
    )
    run.add_argument(
        "--progress",
        dest="progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal)",
    )
    add_log_arguments(run)
    apply_env_defaults(p, ENV_PREFIX, os.environ if environ is None else environ)


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from parsed `train` arguments (raises ValueError naming a bad argument)."""
    return TrainSettings(
        **settings_fields(TrainSettings, args)
        | {
            "label_column": _index_or_name(args.label_column),
            "categorical": tuple(_index_or_name(c) for c in comma_list(getattr(args, "categorical", ""))),
            "workers": comma_list(args.workers),
            "out": Path(args.out),
            "timeouts": Timeouts(connect=args.connect_timeout, upload=args.upload_timeout, round=args.round_timeout),
        }
    )


def _index_or_name(value: object) -> int | str:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def parse_train_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parse `train` flags alone (for tests and tools)."""
    parser = argparse.ArgumentParser(prog="cpml-master train")
    add_train_arguments(parser, environ)
    return parser.parse_args(argv)

"""`cpml-master`: `train` runs a CodedPrivateML job; `predict` and `export` use its model.json; `aggregate` serves
WD-DP aggregation (cpml.dp)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cpml.env_defaults import apply_env_defaults
from cpml.errors import CpmlError, ExitCode, exit_codes_help, refuse, unexpected

if TYPE_CHECKING:
    from cpml.master.job import RoundRecord
    from cpml.protocol import Plan

# Nothing heavy at import (numpy, grpc, asyncio, structlog): `cpml-master train --help` answers in 0.1 s, and
# each command imports what it runs.

TRAIN_EXIT_CODES = (
    ExitCode.OK,
    ExitCode.FAILED,
    ExitCode.USAGE,
    ExitCode.NOT_ENOUGH_WORKERS,
    ExitCode.UNREACHABLE,
    ExitCode.ROUND_TIMEOUT,
    ExitCode.UNSUITABLE,
    ExitCode.WRONG_RESULTS,
    ExitCode.INTERRUPTED,
)

AGGREGATE_MODULE = "cpml.dp.aggregate_cli"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with `train`, `predict` and `export` (`aggregate` is parsed by its own module)."""
    from cpml.master.predict import add_export_arguments, add_predict_arguments
    from cpml.master.settings import add_train_arguments

    parser = argparse.ArgumentParser(
        prog="cpml-master", description="Run private training jobs on cpml-worker daemons."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,predict,export,aggregate}")
    add_train_arguments(
        sub.add_parser(
            "train",
            help="train a model with CodedPrivateML on local or remote workers",
            epilog=exit_codes_help(*TRAIN_EXIT_CODES),
            description="Train logistic/linear regression with CodedPrivateML. Without --workers, starts "
            "--workers-local cpml-worker processes on 127.0.0.1 (plaintext loopback). Every flag also "
            "reads CPML_MASTER_<FLAG> from the environment.",
        )
    )
    predict = sub.add_parser(
        "predict",
        help="predict raw rows with a trained model.json (and score them when they have labels)",
        description="Apply a model.json to the rows of a file: its preprocessing, then the weights. Writes one "
        "CSV row per input row; prints accuracy and log-loss (or R² and RMSE) when the file has "
        "labels. Columns that do not match the model's are refused by name. Every flag also reads "
        "CPML_PREDICT_<FLAG> from the environment.",
    )
    add_predict_arguments(predict)
    apply_env_defaults(predict, "CPML_PREDICT_", os.environ)
    export = sub.add_parser(
        "export",
        help="export a model.json as a scikit-learn Pipeline (skops format, no pickle)",
        description="Write the model as a fitted scikit-learn Pipeline (the scaling, then LogisticRegression or "
        "LinearRegression with coef_ and intercept_) in skops' format. Every flag also reads "
        "CPML_EXPORT_<FLAG> from the environment.",
    )
    add_export_arguments(export)
    apply_env_defaults(export, "CPML_EXPORT_", os.environ)
    sub.add_parser(
        "aggregate", add_help=False, help="serve as the WD-DP aggregation server (see `cpml-master aggregate --help`)"
    )
    return parser


def _aggregate(argv: Sequence[str]) -> int:
    try:
        module = importlib.import_module(AGGREGATE_MODULE)
    except ImportError as exc:
        print(
            f"cpml-master aggregate: unavailable ({exc}); this installation lacks {AGGREGATE_MODULE}", file=sys.stderr
        )
        return ExitCode.FAILED
    return int(module.run(module.build_parser().parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (cpml.errors.ExitCode)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["aggregate"]:
        return _aggregate(argv[1:])  # imported only when asked for
    args = build_parser().parse_args(argv)
    if args.command in ("predict", "export"):
        from cpml.master.predict import export_command, predict_command

        return predict_command(args) if args.command == "predict" else export_command(args)
    from cpml.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    return _train(args)


TRAIN = "cpml-master train"  # how its refusals begin


def _train(args: argparse.Namespace) -> int:
    import asyncio

    from cpml import runner
    from cpml.errors import check_output_dir
    from cpml.master.settings import train_settings
    from cpml.master.train import train

    try:
        settings = train_settings(args)
        check_output_dir(settings.out)
    except ValueError as exc:
        return refuse(TRAIN, exc)
    checkpoint = settings.out / "checkpoint.json"
    try:
        report = runner.run(train(settings), cancel_on_sigterm=True)
    except CpmlError as exc:
        return refuse(TRAIN, _stopped(exc, checkpoint), exc.exit_code)
    except (ValueError, OverflowError) as exc:
        return refuse(TRAIN, exc)
    except (KeyboardInterrupt, asyncio.CancelledError):
        message = f"interrupted; the last finished round is checkpointed in {checkpoint} (rerun with --resume)"
        return refuse(TRAIN, message, ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug or an environment failure: one line, the traceback only on request
        return unexpected(TRAIN, exc)
    final = report.history[-1] if report.history else None
    plan = report.plan
    shape = (
        f"K={plan.k}, T={plan.t}, {plan.sigmoid_label}, R={plan.threshold}"
        if settings.protocol == "cpml"
        else f"{settings.protocol.upper()} in 3 groups of 2T+1, T={plan.t}, r={plan.r}"
    )
    print(
        f"trained {plan.model} regression on {settings.dataset} for {plan.iterations} iterations with "
        f"N={plan.n_workers} workers ({shape})"
    )
    print(precision_line(plan))
    print(_final_metrics(final, plan.model) if final else "no rounds were run")
    targets = next((note for note in report.notes if note.startswith(("labels: ", "targets: "))), None)
    if targets:
        print(targets)  # which raw label the model calls 1, or how predictions map back to the targets
    if report.dropped_workers:
        print(f"workers dropped: {len(report.dropped_workers)}")
    print(
        f"model: {report.out / 'model.json'}   metrics: {report.out / 'metrics.json'}   "
        f"plot: {report.out / 'curves.png'}"
    )
    return ExitCode.OK


def _stopped(exc: CpmlError, checkpoint: Path) -> str:
    """Why a run stopped, with what to do next: the checkpoint to --resume from when there is one."""
    resumable = {
        ExitCode.NOT_ENOUGH_WORKERS: "bring workers back and rerun with --resume",
        ExitCode.ROUND_TIMEOUT: "rerun with --resume",
        ExitCode.INTERRUPTED: "rerun with --resume",
    }
    if exc.exit_code in resumable:
        return f"stopped: {exc}. The last finished round is checkpointed in {checkpoint}; {resumable[exc.exit_code]}."
    if exc.exit_code == ExitCode.WRONG_RESULTS:
        return f"stopped: {exc}"
    if exc.exit_code == ExitCode.UNSUITABLE:
        return f"workers cannot take the job: {exc}"
    return str(exc)


def precision_line(plan: Plan) -> str:
    """How every value was carried: the residue primes, their bits, and the fractional bits and the step."""
    primes = "prime" if plan.residues == 1 else "primes"
    third = "sigmoid values" if plan.exact_sigmoid else "coefficients"  # what l_c quantizes
    return (
        f"precision: {plan.residues} residue {primes} <= {plan.p} ({plan.basis.bits:.0f} bits); fractional "
        f"bits: data {plan.lx}, weights {plan.lw}, {third} {plan.lc}; step {plan.learning_rate:.4g}"
    )


def _final_metrics(final: RoundRecord, model: str) -> str:
    """The last round's test metrics: accuracy (logistic) or R² and RMSE in the targets' units (linear)."""

    def shown(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    if model == "linear":
        return (
            f"test R²: {shown(final.test_r2, '.4f')}   "
            f"RMSE: {shown(final.test_rmse, '.4g')}   loss: {shown(final.loss, '.4f')}"
        )
    return f"test accuracy: {shown(final.test_accuracy, '.4f')}   loss: {shown(final.loss, '.4f')}"


if __name__ == "__main__":
    sys.exit(main())

"""`cpml-master predict` (a trained model.json on raw rows) and `cpml-master export` (to a scikit-learn Pipeline)."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cpml.errors import ExitCode, refuse
from cpml.options import DATA_FORMATS as FORMATS

if TYPE_CHECKING:  # the commands import them when they run: `cpml-master --help` builds these parsers
    import numpy as np

    from cpml.model import Model


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """The `predict` flags."""
    p.add_argument("--model", required=True, type=Path, help="model.json written by cpml-master train")
    p.add_argument(
        "--data",
        required=True,
        help="rows to predict: .csv/.npz/.svm with the training file's feature columns (a CSV with a "
        "header is matched by column name); a label column, if present, is used to score",
    )
    p.add_argument("--format", dest="data_format", choices=FORMATS, default="auto")
    p.add_argument(
        "--out",
        default="predictions.csv",
        help="CSV with one row per input row: label and probability of the class mapped to 1 "
        "(logistic; with more than two classes, of the predicted one), or prediction (linear); "
        "'-' writes to standard output",
    )


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The `export` flags."""
    p.add_argument("--model", required=True, type=Path, help="model.json written by cpml-master train")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="where to write the scikit-learn Pipeline in skops format (e.g. model.skops)",
    )


def write_predictions(model: Model, x: np.ndarray, stream: TextIO) -> int:
    """Write one CSV row per input row; returns how many."""
    from cpml.preprocessing import label_text

    writer = csv.writer(stream, lineterminator="\n")
    if model.kind == "logistic":
        writer.writerow(["label", "probability"])
        probability = model.probability(x)
        if probability.ndim == 2:  # C > 2: the probability of the predicted class
            probability = probability.max(axis=1)
        for label, p in zip(model.predict(x), probability):
            writer.writerow([label_text(label), repr(float(p))])
    else:
        writer.writerow(["prediction"])
        writer.writerows([repr(float(v))] for v in model.predict(x))
    return len(x)


def score_line(model: Model, metrics: dict[str, float]) -> str:
    """The test metrics as one line: accuracy (right of rows) and log-loss, or R² and RMSE."""
    rows = int(metrics["rows"])
    if model.kind == "logistic":
        right = round(metrics["accuracy"] * rows)
        return f"accuracy: {metrics['accuracy']:.4f} ({right} of {rows} rows)   log-loss: {metrics['log_loss']:.4f}"
    return f"R²: {metrics['r2']:.4f}   RMSE: {metrics['rmse']:.4g}   ({rows} rows)"


def predict_command(args: argparse.Namespace) -> int:
    """Run `cpml-master predict`; returns the exit code."""
    from cpml.data import read_matching
    from cpml.model import load_model

    try:
        model = load_model(args.model)
        raw = read_matching(args.data, model.preprocessing, args.data_format, flag="data")
        unseen = model.preprocessing.encode_features(raw.x)[1]
        metrics = None if raw.y is None else model.evaluate(raw.x, raw.y, raw.label_source or repr(args.data))
        if args.out == "-":
            try:
                write_predictions(model, raw.x, sys.stdout)
                sys.stdout.flush()
            except BrokenPipeError:  # `| head`: the reader has seen enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return ExitCode.OK
        else:
            with Path(args.out).open("w", newline="") as f:
                write_predictions(model, raw.x, f)
    except (ValueError, OSError) as exc:
        return refuse("cpml-master predict", exc)
    if unseen:
        counts = ", ".join(f"{model.preprocessing.column_name(c)} {n}" for c, n in unseen.items())
        print(
            f"warning: {sum(unseen.values())} cell(s) hold categories the model did not see in training; they "
            f"encode as all zeros ({counts})",
            file=sys.stderr,
        )
    report = sys.stderr if args.out == "-" else sys.stdout
    where = "standard output" if args.out == "-" else args.out
    print(f"predicted {len(raw.x)} rows of {args.data} with the {model.kind} model {args.model}: {where}", file=report)
    if metrics is not None:
        print(score_line(model, metrics), file=report)
    return ExitCode.OK


def export_command(args: argparse.Namespace) -> int:
    """Run `cpml-master export`; returns the exit code."""
    from cpml.model import load_model, save_sklearn

    try:
        model = load_model(args.model)
        save_sklearn(model, args.out)
    except (ValueError, OSError) as exc:
        return refuse("cpml-master export", exc)
    steps = " -> ".join(name for name, _ in model.to_sklearn().steps)
    print(
        f"wrote a scikit-learn Pipeline ({steps}) to {args.out}; load it with "
        f"cpml.model.load_sklearn({str(args.out)!r}) or skops.io.load"
    )
    return ExitCode.OK

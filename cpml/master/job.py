"""The job around a training run, the same for every protocol: data, plan precision, checkpoint, rounds log,
the cluster, the outputs. cpml.master.train (CodedPrivateML) and cpml.master.mpc_train (the baselines) drive the
rounds in between."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

import cpml.errors as errors
import cpml.reporting as reporting
from cpml.data import Dataset, load_dataset
from cpml.field import uniform
from cpml.files import write_atomically
from cpml.master.cluster import Cluster
from cpml.master.local import LocalWorkers
from cpml.master.settings import TrainSettings
from cpml.model import model_of_run
from cpml.protocol import DataProfile, Plan, RoundStats, RunInputs, TrainingRun, auto_precision, public_profile
from cpml.protocol.coding import MaskSource
from cpml.wire.tls import channel_credentials
from cpml.wire.tls_diagnosis import TlsSettings, diagnose

log = structlog.get_logger(__name__)

CHECKPOINT_FORMAT = 1
ROUNDS_LOG = "rounds.jsonl"
PLAINTEXT_WARNING = (
    "plaintext gRPC (--insecure): an eavesdropper who can read every master-worker link sees "
    "all N shares and so defeats T-privacy; use TLS (--tls-ca, plus --tls-cert/--tls-key for "
    "mutual TLS)"
)
DATA_DEPENDENT_QUANTIZATION = (
    "automatic precision without scaling picks the residues and (l_x, l_w, l_c) from the "
    "data's norms, and workers see that choice in the moduli and the sigmoid "
    "coefficients: a few bits about the data's scale; pass --residues and "
    "--lx/--lw/--lc (or use --scaling standard or minmax) to keep everything workers "
    "receive independent of the data"
)
LOOPBACK_WARNING = (
    "embedded workers speak plaintext gRPC on 127.0.0.1: safe while every process stays on this "
    "machine, but across a network an eavesdropper on every link would see all N shares and "
    "defeat T-privacy, so remote workers need TLS"
)


class ResumeError(errors.InvalidInput):
    """The checkpoint cannot be resumed with these settings."""


@dataclass(frozen=True)
class RoundRecord:
    """What the master measured in one round."""

    round: int
    loss: float | None  # None (as the accuracies): not evaluated this round (--eval-every)
    train_accuracy: float | None
    test_accuracy: float | None
    workers_used: tuple[int, ...]
    encode_seconds: float
    send_seconds: float
    wait_seconds: float
    decode_update_seconds: float
    total_seconds: float
    bytes_sent: int
    bytes_received: int
    late_replies: int
    worker_compute_seconds: float = 0.0  # within wait: the slowest used worker's own compute (0: not reported)
    test_r2: float | None = None  # linear regression only
    test_rmse: float | None = None  # linear regression only, in the targets' own units
    wrong_workers: tuple[int, ...] = ()  # whose results were wrong this round (corrected, then dropped)


@dataclass(frozen=True)
class TrainReport:
    """The outcome of a run: final weights, plan, every round, and where the outputs went."""

    plan: Plan
    weights: np.ndarray
    history: tuple[RoundRecord, ...]
    upload: dict[str, Any]
    dropped_workers: dict[int, str]
    out: Path
    notes: tuple[str, ...] = ()  # how the data was read, labelled, split and scaled


def load_training_data(settings: TrainSettings) -> Dataset:
    """The dataset the settings name, split and scaled as they say; each note on how is logged."""
    data = load_dataset(
        settings.dataset,
        settings.test_fraction or None,
        settings.scaling,
        settings.seed,
        settings.data_format,
        settings.label_column,
        settings.intercept,
        settings.positive_label,
        model=settings.model,
        test_source=settings.test_data,
        categorical=settings.categorical,
    )
    for note in data.notes:
        log.info("data", note=note)
    return data


# Plan fields as the flags that set them, so a refusal names what the user typed.
PLAN_FLAGS = {
    "p": "--prime",
    "n_workers": "--workers-local (or --workers)",
    "learning_rate": "--learning-rate",
    "r": "--r",
    "k": "--k",
    "t": "--t",
    "lx": "--lx",
    "lw": "--lw",
    "lc": "--lc",
    "residues": "--residues",
    "iterations": "--iterations",
    "weight_bound": "--weight-bound",
    "sigmoid_interval": "--sigmoid-interval",
    "model": "--model",
    "byzantine": "--byzantine",
}


def in_flag_terms(message: str) -> str:
    """A Plan refusal rewritten with the command-line flag in place of the field name."""
    for field, flag in PLAN_FLAGS.items():
        message = message.replace(f"Argument '{field}' ", f"Argument '{flag}' ")
    return message.replace(" or None (auto)", " (leave it out for 1/L)")


def choose_precision(settings: TrainSettings, plan: Plan, x_train: np.ndarray) -> Plan:
    """The plan with its residues and (l_x, l_w, l_c): automatic unless the settings fix them."""
    # Workers see the precision (the moduli, and the levels in the sigmoid coefficients), so it is planned
    # from public facts: the shape and the range the scaling guarantees (cpml.protocol.public_profile).
    profile = public_profile(settings.scaling, *x_train.shape)
    fixed = {name: getattr(settings, name) for name in ("lx", "lw", "lc") if getattr(settings, name) is not None}
    if profile is None:
        if settings.residues is None or len(fixed) < 3:  # something is still chosen from the data
            log.warning(DATA_DEPENDENT_QUANTIZATION, scaling=settings.scaling)
        with np.errstate(over="ignore", invalid="ignore"):  # huge unscaled values: inf, which the guard refuses
            profile = DataProfile.of(x_train, 1)
    return auto_precision(plan, profile, settings.residues, fixed)


def precision_fields(plan: Plan) -> dict[str, Any]:
    """How a run carries its values, for its "plan" log line: the moduli, their bits, the levels, step, rounds."""
    return {
        "moduli": list(plan.moduli),
        "modulus_bits": round(plan.basis.bits, 1),
        "lx": plan.lx,
        "lw": plan.lw,
        "lc": plan.lc,
        "learning_rate": plan.learning_rate,
        "iterations": plan.iterations,
    }


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of the training split, so a resume cannot silently continue on other data."""
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).data)  # the same bytes, not a copy
    return digest.hexdigest()


def save_checkpoint(path: Path, trainer: TrainingRun, fingerprint: str) -> None:
    """Atomically write what --resume needs: the trainer's state and the data fingerprint."""
    # compact: json's C encoder (indent= falls back to the Python one, 10-30 ms a round here)
    write_atomically(
        path,
        json.dumps(
            {"format": CHECKPOINT_FORMAT, "trainer": trainer.checkpoint(), "data_sha256": fingerprint},
            separators=(",", ":"),
        ),
    )


def append_round(path: Path, record: RoundRecord) -> None:
    """Append one round's record to the JSON-lines log (constant work per round, however long the run)."""
    with path.open("a") as f:
        f.write(json.dumps(asdict(record)) + "\n")


def read_rounds(path: Path, up_to: int) -> list[RoundRecord]:
    """The logged rounds 1..up_to (a resumed run drops any logged after its checkpoint)."""
    # A last line cut short (the master died while appending it) is dropped: its round is not in the
    # checkpoint's past unless the checkpoint says so, and a resumed run logs it again.
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise
            log.warning("dropping a truncated last line of the rounds log", path=str(path), line=number)
    return [
        RoundRecord(
            **{**r, "workers_used": tuple(r["workers_used"]), "wrong_workers": tuple(r.get("wrong_workers", ()))}
        )
        for r in records
        if r["round"] <= up_to
    ]


# The flags a checkpoint's plan fixes: (flag, TrainSettings field, Plan field).
RESUMED_FLAGS = (
    ("--prime", "prime", "p"),
    ("--residues", "residues", "residues"),
    ("--k", "k", "k"),
    ("--t", "t", "t"),
    ("--r", "r", "r"),
    ("--lx", "lx", "lx"),
    ("--lw", "lw", "lw"),
    ("--lc", "lc", "lc"),
    ("--learning-rate", "learning_rate", "learning_rate"),
    ("--model", "model", "model"),
    ("--weight-bound", "weight_bound", "weight_bound"),
    ("--sigmoid-interval", "sigmoid_interval", "sigmoid_interval"),
)


def plan_changes(settings: TrainSettings, saved: Plan) -> list[str]:
    """The plan flags this command sets to something else than the checkpoint's plan (unset flags follow it)."""
    changes = []
    for flag, setting, field in RESUMED_FLAGS:
        wanted, had = getattr(settings, setting), getattr(saved, field)
        if flag == "--r":  # r = 0 is the exact sigmoid: --sigmoid, when given, must name the checkpoint's
            chosen = settings.sigmoid
            kept = "exact" if saved.exact_sigmoid else "polynomial"
            if chosen is not None and chosen != kept and settings.model == "logistic":
                changes.append(f"--sigmoid {chosen} (checkpoint: {kept})")
            if not saved.exact_sigmoid and wanted != had:
                changes.append(f"{flag} {wanted} (checkpoint: {had})")
        elif wanted is not None and wanted != had:
            changes.append(f"{flag} {wanted} (checkpoint: {had})")
    return changes


def round_record(stats: RoundStats, target_scale: float, **measured: Any) -> RoundRecord:
    """A round's record: the trainer's stats (the test RMSE in the targets' units) and what the master measured."""
    rmse = None if stats.test_rmse is None else stats.test_rmse * target_scale
    return RoundRecord(**{**asdict(stats), "test_rmse": rmse}, **measured)


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpoint left a run: its trainer state, the rounds finished, the weights and the rounds' log."""

    saved: dict[str, Any]
    round: int
    weights: np.ndarray
    previous: np.ndarray  # the weights a round earlier, for the momentum
    history: list[RoundRecord]


def run_inputs(
    plan: Plan, data: Dataset, seed: int, point: ResumePoint | None = None, mask_source: MaskSource = uniform
) -> RunInputs:
    """What a run starts from: the dataset's splits, and the checkpoint's weights and round when it resumes."""
    inputs = RunInputs(plan, data.x_train, data.y_train, seed, data.x_test, data.y_test, mask_source=mask_source)
    if point is None:
        return inputs
    return replace(inputs, weights=point.weights, previous=point.previous, start_round=point.round)


def resume_point(out: Path, fingerprint: str) -> ResumePoint:
    """Read the checkpoint and the rounds log in out, refusing damaged ones; the log keeps the checkpoint's rounds."""
    path, rounds_log = out / "checkpoint.json", out / ROUNDS_LOG
    saved = load_checkpoint(path, fingerprint)["trainer"]
    try:
        round_, weights = int(saved["round"]), np.array(saved["weights"], dtype=np.float64)
        previous = np.array(saved.get("previous", saved["weights"]), dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(
            f"Argument 'resume' needs an intact checkpoint at {path}, not one with a damaged trainer state "
            f"({type(exc).__name__}: {exc}); run without --resume to start fresh"
        ) from None
    try:
        history = read_rounds(rounds_log, round_)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(
            f"Argument 'resume' needs an intact {rounds_log}, not a damaged one ({type(exc).__name__}: {exc}); "
            f"run without --resume to start fresh"
        ) from None
    rewrite_rounds(rounds_log, history)
    log.info("resuming", round=round_, checkpoint=str(path))
    return ResumePoint(saved, round_, weights, previous, history)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    """Read a checkpoint, refusing one made for different data or by another format."""
    if not path.is_file():
        raise ResumeError(
            f"Argument 'resume' needs a checkpoint at {path}, not a missing file; run without --resume to start fresh"
        )
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResumeError(
            f"Argument 'resume' needs a readable checkpoint at {path}, not a damaged one ({exc}); "
            f"run without --resume to start fresh"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("trainer"), dict):
        raise ResumeError(
            f"Argument 'resume' needs a checkpoint written by cpml-master train at {path}, not "
            f"a JSON {type(state).__name__} without its trainer state; run without --resume to "
            f"start fresh"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"checkpoint {path} has format {state.get('format')!r}, this cpml reads {CHECKPOINT_FORMAT}")
    if state.get("data_sha256") != fingerprint:
        raise ResumeError(
            f"checkpoint {path} was made on different training data (fingerprint mismatch); "
            f"use the same data flags (--dataset, --format, --label-column, --positive-label, "
            f"--test-fraction, --scaling, --seed, --intercept), or start fresh"
        )
    return state


def rewrite_rounds(path: Path, history: list[RoundRecord]) -> None:
    """Replace the rounds log with these records (a resumed run keeps those up to its checkpoint)."""
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in history))


async def open_cluster(settings: TrainSettings, stack: contextlib.AsyncExitStack, round_bytes: int = 0) -> Cluster:
    """The run's workers: embedded local processes, or the remote daemons over TLS (or --insecure), warned."""
    # The master accepts replies as large as twice the largest message it sends (chunks, or a round's values).
    if settings.embedded:
        local = await stack.enter_async_context(
            LocalWorkers(
                settings.n_workers, settings.out / "workers", settings.timeouts.connect, settings.local_worker_args
            )
        )
        addresses, credentials, diagnosis = local.addresses, None, None
        log.warning(LOOPBACK_WARNING)
    else:
        addresses = list(settings.workers)
        if settings.insecure:
            credentials, tls = None, None
            log.warning(PLAINTEXT_WARNING)
        else:
            credentials = channel_credentials(settings.tls_ca, settings.tls_cert, settings.tls_key)
            tls = TlsSettings(settings.tls_ca, settings.tls_cert, settings.tls_key, settings.tls_server_name)
        diagnosis = functools.partial(diagnose, tls=tls)
    return await stack.enter_async_context(
        Cluster(
            addresses,
            credentials,
            settings.tls_server_name,
            settings.timeouts,
            max_message_bytes=max(8 << 20, 2 * settings.chunk_bytes, 2 * round_bytes),
            diagnose=diagnosis,
        )
    )


class RoundsLog:
    """Each finished round: kept, appended to rounds.jsonl, shown, checkpointed every few rounds; use `with`."""

    def __init__(
        self,
        settings: TrainSettings,
        run: TrainingRun,
        fingerprint: str,
        history: list[RoundRecord],
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self._settings, self._run, self._fingerprint = settings, run, fingerprint
        self.history, self._on_round = history, on_round
        self._bar = reporting.ProgressBar(run.plan.iterations, "train", enabled=settings.progress, start_step=run.round)

    def __enter__(self) -> RoundsLog:
        reporting.load_plotting()  # while the rounds wait on the workers, for the closing plot_curves
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def record(self, record: RoundRecord) -> None:
        """Keep, log, show and (every --checkpoint-every rounds, and at the end) checkpoint one finished round."""
        self.history.append(record)
        append_round(self._settings.out / ROUNDS_LOG, record)
        if self._run.round % self._settings.checkpoint_every == 0 or self._run.done:
            self.save()
        shown: dict[str, Any] = {} if record.loss is None else {"loss": record.loss}
        if record.test_accuracy is not None:
            shown["accuracy"] = record.test_accuracy
        fit = {} if record.test_r2 is None else {"test_r2": record.test_r2, "test_rmse": record.test_rmse}
        if fit:
            shown |= {"r2": record.test_r2, "rmse": record.test_rmse}
        self._bar.update(self._run.round, **shown)
        # with a progress bar on screen, per-round lines would only break it
        loss = None if record.loss is None else round(record.loss, 6)
        (log.debug if self._bar.enabled else log.info)(
            "round",
            round=record.round,
            loss=loss,
            test_accuracy=record.test_accuracy,
            seconds=round(record.total_seconds, 4),
            late=record.late_replies,
            **fit,
        )
        if self._on_round is not None:
            self._on_round(record)

    def save(self) -> None:
        """Checkpoint the last finished round (also on the way out of a failed run)."""
        save_checkpoint(self._settings.out / "checkpoint.json", self._run, self._fingerprint)


def write_outputs(
    settings: TrainSettings,
    run: TrainingRun,
    data: Dataset,
    history: list[RoundRecord],
    metrics: dict[str, Any],
    title: str,
    protocol: str = "cpml",
) -> None:
    """model.json (the versioned artifact, cpml.model), metrics.json and curves.png of a finished run."""
    plan, out = run.plan, settings.out
    final = history[-1] if history else None
    model_of_run(plan, run.weights, data, settings.transport, final, protocol=protocol).save(out / "model.json")
    reporting.write_metrics(
        out / "metrics.json",
        {
            "dataset": data.name,
            "notes": list(data.notes),
            **metrics,
            "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
            "final": asdict(final) if final else None,
            "rounds": [asdict(r) for r in history],
        },
    )
    evaluated = [r for r in history if r.loss is not None]  # every --eval-every rounds, and the last
    if evaluated:
        panels: dict[str, list[float | None]] = {"loss": [r.loss for r in evaluated]}
        if any(r.test_accuracy is not None for r in evaluated):
            panels["test accuracy"] = [r.test_accuracy for r in evaluated]
        if any(r.test_r2 is not None for r in evaluated):
            panels["test R²"] = [r.test_r2 for r in evaluated]
        reporting.plot_curves(out / "curves.png", [r.round for r in evaluated], panels, title=f"{data.name}: {title}")

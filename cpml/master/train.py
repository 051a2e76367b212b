"""The training loop: load data, plan, distribute shares, drive the rounds, checkpoint, report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from cpml import reporting
from cpml.data import Dataset, load_dataset
from cpml.field import uniform
from cpml.master.cluster import Cluster, NotEnoughWorkers, UploadStats
from cpml.master.local import LocalWorkers
from cpml.master.rejoin import Rejoiner
from cpml.field.errors import TooManyErrors
from cpml.master.rounds import ComputeStreams
from cpml.master.settings import TrainSettings
from cpml.model import model_of_run
from cpml.protocol import CodedTrainer, DataProfile, Plan, auto_precision, plan_from_checkpoint, public_profile
from cpml.protocol.coding import MaskSource
from cpml.wire import serde
from cpml.wire.tls import channel_credentials
from cpml.wire.tls_diagnosis import TlsSettings, diagnose

log = structlog.get_logger(__name__)

CHECKPOINT_FORMAT = 1
ROUNDS_LOG = "rounds.jsonl"
PLAINTEXT_WARNING = ("plaintext gRPC (--insecure): an eavesdropper who can read every master-worker link sees "
                     "all N shares and so defeats T-privacy; use TLS (--tls-ca, plus --tls-cert/--tls-key for "
                     "mutual TLS)")
DATA_DEPENDENT_QUANTIZATION = ("automatic precision without scaling picks the residues and (l_x, l_w, l_c) from the "
                               "data's norms, and workers see that choice in the moduli and the sigmoid "
                               "coefficients: a few bits about the data's scale; pass --residues and "
                               "--lx/--lw/--lc (or use --scaling standard or minmax) to keep everything workers "
                               "receive independent of the data")
LOOPBACK_WARNING = ("embedded workers speak plaintext gRPC on 127.0.0.1: safe while every process stays on this "
                    "machine, but across a network an eavesdropper on every link would see all N shares and "
                    "defeat T-privacy, so remote workers need TLS")


class ResumeError(ValueError):
    """The checkpoint cannot be resumed with these settings."""


class WrongResults(Exception):
    """Some workers sent wrong results that the redundancy could not correct; the round was not applied."""


@dataclass(frozen=True)
class RoundRecord:
    """What the master measured in one round."""

    round: int
    loss: float
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
    data = load_dataset(settings.dataset, settings.test_fraction or None, settings.scaling, settings.seed,
                        settings.data_format, settings.label_column, settings.intercept, settings.positive_label,
                        model=settings.model, test_source=settings.test_data)
    for note in data.notes:
        log.info("data", note=note)
    return data


# Plan fields as the flags that set them, so a refusal names what the user typed.
PLAN_FLAGS = {"p": "--prime", "n_workers": "--workers-local (or --workers)", "learning_rate": "--learning-rate",
              "r": "--r", "k": "--k", "t": "--t", "lx": "--lx", "lw": "--lw", "lc": "--lc", "residues": "--residues",
              "iterations": "--iterations", "weight_bound": "--weight-bound",
              "sigmoid_interval": "--sigmoid-interval", "model": "--model", "byzantine": "--byzantine"}


def in_flag_terms(message: str) -> str:
    """A Plan refusal rewritten with the command-line flag in place of the field name."""
    for field, flag in PLAN_FLAGS.items():
        message = message.replace(f"Argument '{field}' ", f"Argument '{flag}' ")
    return message.replace(" or None (auto)", " (leave it out for 1/L)")


def make_plan(settings: TrainSettings, n_workers: int, x_train: np.ndarray) -> Plan:
    """The plan for N workers from the settings: Case 1/2 or explicit K/T; precision automatic unless given."""
    try:
        return _make_plan(settings, n_workers, x_train)
    except ValueError as exc:
        raise ValueError(in_flag_terms(str(exc))) from None


def _make_plan(settings: TrainSettings, n_workers: int, x_train: np.ndarray) -> Plan:
    kwargs: dict[str, Any] = {"p": settings.prime, "iterations": settings.iterations, "model": settings.model,
                              "learning_rate": settings.learning_rate, "weight_bound": settings.weight_bound,
                              "sigmoid_interval": settings.sigmoid_interval, "byzantine": settings.byzantine,
                              "detect": settings.detect}
    if settings.k is not None and settings.t is not None:
        plan = Plan(n_workers=n_workers, k=settings.k, t=settings.t, r=settings.r, **kwargs)
    elif settings.t is not None:
        plan = Plan.for_privacy(n_workers, settings.t, settings.r, **kwargs)
    elif settings.case == 2:
        plan = Plan.case2(n_workers, settings.r, **kwargs)
    else:
        plan = Plan.case1(n_workers, settings.r, **kwargs)
    return choose_precision(settings, plan, x_train)


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


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of the training split, so a resume cannot silently continue on other data."""
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def save_checkpoint(path: Path, trainer: CodedTrainer, fingerprint: str) -> None:
    """Atomically write what --resume needs: the trainer's state and the data fingerprint."""
    _write_json(path, {"format": CHECKPOINT_FORMAT, "trainer": trainer.checkpoint(), "data_sha256": fingerprint})


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
    return [RoundRecord(**{**r, "workers_used": tuple(r["workers_used"]),
                           "wrong_workers": tuple(r.get("wrong_workers", ()))}) for r in records if r["round"] <= up_to]


# The flags a checkpoint's plan fixes: (flag, TrainSettings field, Plan field).
RESUMED_FLAGS = (("--prime", "prime", "p"), ("--residues", "residues", "residues"), ("--k", "k", "k"),
                 ("--t", "t", "t"), ("--r", "r", "r"), ("--lx", "lx", "lx"), ("--lw", "lw", "lw"),
                 ("--lc", "lc", "lc"), ("--learning-rate", "learning_rate", "learning_rate"),
                 ("--model", "model", "model"), ("--weight-bound", "weight_bound", "weight_bound"),
                 ("--sigmoid-interval", "sigmoid_interval", "sigmoid_interval"))


def plan_changes(settings: TrainSettings, saved: Plan) -> list[str]:
    """The plan flags this command sets to something else than the checkpoint's plan (unset flags follow it)."""
    changes = []
    for flag, setting, field in RESUMED_FLAGS:
        wanted, had = getattr(settings, setting), getattr(saved, field)
        if wanted is not None and wanted != had:
            changes.append(f"{flag} {wanted} (checkpoint: {had})")
    return changes


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    """Read a checkpoint, refusing one made for different data or by another format."""
    if not path.is_file():
        raise ResumeError(f"Argument 'resume' needs a checkpoint at {path}, not a missing file; "
                          f"run without --resume to start fresh")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResumeError(f"Argument 'resume' needs a readable checkpoint at {path}, not a damaged one ({exc}); "
                          f"run without --resume to start fresh") from None
    if not isinstance(state, dict) or not isinstance(state.get("trainer"), dict):
        raise ResumeError(f"Argument 'resume' needs a checkpoint written by cpml-master train at {path}, not "
                          f"a JSON {type(state).__name__} without its trainer state; run without --resume to "
                          f"start fresh")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"checkpoint {path} has format {state.get('format')!r}, this cpml reads "
                          f"{CHECKPOINT_FORMAT}")
    if state.get("data_sha256") != fingerprint:
        raise ResumeError(f"checkpoint {path} was made on different training data (fingerprint mismatch); "
                          f"use the same data flags (--dataset, --format, --label-column, --positive-label, "
                          f"--test-fraction, --scaling, --seed, --intercept), or start fresh")
    return state


def _trainer(settings: TrainSettings, data: Dataset, fingerprint: str,
             mask_source: MaskSource) -> tuple[CodedTrainer, list[RoundRecord]]:
    ckpt_path = settings.out / "checkpoint.json"
    if not settings.resume:
        (settings.out / ROUNDS_LOG).unlink(missing_ok=True)
        plan = make_plan(settings, settings.n_workers, data.x_train)
        return CodedTrainer.create(plan, data.x_train, data.y_train, settings.seed, data.x_test, data.y_test,
                                   mask_source=mask_source), []
    saved = load_checkpoint(ckpt_path, fingerprint)["trainer"]
    try:
        saved_plan = plan_from_checkpoint(saved)
        seed, round_, weights = int(saved["seed"]), int(saved["round"]), np.array(saved["weights"], dtype=np.float64)
        previous = np.array(saved.get("previous", saved["weights"]), dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(f"Argument 'resume' needs an intact checkpoint at {ckpt_path}, not one with a damaged "
                          f"trainer state ({type(exc).__name__}: {exc}); run without --resume to start "
                          f"fresh") from None
    changes = plan_changes(settings, saved_plan)
    if changes:
        raise ResumeError(f"Argument 'resume' must continue the checkpoint's plan, not change it: "
                          f"{', '.join(changes)}; drop these flags to resume, or start fresh without --resume")
    if settings.iterations < round_:
        raise ResumeError(f"Argument 'iterations' must be at least the {round_} rounds the checkpoint has "
                          f"finished, not {settings.iterations}; pass --iterations {round_} or more")
    # N may change between runs (a dead worker is gone): the decoded gradient does not depend on N,
    # so the weights continue exactly as they would have.
    try:
        plan = saved_plan.with_(n_workers=settings.n_workers, iterations=settings.iterations)
    except ValueError as exc:
        raise ResumeError(f"the checkpoint's plan (K={saved_plan.k}, T={saved_plan.t}, r={saved_plan.r}) needs "
                          f"at least R = {saved_plan.threshold} workers, not {settings.n_workers} "
                          f"(--workers or --workers-local): {exc}") from None
    trainer = CodedTrainer.create(plan, data.x_train, data.y_train, seed, data.x_test, data.y_test,
                                  weights=weights, previous=previous, start_round=round_,
                                  mask_source=mask_source)
    rounds_log = settings.out / ROUNDS_LOG
    try:
        history = read_rounds(rounds_log, trainer.round)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(f"Argument 'resume' needs an intact {rounds_log}, not a damaged one "
                          f"({type(exc).__name__}: {exc}); run without --resume to start fresh") from None
    rounds_log.write_text("".join(json.dumps(asdict(r)) + "\n" for r in history))
    log.info("resuming", round=trainer.round, checkpoint=str(ckpt_path))
    return trainer, history


async def train(settings: TrainSettings, on_round: Callable[[RoundRecord], None] | None = None, *,
                mask_source: MaskSource = uniform) -> TrainReport:
    """Run one training job end to end on remote or embedded workers; write the outputs into settings.out."""
    # mask_source exists for tests only (never a flag): a test swaps in zero masks to show its leak check fires.
    if settings.protocol != "cpml":
        from cpml.master.mpc_train import train_baseline  # the MPC baselines (cpml.mpc)

        return await train_baseline(settings, on_round)
    data = load_training_data(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    trainer, history = _trainer(settings, data, fingerprint, mask_source)
    plan = trainer.plan
    if trainer.done:
        log.info("nothing to do: the checkpoint already finished every iteration", round=trainer.round)
        return _finish(settings, trainer, data, history, UploadStats(), {})
    log.info("plan", n=plan.n_workers, k=plan.k, t=plan.t, r=plan.r, threshold=plan.threshold,
             moduli=list(plan.moduli), modulus_bits=round(plan.basis.bits, 1), lx=plan.lx, lw=plan.lw, lc=plan.lc,
             learning_rate=plan.learning_rate, iterations=plan.iterations)

    async with contextlib.AsyncExitStack() as stack:
        if settings.embedded:
            local = await stack.enter_async_context(
                LocalWorkers(settings.n_workers, settings.out / "workers", settings.timeouts.connect,
                             settings.local_worker_args))
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
        cluster = await stack.enter_async_context(
            Cluster(addresses, credentials, settings.tls_server_name, settings.timeouts,
                    max_message_bytes=max(8 << 20, 2 * settings.chunk_bytes), diagnose=diagnosis))
        await cluster.wait_healthy(plan.threshold)  # start with the workers that answer while R do
        spec_bytes = serde.WireJobSpec.of(trainer.job_spec, plan.model).share_bytes
        await cluster.check_capacity(max(plan.moduli), spec_bytes, settings.chunk_bytes, plan.threshold)
        upload = await _run_job(settings, trainer, cluster, history, fingerprint, on_round, data.target_std)
    dropped = {w.index: w.failure for w in cluster.workers if not w.alive}
    return _finish(settings, trainer, data, history, upload, dropped)


async def _run_job(settings: TrainSettings, trainer: CodedTrainer, cluster: Cluster, history: list[RoundRecord],
                   fingerprint: str, on_round: Callable[[RoundRecord], None] | None,
                   target_scale: float = 1.0) -> UploadStats:
    plan = trainer.plan
    job_id = uuid.uuid4().hex
    checkpoint = settings.out / "checkpoint.json"
    structlog.contextvars.bind_contextvars(job=job_id)
    spec = serde.WireJobSpec.of(trainer.job_spec, plan.model)
    try:
        if len(cluster.alive) < plan.threshold:
            raise NotEnoughWorkers(f"{len(cluster.alive)} workers but R = {plan.threshold} are needed")
        upload = await _distribute(settings, trainer, cluster, job_id, spec)
        remaining = plan.iterations - trainer.round
        stream_deadline = settings.timeouts.round * max(remaining, 1) + settings.timeouts.upload
        bar = reporting.ProgressBar(plan.iterations, "train", enabled=settings.progress, start_step=trainer.round)
        rejoiner = Rejoiner(cluster, trainer, job_id, spec, settings.chunk_bytes)
        async with ComputeStreams(cluster.workers, job_id, plan.moduli, spec.cols, plan.threshold,
                                  settings.timeouts.round, stream_deadline) as streams, contextlib.aclosing(rejoiner):
            with bar:
                while not trainer.done:
                    for worker in rejoiner.ready():
                        worker.revive()
                        streams.add(worker)
                    record = await _one_round(trainer, streams, rejoiner, target_scale)
                    history.append(record)
                    append_round(settings.out / ROUNDS_LOG, record)
                    if trainer.round % settings.checkpoint_every == 0 or trainer.done:
                        save_checkpoint(checkpoint, trainer, fingerprint)
                    shown = {"loss": record.loss}
                    if record.test_accuracy is not None:
                        shown["accuracy"] = record.test_accuracy
                    fit = {} if record.test_r2 is None else {"test_r2": record.test_r2, "test_rmse": record.test_rmse}
                    if fit:
                        shown |= {"r2": record.test_r2, "rmse": record.test_rmse}
                    bar.update(trainer.round, **shown)
                    # with a progress bar on screen, per-round lines would only break it
                    (log.debug if bar.enabled else log.info)(
                        "round", round=record.round, loss=round(record.loss, 6), test_accuracy=record.test_accuracy,
                        seconds=round(record.total_seconds, 4), late=record.late_replies, **fit)
                    if on_round is not None:
                        on_round(record)
    except BaseException:
        save_checkpoint(checkpoint, trainer, fingerprint)  # the last finished round
        raise
    finally:
        # On every way out (done, below R, a timeout, SIGTERM, a crash in here) the workers free the share at
        # once, so a --resume on the same workers finds room; a worker that died just fails this call.
        await cluster.end_job(job_id)
        structlog.contextvars.unbind_contextvars("job")
    return upload


async def _distribute(settings: TrainSettings, trainer: CodedTrainer, cluster: Cluster, job_id: str,
                      spec: serde.WireJobSpec) -> UploadStats:
    """Upload the shares; when fewer than R workers had room (another job got there first), back off and retry."""
    threshold = trainer.plan.threshold
    deadline = time.monotonic() + settings.timeouts.upload
    rows = serde.rows_per_chunk(spec.cols, settings.chunk_bytes)
    jitter = random.Random()  # back-off only: nothing secret depends on it
    while True:
        upload = await cluster.upload(job_id, spec, trainer.share_chunks(rows), settings.chunk_bytes)
        if len(cluster.alive) >= threshold:
            return upload
        # RESOURCE_EXHAUSTED: no room now. gRPC can also report a refusal that arrives while the chunks are still
        # streaming as "INTERNAL: Internal error from Core"; both are worth another try once the others are gone.
        full = [w for w in cluster.workers if not w.alive and ("RESOURCE_EXHAUSTED" in w.failure
                                                               or "INTERNAL" in w.failure)]
        if not full or time.monotonic() > deadline:
            raise NotEnoughWorkers(
                f"only {len(cluster.alive)} workers stored their share but R = {threshold} are needed: "
                + "; ".join(f"{w.address}: {w.failure}" for w in cluster.workers if not w.alive))
        # Holding a partial set of workers while another master does the same would deadlock both: release
        # the shares stored, wait a random moment, and try all of them again (the same shares: keyed masks).
        log.warning("fewer than R workers had room for the share; releasing and retrying", stored=len(cluster.alive),
                    needed=threshold, full=len(full))
        await cluster.end_job(job_id)
        for worker in full:
            worker.revive()
        await asyncio.sleep(jitter.uniform(0.2, 2.0))


async def _one_round(trainer: CodedTrainer, streams: ComputeStreams, rejoiner: Rejoiner,
                     target_scale: float = 1.0) -> RoundRecord:
    began = time.perf_counter()
    round_number = trainer.round
    weight_shares = trainer.weight_shares()
    encoded = time.perf_counter()
    replies, traffic = await streams.run_round(round_number, weight_shares, trainer.replies_needed,
                                               rejoining=rejoiner.in_flight)
    received = time.perf_counter()
    try:
        stats = trainer.finish_round(round_number, replies)
    except TooManyErrors as exc:
        raise WrongResults(f"{exc}; the round was not applied (the checkpoint holds the last good one). Rerun with "
                           f"--resume and --byzantine A (N >= R + 2A) to correct them, or without the workers named "
                           f"in the log") from None
    for index in stats.wrong_workers:
        streams.drop(index, f"sent a wrong result in round {round_number + 1} (corrected)")
    done = time.perf_counter()
    return RoundRecord(round=stats.round, loss=stats.loss, train_accuracy=stats.train_accuracy,
                       test_accuracy=stats.test_accuracy, workers_used=stats.workers_used,
                       encode_seconds=encoded - began, send_seconds=traffic.send_seconds,
                       wait_seconds=traffic.wait_seconds, worker_compute_seconds=traffic.worker_compute_seconds,
                       decode_update_seconds=done - received,
                       total_seconds=done - began, bytes_sent=traffic.bytes_sent,
                       bytes_received=traffic.bytes_received, late_replies=traffic.late_replies,
                       test_r2=stats.test_r2,
                       test_rmse=None if stats.test_rmse is None else stats.test_rmse * target_scale,
                       wrong_workers=stats.wrong_workers)


def _finish(settings: TrainSettings, trainer: CodedTrainer, data: Dataset, history: list[RoundRecord],
            upload: UploadStats, dropped: dict[int, str]) -> TrainReport:
    plan = trainer.plan
    out = settings.out
    plan_fields = {k: getattr(plan, k) for k in plan.__dataclass_fields__}
    final = history[-1] if history else None
    # the versioned artifact (cpml.model): weights, preprocessing, label mapping, plan, privacy, final metrics
    model_of_run(plan, trainer.weights, data, settings.transport, final).save(out / "model.json")
    upload_summary = {"seconds": upload.seconds, "encode_seconds": upload.encode_seconds,
                      "bytes_sent": upload.bytes_sent, "chunks": upload.chunks}
    reporting.write_metrics(out / "metrics.json", {
        "dataset": data.name, "notes": list(data.notes), "plan": plan_fields, "threshold": plan.threshold,
        "final": asdict(final) if final else None, "upload": upload_summary,
        "dropped_workers": {str(k): v for k, v in dropped.items()}, "rounds": [asdict(r) for r in history]})
    if history:
        rounds = [r.round for r in history]
        panels = {"loss": [r.loss for r in history]}
        if any(r.test_accuracy is not None for r in history):
            panels["test accuracy"] = [r.test_accuracy for r in history]
        if any(r.test_r2 is not None for r in history):
            panels["test R²"] = [r.test_r2 for r in history]
        reporting.plot_curves(out / "curves.png", rounds, panels,
                              title=f"{data.name}: N={plan.n_workers} K={plan.k} T={plan.t} r={plan.r}")
    return TrainReport(plan=plan, weights=trainer.weights.copy(), history=tuple(history), upload=upload_summary,
                       dropped_workers=dropped, out=out, notes=data.notes)

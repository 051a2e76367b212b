"""`cpml-master aggregate`: serve a WD-DP run as the aggregation server.

Embedded (default): split a dataset into --parties parties with unevenness --rho and run them
as local clients over gRPC on 127.0.0.1. With --listen, wait for --parties remote `cpml-party`
processes instead. Writes metrics.json, model.json and curves.png to --out, like `train`.

Parties prove who they are: with --tls-client-ca (mutual TLS) a party's name is its certificate's
identity; otherwise each party holds a secret join token, from --party-tokens (name:token lines) or
generated into --out/party-tokens and --out/join-tokens/<name> (mode 0600). A listening server
serves the run named by --run-id, or a random one it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cpml import runner
from cpml.cli_args import add_data_file_arguments, add_log_arguments
from cpml.dp.settings import AggregateSettings, aggregate_settings
from cpml.env_defaults import apply_env_defaults
from cpml.errors import ExitCode, argument_error, check_output_dir, exit_codes_help, refuse, unexpected
from cpml.files import write_atomically
from cpml.logs import configure_logging
from cpml.options import SCALINGS

if TYPE_CHECKING:  # annotations only: `--help` must not import numpy
    from cpml.dp.session import RunSettings
    from cpml.preprocessing import Preprocessing

log = structlog.get_logger(__name__)

COMMAND = "cpml-master aggregate"
CHECKPOINT = "checkpoint.json"  # in --out: the session state and the history, after every round
EXIT_CODES = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.PARTIES_MISSING, ExitCode.INTERRUPTED)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `aggregate` subcommand's flags."""
    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    run = parser.add_argument_group("run")
    run.add_argument("--run-id", help="the run's id (default: 'wddp' embedded; with --listen a random one, printed)")
    run.add_argument(
        "--parties",
        type=int,
        help="number of parties P (default: the number of --party-names or --party-tokens names, else 6)",
    )
    run.add_argument(
        "--scheme",
        default="weighted",
        choices=("weighted", "unweighted", "centralized"),
        help="WD-DP, the unweighted baseline, or centralized DP-GD (embedded only)",
    )
    run.add_argument("--rounds", type=int, default=50)
    run.add_argument("--epsilon", type=float, default=1.0, help="budget of the released model")
    run.add_argument("--delta", type=float, default=1e-5)
    run.add_argument(
        "--accountant",
        choices=("rdp", "pld"),
        help="default: pld, the tighter upper bound for replace-one neighbours (rdp only for full batches)",
    )
    run.add_argument(
        "--learning-rate",
        type=float,
        help="default: from public quantities only, min(1/L, noise-optimal step) with"
        " L = 1/4 + l2 (rows lie in the unit ball); see --momentum",
    )
    run.add_argument(
        "--momentum",
        type=float,
        help="Nesterov momentum on the server (post-processing, no privacy cost); default: what the automatic step"
        " leaves to the noise-optimal step, at most 0.9, or 0 with an explicit --learning-rate",
    )
    run.add_argument("--clip", type=float, default=1.0, help="per-record gradient norm bound G")
    run.add_argument("--l2", type=float, default=1e-3)
    run.add_argument("--local-steps", type=int, default=1)
    run.add_argument("--sampling-rate", type=float, default=1.0, help="Poisson rate q")
    run.add_argument(
        "--round-timeout",
        type=float,
        default=60.0,
        help="seconds a round waits for parties before dropping the silent ones",
    )
    run.add_argument("--join-timeout", type=float, default=600.0)
    run.add_argument(
        "--test-data",
        help="a file of test rows scored every round (accuracy, loss): embedded, every --dataset"
        " row then trains; with --listen, read on the server as cpml-party reads its data"
        " (--feature-bounds, or unscaled), so a remote run reports accuracy too",
    )
    embedded = parser.add_argument_group("embedded parties (no --listen)")
    embedded.add_argument(
        "--dataset", default="breast-cancer", help="digits-4v9, breast-cancer, or a .csv/.npz/.svm file"
    )
    add_data_file_arguments(embedded)
    embedded.add_argument(
        "--positive-label",
        help="the label value that becomes class 1 (default: the larger number, or the later text in sorted order)",
    )
    embedded.add_argument(
        "--classes",
        metavar="LABEL,LABEL,...",
        help="with --listen, more than two classes: the list every party passes, in the same order (checked "
        "at Join; needed for --test-data too)",
    )
    embedded.add_argument("--rho", type=float, default=4.0, help="unevenness n_max / n_min")
    embedded.add_argument("--scaling", choices=SCALINGS, help="default: standard, or none with --feature-bounds")
    embedded.add_argument("--test-fraction", type=float, default=0.2)
    embedded.add_argument(
        "--seed", type=int, default=0, help="seeds the train/test split and the party split (never the noise)"
    )
    remote = parser.add_argument_group("remote parties")
    remote.add_argument("--listen", help="host:port to serve remote cpml-party on")
    remote.add_argument("--port-file", type=Path, help="write the bound host:port here once serving")
    remote.add_argument("--tls-cert", type=Path)
    remote.add_argument("--tls-key", type=Path)
    remote.add_argument("--tls-client-ca", type=Path)
    remote.add_argument("--insecure", action="store_true", help="serve plaintext gRPC")
    remote.add_argument(
        "--party-tokens",
        type=Path,
        help="the parties' join tokens, one name:token line each (without it, tokens"
        " are generated into --out, or reused from there; not with --tls-client-ca)",
    )
    remote.add_argument(
        "--party-names",
        help="comma-separated party names: those tokens are generated for (default party-1 ... party-P), or with"
        " --tls-client-ca the certificate names that may join (default: any the client CA signed)",
    )
    remote.add_argument(
        "--feature-bounds",
        type=Path,
        help="public JSON schema of feature bounds every party must scale with (they pass"
        " the same file; checked at Join); embedded, it scales the dataset",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/aggregate"))
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the run checkpointed in --out (same settings; its parties"
        " rejoin by name); the privacy already spent carries over",
    )
    add_log_arguments(out)


def run(args: argparse.Namespace) -> int:
    """Run the aggregation server (and embedded parties); return the exit code."""
    try:
        settings = aggregate_settings(args)
        configure_logging(settings.log_level, settings.log_format)
        check_output_dir(settings.out)
        prepared = _prepare(settings)
        credentials = _server_credentials(settings)
        access = _access(settings, prepared.run_settings, prepared.shards)
    except ValueError as exc:
        return refuse(COMMAND, exc)
    from cpml.dp.server import JoinTimeout

    notes = [*prepared.notes, access.note]
    for line in access.printed:
        print(line, flush=True)
    try:
        report = runner.run(_serve(settings, prepared, credentials, access))
    except ValueError as exc:
        return refuse(COMMAND, exc)
    except JoinTimeout as exc:
        return refuse(COMMAND, f"stopped: {exc}", ExitCode.PARTIES_MISSING)
    except (RuntimeError, OSError) as exc:
        return refuse(COMMAND, f"failed: {exc}", ExitCode.FAILED)
    except Exception as exc:  # a bug: one line, the traceback only on request
        return unexpected(COMMAND, exc)
    report["notes"] = notes
    report["settings"]["scheme"] = settings.scheme
    _write_outputs(settings.out, report, prepared.preprocessing)
    g = report["guarantees"]
    what = "centralized DP-GD" if settings.scheme == "centralized" else f"{settings.scheme} aggregation"
    print(
        f"{report['rounds_run']} rounds of {what} over {len(report['parties'])} part"
        f"{'y' if len(report['parties']) == 1 else 'ies'} ({report['stop_reason']})"
    )
    if report["dropped"]:
        print("dropped: " + ", ".join(f"{d['party']} (round {d['round']})" for d in report["dropped"]))
    local = report["settings"]["local"]
    if local["learning_rate"] is not None:
        print(
            f"step: learning rate {local['learning_rate']:.4g}, momentum"
            f" {report['settings']['momentum']:.3g} ({report['settings']['step_rule']})"
        )
    last = report["history"][-1] if report["history"] else {}
    if last.get("test_accuracy") is not None:
        line = f"test accuracy: {last['test_accuracy']:.4f}"
        if "optimality_gap" in last:
            optimum = report["nonprivate"]["test_accuracy"]
            line += f" (non-private optimum {optimum:.4f}), optimality gap F(w) - F(w*) {last['optimality_gap']:.4g}"
        print(line)
    labels = next((note for note in notes if note.startswith("labels: ")), None)
    if labels:
        print(labels)  # which raw label the model calls 1
    print(f"released model: epsilon {g['release_epsilon']:.4f} at delta {g['delta']:g} ({g['release_basis']})")
    print(
        "each party's updates revealed to this server: "
        + ", ".join(f"{name} {eps:.3f}" for name, eps in sorted(g["party_epsilons"].items()))
    )
    out = settings.out
    print(f"model: {out / 'model.json'}   metrics: {out / 'metrics.json'}   plot: {out / 'curves.png'}")
    return ExitCode.INTERRUPTED if report["interrupted"] else ExitCode.OK


@dataclass(frozen=True)
class _Prepared:
    """The run's settings and what the server needs beside them: embedded shards, test rows, notes."""

    run_settings: RunSettings
    shards: list[tuple[Any, Any]] | None  # the embedded parties' (x, y); None with --listen
    evaluation: tuple[Any, Any] | None  # test rows (x, y)
    notes: list[str]
    preprocessing: Preprocessing | None = None  # what model.json keeps for predict and export, when known here


def _prepare(settings: AggregateSettings) -> _Prepared:
    from cpml.dp.accountant import Budget
    from cpml.dp.dpgd import LocalSettings, Scheme, add_bias_and_normalise, split_uneven
    from cpml.dp.features import check_scaling, read_feature_bounds, run_schema
    from cpml.dp.session import RunSettings

    centralized = settings.scheme == "centralized"
    bounds = read_feature_bounds(settings.feature_bounds) if settings.feature_bounds is not None else None
    parties = _party_count(settings)
    run_settings = RunSettings(
        run_id=_run_id(settings),
        parties=1 if centralized else parties,
        rounds=settings.rounds,
        budget=Budget(settings.epsilon, settings.delta),
        local=LocalSettings(**{f.name: getattr(settings, f.name) for f in fields(LocalSettings)}),
        scheme=Scheme.WEIGHTED if centralized else Scheme(settings.scheme),
        accountant=settings.accountant,
        momentum=settings.momentum,
        feature_schema=run_schema(bounds, settings.classes) if settings.listen else "",
    )
    if settings.listen:
        notes = ["remote parties: their data and preprocessing stay with them"]
        if bounds is not None:
            notes.append(
                f"every party scales with the public feature bounds {str(settings.feature_bounds)!r}"
                f" (sha256 {bounds.digest[:12]}), checked at Join"
            )
        evaluation = _server_test_rows(settings.test_data, settings, bounds) if settings.test_data else None
        if evaluation is not None:
            notes.append(
                f"test rows: {len(evaluation[1])} from {settings.test_data}, read on this server as the parties"
                " read theirs"
            )
        return _Prepared(run_settings, None, evaluation, notes)
    from cpml.data import load_dataset
    from cpml.dp.features import warn_if_dominated

    scaling = settings.scaling or ("none" if bounds is not None else "standard")
    check_scaling(bounds, scaling)
    data = load_dataset(
        settings.dataset,
        settings.test_fraction,
        scaling,
        settings.seed,
        settings.data_format,
        settings.label_column,
        positive_label=settings.positive_label,
        test_source=settings.test_data,
    )
    x_train, x_test = data.x_train, data.x_test
    if x_test is None:
        requirement = "leave test rows for the embedded run's evaluation (a fraction in (0, 1), or --test-data FILE)"
        raise argument_error("test_fraction", requirement, settings.test_fraction)
    preprocessing = None
    if bounds is not None:
        x_train, x_test = bounds.apply(x_train), bounds.apply(x_test)
    elif data.preprocessing is not None:
        preprocessing = replace(data.preprocessing, intercept=True, unit_rows=True)
    warn_if_dominated(x_train, "pass public feature bounds with --feature-bounds FILE, or --scaling standard")
    x = add_bias_and_normalise(x_train)
    x_test = add_bias_and_normalise(x_test)
    if centralized:
        shards = [(x, data.y_train)]
    else:
        parts = split_uneven(len(data.y_train), parties, settings.rho, settings.seed)
        shards = [(x[i], data.y_train[i]) for i in parts]
    notes = [
        *data.notes,
        "rows: bias column appended, then scaled into the unit ball (G = 1)",
        "feature scaling used training-split statistics, which the DP guarantee does not"
        " cover (as in the paper's setup)"
        if scaling != "none"
        else "features clipped and mapped to [-1, 1] by the public bounds: the guarantee covers all use of the data"
        if bounds is not None
        else "no feature scaling: the guarantee covers all use of the data",
    ]
    return _Prepared(run_settings, shards, (x_test, data.y_test), notes, preprocessing)


def _server_test_rows(path: str, settings: AggregateSettings, bounds):
    """A remote run's test rows, scaled and labelled as cpml-party does (public bounds, or unscaled)."""
    from cpml.dp.party_cli import load_party_data

    scaling = settings.scaling or "none"
    if bounds is None and scaling != "none":
        raise ValueError(
            "Argument 'test_data' with --listen needs the parties' public scaling, --feature-bounds FILE or none, not"
            f" --scaling {scaling}: each party would scale with its own statistics, which this server cannot repeat."
        )
    try:
        return load_party_data(
            path, settings.data_format, settings.label_column, "none", settings.positive_label, bounds, settings.classes
        )
    except ValueError as exc:
        raise ValueError(str(exc).replace("Argument 'data'", "Argument 'test_data'", 1)) from None


def _party_count(settings: AggregateSettings) -> int:
    """--parties, else the number of named parties (--party-names or a token file), else 6."""
    if settings.parties is not None:
        return settings.parties
    names = _listed_names(settings) if settings.listen else None
    return len(names) if names else 6


def _listed_names(settings: AggregateSettings) -> tuple[str, ...] | None:
    from cpml.dp.auth import TOKEN_FILE, read_token_file

    if settings.party_names is not None:
        return settings.named_parties
    if settings.tls_client_ca is not None:
        return None
    existing = settings.out / TOKEN_FILE
    path = settings.party_tokens or (existing if existing.is_file() else None)
    return tuple(read_token_file(path)) if path is not None else None


def _run_id(settings: AggregateSettings) -> str:
    """--run-id; embedded 'wddp'; listening, the checkpoint's when resuming, else a random one."""
    if settings.run_id is not None:
        return settings.run_id
    if not settings.listen:
        return "wddp"
    if settings.resume:
        run_id = _read_checkpoint(settings.out / CHECKPOINT)["session"].get("run_id")
        if isinstance(run_id, str) and run_id:
            return run_id
    import secrets

    return f"wddp-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class _Access:
    """Who may join and how: the server's admission, the embedded parties' tokens, what to print."""

    admission: Any  # cpml.dp.auth.TokenAdmission or CertificateAdmission
    tokens: dict[str, str] = field(repr=False)  # the embedded parties' own (never printed or logged)
    note: str
    printed: list[str]


def _access(settings: AggregateSettings, run_settings: RunSettings, shards) -> _Access:
    """The admission of this server: embedded tokens, certificates (mTLS) or join tokens."""
    from cpml.dp.auth import CertificateAdmission, TokenAdmission, generate_tokens

    if not settings.listen:
        tokens = generate_tokens(["pooled"] if len(shards) == 1 else [f"party-{k}" for k in range(len(shards))])
        return _Access(TokenAdmission(tokens), tokens, "embedded parties join with in-memory tokens", [])
    run_id = run_settings.run_id
    printed = [] if settings.run_id is not None else [f"run id: {run_id} (each party passes --run-id {run_id})"]
    if settings.tls_client_ca is not None:
        roster = _listed_names(settings)
        note = "parties authenticated by client certificate (mutual TLS): name = certificate CN/SAN"
        return _Access(CertificateAdmission(roster), {}, note, printed)
    tokens, where = _token_source(settings, run_settings.parties)
    if len(tokens) < run_settings.parties:
        raise ValueError(
            f"Argument 'party_tokens' must name at least --parties ({run_settings.parties}) parties,"
            f" not {len(tokens)} in {where}."
        )
    printed.append(f"join tokens: {where}")
    if settings.insecure:
        log.warning("plaintext gRPC (--insecure): join tokens travel unencrypted; use --tls-cert/--tls-key")
    note = f"parties authenticated by join tokens ({len(tokens)} names)"
    return _Access(TokenAdmission(tokens), {}, note, printed)


def _token_source(settings: AggregateSettings, parties: int) -> tuple[dict[str, str], str]:
    """The tokens of --party-tokens, or of --out/party-tokens (reused or newly generated)."""
    from cpml.dp.auth import TOKEN_DIR, TOKEN_FILE, generate_tokens, read_token_file, write_tokens

    if settings.party_tokens is not None:
        return read_token_file(settings.party_tokens), f"{settings.party_tokens} (--party-tokens)"
    existing = settings.out / TOKEN_FILE
    names = settings.named_parties
    if existing.is_file():
        tokens = read_token_file(existing)
        if names is not None and set(names) != set(tokens):
            raise ValueError(
                f"Argument 'party_names' must match the parties of {str(existing)!r}, which this server reuses"
                f" ({', '.join(tokens)}), not {settings.party_names!r}; delete that file to issue new tokens."
            )
        return tokens, (
            f"{existing} (reused; each party keeps its file from {settings.out / TOKEN_DIR}/,"
            " passed with cpml-party --token-file)"
        )
    tokens = generate_tokens(names or [f"party-{k}" for k in range(1, parties + 1)])
    path, folder = write_tokens(settings.out, tokens)
    return tokens, (
        f"{path} (generated, mode 0600); hand each party its own file from {folder}/,"
        " passed with cpml-party --token-file"
    )


def _server_credentials(settings: AggregateSettings):
    if settings.listen and settings.tls_cert and settings.tls_key and not settings.insecure:
        from cpml.wire.tls import server_credentials

        return server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    return None


async def _serve(settings: AggregateSettings, prepared: _Prepared, credentials, access: _Access) -> dict[str, Any]:
    from cpml.dp.dpgd import accuracy, model_size, objective
    from cpml.dp.party import PartyConfig, run_party
    from cpml.dp.server import AggregationServer, Coordinator
    from cpml.dp.session import AggregationSession
    from cpml.reporting import ProgressBar

    run_settings, shards, evaluation = prepared.run_settings, prepared.shards or [], prepared.evaluation
    checkpoint_path = settings.out / CHECKPOINT
    history: list[dict[str, Any]] = []
    if settings.resume:
        checkpoint = _read_checkpoint(checkpoint_path)
        try:
            session = AggregationSession.restore(run_settings, checkpoint["session"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"Argument 'resume' must find an intact checkpoint in --out, not"
                f" {str(checkpoint_path)!r} with a damaged session state ({exc!r})."
            ) from None
        history = list(checkpoint["history"])
    else:
        session = AggregationSession(run_settings, model_size(*shards[0]) if shards else None)

    def save() -> None:
        write_atomically(checkpoint_path, json.dumps({"session": session.state(), "history": history}))

    bar = ProgressBar(run_settings.rounds, label="aggregate", start_step=session.round)
    reference = _reference(shards, run_settings.local.l2) if shards else None

    def on_round(result) -> None:
        row: dict[str, Any] = {
            "round": result.round,
            "epsilon": result.epsilon,
            "released": result.released,
            "survivors": len(result.survivors),
            "dropped": list(result.dropped),
            "noise_multiplier": result.noise_multiplier,
        }
        if evaluation is not None and model_size(*evaluation) == len(session.weights):
            x_test, y_test = evaluation
            row["test_accuracy"] = accuracy(session.weights, x_test, y_test)
            row["test_loss"] = objective(session.weights, x_test, y_test, 0.0)
        elif evaluation is not None:  # a --test-data file of another width than the parties' rows
            log.warning(
                "test rows not scored: their width differs from the model's",
                test_columns=evaluation[0].shape[1],
                model_columns=len(session.weights),
            )
        if reference is not None:
            row["optimality_gap"] = reference(session.weights)
        history.append(row)
        save()
        log.info("round_closed", **{k: v for k, v in row.items() if k != "noise_multiplier"})
        shown = {"acc": row.get("test_accuracy"), "gap": row.get("optimality_gap")}
        bar.update(result.round, eps=result.epsilon, **{k: v for k, v in shown.items() if v is not None})

    coordinator = Coordinator(
        session, settings.round_timeout, settings.join_timeout, on_round, roster=access.admission.roster
    )
    listen = settings.listen or "127.0.0.1:0"
    server = AggregationServer(coordinator, listen, credentials, access.admission)
    address = await server.start()
    if settings.port_file is not None:
        write_atomically(settings.port_file, address)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.interrupt, f"interrupted by {sig.name}")
    try:
        async with asyncio.TaskGroup() as group:
            driver = group.create_task(coordinator.run())
            for (name, token), (x, y) in zip(access.tokens.items(), shards):  # the embedded parties, if any
                config = PartyConfig(
                    address, run_settings.run_id, name, token=token, feature_schema=run_settings.feature_schema
                )
                group.create_task(run_party(config, x, y))
            await driver
            await coordinator.wait_until_told(grace=10.0)
    except* Exception as group_error:
        bar.close()
        await server.stop(0)
        raise group_error.exceptions[0] from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    bar.close()
    await server.stop()
    if session.history:  # the final state: a finished run cannot be resumed into more rounds
        save()
    report = _report(session, history, time.monotonic() - started, address)
    report["interrupted"] = bool(coordinator.stopping)
    if reference is not None:
        report["nonprivate"] = {
            "objective": reference.optimum_objective,
            "l2": reference.l2,
            "test_accuracy": accuracy(reference.optimum, *evaluation) if evaluation else None,
            "note": "embedded evaluation only: w* is fitted on the pooled training rows",
        }
    return report


def _reference(shards, l2: float):
    """F(w) - F(w*) on the pooled training rows: an embedded-mode evaluation aid only."""
    import numpy as np

    from cpml.dp.dpgd import OptimalityGap

    return OptimalityGap.fit(np.concatenate([x for x, _ in shards]), np.concatenate([y for _, y in shards]), l2)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Argument 'resume' must find a readable checkpoint in --out, not {str(path)!r} ({exc})."
        ) from None
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("session"), dict)
        and isinstance(checkpoint.get("history"), list)
    ):
        raise ValueError(
            f"Argument 'resume' must find a checkpoint written by cpml-master aggregate in --out,"
            f" not {str(path)!r}, which lacks its session state and history."
        )
    return checkpoint


def _report(session, history, seconds: float, address: str) -> dict[str, Any]:
    from cpml.dp.session import Guarantees

    s = session.settings
    g = session.guarantees() if session.history else Guarantees(s.budget.delta, 0.0, "no rounds", {})
    dropped = [{"party": name, "round": r.round} for r in session.history for name in r.dropped]
    return {
        "command": "aggregate",
        "run_id": s.run_id,
        "address": address,
        "settings": {
            "scheme": s.scheme.value,
            "parties": s.parties,
            "rounds": s.rounds,
            "epsilon": s.budget.epsilon,
            "delta": s.budget.delta,
            "accountant": s.accounting.value,
            "local": asdict(session.local),
            "momentum": session.momentum,
            "step_rule": "given"
            if s.local.learning_rate is not None
            else "public: min(1/L, kappa/(sigma sqrt(d T))) with momentum for the rest",
        },
        "noise_multiplier": session.noise_multiplier,
        "parties": [
            {
                "name": p.name,
                "records": p.records,
                "weight": p.records / sum(session.sizes),
                "noise_multiplier": session.party_noise(p),
            }
            for p in session.parties
        ],
        "rounds_run": len(session.history),
        "stop_reason": session.stop_reason,
        "dropped": dropped,
        "history": history,
        "guarantees": asdict(g),
        "weights": session.weights.tolist(),
        "seconds": round(seconds, 3),
    }


def _write_outputs(out: Path, report: dict[str, Any], preprocessing: Any = None) -> None:
    """model.json (the format-2 artifact when the rows' preprocessing is known here), metrics.json, curves.png."""
    from cpml.reporting import plot_curves, write_metrics

    out.mkdir(parents=True, exist_ok=True)
    weights = report.pop("weights")
    model: dict[str, Any] = {"weights": weights, "guarantees": report["guarantees"], "run_id": report["run_id"]}
    if preprocessing is not None and report["rounds_run"]:
        import numpy as np

        from cpml.model import Model, wddp_privacy

        columns = preprocessing.n_classes  # the session's flat d x C one-vs-rest models, as a matrix
        flat = np.asarray(weights)
        artifact = Model(
            weights=flat.reshape(-1, columns) if columns > 1 else flat,
            preprocessing=preprocessing,
            plan=report["settings"],
            privacy=wddp_privacy(report["guarantees"], report["settings"]["scheme"], len(report["parties"])),
            dataset=str(report.get("dataset", "")),
            notes=tuple(report["notes"]),
            metrics=report["history"][-1] if report["history"] else {},
        )
        model |= artifact.to_json()
    (out / "model.json").write_text(json.dumps(model, indent=2) + "\n")
    write_metrics(out / "metrics.json", report)
    history = report["history"]
    if history:
        titles = {"epsilon": "epsilon spent", "test_accuracy": "test accuracy", "test_loss": "test loss"}
        titles["optimality_gap"] = "optimality gap F(w) - F(w*)"
        panels = {title: [h[key] for h in history] for key, title in titles.items() if key in history[0]}
        plot_curves(
            out / "curves.png",
            [h["round"] for h in history],
            panels,
            xlabel="round",
            title=f"WD-DP {report['settings']['scheme']} ({report['run_id']})",
        )


def build_parser() -> argparse.ArgumentParser:
    """The `cpml-master aggregate` parser, its exit codes in the epilog."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        epilog=exit_codes_help(*EXIT_CODES),
        description="Serve a WD-DP run as its aggregation server. Every flag also "
        "reads CPML_AGGREGATE_<FLAG> from the environment.",
    )
    add_arguments(parser)
    apply_env_defaults(parser, "CPML_AGGREGATE_", os.environ)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (the usual one is `cpml-master aggregate`)."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""CodedPrivateML against the MPC baselines of the paper (Section V, Figure 3 and Table II).

One invocation runs CPML Case 1, CPML Case 2, BH08 and BGW on the same data, the same precision
(residue primes and l_x, l_w, l_c, chosen once per dataset from its shape as `cpml-master train` does, so
that no protocol can wrap around the product of the primes; every protocol computes in every residue
field), the same seed and 50 iterations, for
N = 10, 20, 30, 40, 50 workers: real cpml-worker processes on 127.0.0.1 talking gRPC (the baselines'
workers also talk to each other), started once per N and shared by the four protocols. Datasets: a
CIFAR-shaped synthetic set (9019 train x 3073, or --dataset FILE for your own) and a GISETTE-shaped
synthetic set (6000 train x 5000). It records wall seconds with an encode / communication+wait /
computation breakdown, CPU seconds of the master and of every worker process, bytes on the wire
(master->workers, workers->master, worker<->worker) and accuracy, checks the four protocols end with
bit-identical weights, and writes bench/results/mpc.json, mpc_figure3.png and mpc_table2.png (the PNG
names follow the JSON's).

    python bench/bench_mpc.py                         # the full run (hours on 2 cores; ~10 GB RAM at N=50)
    python bench/bench_mpc.py --quick --out /tmp/m.json   # small shapes to check the script
    python bench/bench_mpc.py --in-process            # the sans-I/O simulators instead of gRPC daemons
    python bench/bench_mpc.py --quick --residues 1 --levels 2,5,6   # fix the precision (e.g. to compare costs)
    python bench/bench_mpc.py --network shaped --workers 10,30   # the paper's network, emulated (root)

--network shaped puts the master and every worker on a host of its own (tests/netlab.py: a network namespace
each, on one bridge) whose link is capped at --bandwidth-mbit each way, like the paper's EC2 m3.xlarge
instances ("High" network performance, about 1 Gbit/s); the results go to mpc_shaped.json by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from cpu_time import own_cpu_seconds, worker_cpu_seconds

from cpml.logs import configure_logging
from cpml.master.cluster import Timeouts
from cpml.master.job import choose_precision, load_training_data
from cpml.master.local import LocalWorkers
from cpml.master.mpc_train import train_mpc
from cpml.master.settings import TrainSettings
from cpml.master.train import train
from cpml.mpc import MpcPlan, simulate_mpc
from cpml.protocol import CodedTrainer, Plan, RunInputs, worker_compute
from cpml.reporting import write_metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from netlab import WORKER_PORT, NetLab, unavailable_reason  # noqa: E402  (the network-namespace lab the tests use)

PROTOCOLS = ("cpml-case1", "cpml-case2", "bh08", "bgw")
GROUPS = 3
SHAPES = {"cifar": (9019, 2000, 3073), "gisette": (6000, 1000, 5000)}  # train rows, test rows, features
QUICK_SHAPES = {"cifar": (450, 100, 61), "gisette": (300, 60, 100)}
WORKER_TO_WORKER = ("double", "reshare", "masked", "opened")
# Centred features: with [0, 1] pixels the mean direction dominates ||X||_2, the 1/L step is tiny and 50
# rounds stay at chance level, which would make "equal accuracy" meaningless.
SCALING = "standard"
SHAPED_MBIT = 1000  # an EC2 m3.xlarge ("High" network performance), the paper's instances


def synthetic(path: Path, rows: int, cols: int, seed: int) -> Path:
    """A binary problem with pixel-like features in [0, 1] and the labels of a noisy linear model."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, cols), dtype=np.float32)
    w = rng.normal(size=cols).astype(np.float32)
    score = (x - 0.5) @ w + rng.normal(scale=0.5 * np.sqrt(cols / 12), size=rows)
    np.savez(path, x=x, y=(score > 0).astype(np.int8))
    return path


def common_precision(settings: TrainSettings) -> dict[str, int]:
    """The residues and (l_x, l_w, l_c) `cpml-master train` chooses for the data (fixed ones kept).

    They depend on the shape and the scaling alone (the overflow guard bounds the sum over all rows), so
    one choice is safe for every protocol and every N.
    """
    data = load_training_data(settings)
    plan = choose_precision(settings, Plan.case2(10, p=settings.prime), data.x_train)
    return {"residues": plan.residues, "lx": plan.lx, "lw": plan.lw, "lc": plan.lc}


def _settings(
    source: str,
    test_fraction: float,
    n: int,
    iterations: int,
    precision: dict[str, int | None],
    prime: int,
    seed: int,
    out: Path,
    workers: tuple[str, ...],
    case: int = 2,
) -> TrainSettings:
    return TrainSettings(
        dataset=source,
        test_fraction=test_fraction,
        scaling=SCALING,
        workers=workers,
        insecure=True,
        local_workers=n,
        case=case,
        sigmoid="polynomial",  # the paper's comparison: every protocol trains the same model, bit for bit
        iterations=iterations,
        prime=prime,
        seed=seed,
        out=out,
        progress=False,
        timeouts=Timeouts(connect=600, upload=7200, round=3600),
        **precision,
    )


async def run_networked(protocol: str, settings: TrainSettings, pids: list[int]) -> dict[str, Any]:
    """One job against running daemons; returns times, CPU seconds, bytes, accuracy and final weights."""
    cpu_before, own_before = worker_cpu_seconds(pids), own_cpu_seconds()
    if protocol.startswith("cpml"):
        report = await train(settings)
        rounds, plan = report.history, report.plan
        setup = {"seconds": report.upload["seconds"], "encode_seconds": report.upload["encode_seconds"]}
        sent = report.upload["bytes_sent"] + sum(r.bytes_sent for r in rounds)
        received = sum(r.bytes_received for r in rounds)
        between, weights, shape = 0, report.weights, {"k": plan.k, "t": plan.t, "threshold": plan.threshold}
    else:
        session, report = await train_mpc(settings, protocol)
        rounds = report.history
        setup = report.setup
        kinds = report.master_traffic["bytes"]
        sent = kinds.get("data", 0) + kinds.get("weights", 0)
        received = kinds.get("gradient", 0)
        between = sum(w["bytes_by_kind"].get(k, 0) for w in report.workers.values() for k in WORKER_TO_WORKER)
        weights = session.weights
        shape = {
            "t": session.mpc.t,
            "groups": session.mpc.groups,
            "group_size": session.mpc.group_size,
            "active_workers": session.mpc.active_workers,
            "worker_messages": _sum_kinds(report.workers, "messages_by_kind"),
            "worker_bytes": _sum_kinds(report.workers, "bytes_by_kind"),
        }
    cpu_after, own_after = worker_cpu_seconds(pids), own_cpu_seconds()
    worker_cpu = {pid: cpu_after[pid] - cpu_before[pid] for pid in pids}
    total = setup["seconds"] + sum(r.total_seconds for r in rounds)
    encode = setup["encode_seconds"] + sum(r.encode_seconds for r in rounds)
    comp = max(worker_cpu.values())
    final = rounds[-1]
    return {
        "protocol": protocol,
        **shape,
        "total_seconds": total,
        "encode_seconds": encode,
        "computation_seconds": comp,
        "communication_and_wait_seconds": max(total - encode - comp, 0.0),
        "setup_seconds": setup["seconds"],
        "rounds_seconds": sum(r.total_seconds for r in rounds),
        "master_cpu_seconds": own_after - own_before,
        "workers_cpu_seconds": sum(worker_cpu.values()),
        "max_worker_cpu_seconds": comp,
        "bytes": {
            "master_to_workers": int(sent),
            "workers_to_master": int(received),
            "worker_to_worker": int(between),
            "total": int(sent + received + between),
        },
        "train_accuracy": final.train_accuracy,
        "test_accuracy": final.test_accuracy,
        "loss": final.loss,
        "weights": np.asarray(weights),
    }


def _sum_kinds(workers: dict[int, dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for stats in workers.values():
        for kind, value in stats[key].items():
            total[kind] = total.get(kind, 0) + int(value)
    return total


def run_in_process(protocol: str, settings: TrainSettings) -> dict[str, Any]:
    """The same job in one process: CPU seconds by role and the bytes of the arrays that would travel."""
    data = load_training_data(settings)
    n, precision = settings.n_workers, {k: getattr(settings, k) for k in ("residues", "lx", "lw", "lc")}
    began, cpu_began = time.perf_counter(), own_cpu_seconds()
    if protocol.startswith("cpml"):
        maker: Callable[..., Plan] = Plan.case1 if protocol == "cpml-case1" else Plan.case2
        plan = maker(n, p=settings.prime, iterations=settings.iterations).with_(**precision)
        trainer = CodedTrainer.create(
            RunInputs(plan, data.x_train, data.y_train, settings.seed, data.x_test, data.y_test)
        )
        encode_began = time.process_time()
        shares = trainer.encode_dataset()
        encode, comp = time.process_time() - encode_began, {i: 0.0 for i in range(n)}
        sent, received = shares.nbytes, 0
        coefficients = trainer.job_spec.coefficient_array()
        history = []
        while not trainer.done:
            encode_began = time.process_time()
            w_shares = trainer.weight_shares()
            encode += time.process_time() - encode_began
            replies = {}
            for i in range(n):
                started = time.process_time()
                replies[i] = worker_compute(trainer.basis, shares[i], w_shares[i], coefficients)
                comp[i] += time.process_time() - started
            sent += w_shares.nbytes
            received += sum(r.nbytes for r in replies.values())
            history.append(trainer.finish_round(trainer.round, replies))
        weights, between, final = trainer.weights, 0, history[-1]
        shape = {"k": plan.k, "t": plan.t, "threshold": plan.threshold}
    else:
        mpc = MpcPlan.paper(protocol, n, GROUPS)
        plan = Plan.for_privacy(n, mpc.t, p=settings.prime, iterations=settings.iterations).with_(**precision)
        run = simulate_mpc(mpc, RunInputs(plan, data.x_train, data.y_train, settings.seed, data.x_test, data.y_test))
        kinds = run.traffic.bytes
        encode = run.master_seconds.get("setup", 0.0) + run.master_seconds.get("online", 0.0)
        comp = run.worker_seconds
        sent = kinds["data"] + kinds["weights"]
        received = kinds["gradient"]
        between = sum(kinds.get(k, 0) for k in WORKER_TO_WORKER)
        weights, final = run.training.weights, run.training.history[-1]
        shape = {
            "t": mpc.t,
            "groups": mpc.groups,
            "group_size": mpc.group_size,
            "active_workers": mpc.active_workers,
            "worker_messages": dict(run.traffic.messages),
        }
    total = time.perf_counter() - began
    return {
        "protocol": protocol,
        **shape,
        "total_seconds": total,
        "encode_seconds": encode,
        "computation_seconds": max(comp.values()),
        "communication_and_wait_seconds": None,
        "master_cpu_seconds": own_cpu_seconds() - cpu_began - sum(comp.values()),
        "workers_cpu_seconds": sum(comp.values()),
        "max_worker_cpu_seconds": max(comp.values()),
        "bytes": {
            "master_to_workers": int(sent),
            "workers_to_master": int(received),
            "worker_to_worker": int(between),
            "total": int(sent + received + between),
        },
        "train_accuracy": final.train_accuracy,
        "test_accuracy": final.test_accuracy,
        "loss": final.loss,
        "weights": np.asarray(weights),
    }


@contextlib.asynccontextmanager
async def serving(n: int, workdir: Path, lab: NetLab | None) -> AsyncIterator[tuple[list[str], list[int]]]:
    """N plaintext cpml-workers, on loopback or on the lab's hosts w0..w{N-1}: their addresses and pids."""
    if lab is None:
        async with LocalWorkers(n, workdir, start_timeout=600) as local:
            yield local.addresses, [proc.pid for proc in local.processes]
        return
    hosts = [f"w{i}" for i in range(n)]
    processes = await asyncio.to_thread(lab.start_workers, hosts, workdir, ["--insecure"], 600)
    try:
        yield [f"{lab.ip(h)}:{WORKER_PORT}" for h in hosts], [proc.pid for proc in processes]
    finally:
        await asyncio.to_thread(lab.stop, processes)


async def bench_dataset(
    name: str,
    source: str,
    test_fraction: float,
    ns: list[int],
    protocols: list[str],
    iterations: int,
    prime: int,
    seed: int,
    workdir: Path,
    in_process: bool,
    fixed: dict[str, int | None],
    lab: NetLab | None = None,
) -> dict[str, Any]:
    """Every protocol at every N on one dataset, at the precision `fixed` leaves to choose automatically."""
    probe = _settings(source, test_fraction, ns[0], iterations, fixed, prime, seed, workdir / f"{name}-precision", ())
    precision = common_precision(probe)
    runs = []
    for n in ns:
        settings = {
            p: _settings(
                source,
                test_fraction,
                n,
                iterations,
                precision,
                prime,
                seed,
                workdir / f"{name}-{n}-{p}",
                (),
                case=1 if p == "cpml-case1" else 2,
            )
            for p in protocols
        }
        if in_process:
            for protocol in protocols:
                _progress(f"{name} N={n} {protocol} (in-process)")
                runs.append({"n_workers": n, **run_in_process(protocol, settings[protocol])})
        else:
            async with serving(n, workdir / f"workers-{name}-{n}", lab) as (addresses, pids):
                for protocol in protocols:
                    _progress(f"{name} N={n} {protocol}")
                    remote = TrainSettings(**{**settings[protocol].__dict__, "workers": tuple(addresses)})
                    runs.append({"n_workers": n, **await run_networked(protocol, remote, pids)})
        reference = runs[-len(protocols)]["weights"]
        for run in runs[-len(protocols) :]:
            run["weights_identical_to_" + protocols[0]] = bool(np.array_equal(run.pop("weights"), reference))
            _progress(
                f"  {run['protocol']}: {run['total_seconds']:.2f}s, {run['bytes']['total'] / 1e6:.2f} MB, "
                f"test accuracy {run['test_accuracy']}"
            )
    rows, cols = load_training_data(probe).x_train.shape
    return {
        "source": source,
        "train_rows": rows,
        "features": cols,
        "precision": precision,
        "runs": runs,
        "speedups": _speedups(runs, ns),
    }


def _speedups(runs: list[dict[str, Any]], ns: list[int]) -> dict[str, dict[str, float]]:
    out = {}
    for n in ns:
        at = {r["protocol"]: r for r in runs if r["n_workers"] == n}
        entry = {}
        for cpml in ("cpml-case1", "cpml-case2"):
            for base in ("bh08", "bgw"):
                if cpml in at and base in at:
                    entry[f"{cpml}_vs_{base}_wall"] = at[base]["total_seconds"] / at[cpml]["total_seconds"]
                    cpu = {p: at[p]["workers_cpu_seconds"] + at[p]["master_cpu_seconds"] for p in (cpml, base)}
                    entry[f"{cpml}_vs_{base}_cpu"] = cpu[base] / cpu[cpml]
                    entry[f"{cpml}_vs_{base}_bytes"] = at[base]["bytes"]["total"] / at[cpml]["bytes"]["total"]
        out[str(n)] = entry
    return out


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """Figure 3 (total time and CPU seconds vs N) and Table II (breakdown at the largest N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = results["datasets"]
    labels = {
        "cpml-case1": "CodedPrivateML (Case 1)",
        "cpml-case2": "CodedPrivateML (Case 2)",
        "bh08": "MPC [BH08]",
        "bgw": "MPC [BGW88]",
    }
    fig, axes = plt.subplots(2, len(datasets), figsize=(6 * len(datasets), 8), squeeze=False)
    for col, (name, ds) in enumerate(datasets.items()):
        for protocol in labels:
            pts = sorted(
                (r["n_workers"], r["total_seconds"], r["workers_cpu_seconds"] + r["master_cpu_seconds"])
                for r in ds["runs"]
                if r["protocol"] == protocol
            )
            if pts:
                axes[0][col].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=labels[protocol])
                axes[1][col].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=labels[protocol])
        axes[0][col].set_title(f"{name} ({ds['train_rows']} x {ds['features']})")
        axes[0][col].set_ylabel("total training time (s)")
        axes[1][col].set_ylabel("CPU seconds (master + all workers)")
        for ax in axes[:, col]:
            ax.set_xlabel("number of workers N")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    transport = results["transport"].split(":")[0]
    fig.suptitle(f"CodedPrivateML vs MPC baselines, {results['iterations']} iterations ({transport})")
    fig.tight_layout()
    figure3 = out.with_name(f"{out.stem}_figure3.png")
    fig.savefig(figure3, dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(len(datasets), 1, figsize=(12, 1.8 + 1.6 * len(datasets)), squeeze=False)
    for row, (name, ds) in enumerate(datasets.items()):
        n = max(r["n_workers"] for r in ds["runs"])
        table = []
        for protocol in labels:
            r = next((r for r in ds["runs"] if r["protocol"] == protocol and r["n_workers"] == n), None)
            if r is None:
                continue
            comm = r["communication_and_wait_seconds"]
            table.append(
                [
                    labels[protocol],
                    f"{r['encode_seconds']:.2f}",
                    "n/a" if comm is None else f"{comm:.2f}",
                    f"{r['computation_seconds']:.2f}",
                    f"{r['total_seconds']:.2f}",
                    f"{r['workers_cpu_seconds'] + r['master_cpu_seconds']:.1f}",
                    f"{r['bytes']['total'] / 1e6:.1f}",
                ]
            )
        ax = axes[row][0]
        ax.axis("off")
        ax.set_title(f"{name}, N = {n}: breakdown of the total run time", fontsize=10)
        cells = ax.table(
            cellText=table,
            loc="center",
            colWidths=[0.22, 0.1, 0.14, 0.14, 0.1, 0.14, 0.14],
            colLabels=[
                "protocol",
                "encode (s)",
                "comm. + wait (s)",
                "comp. (s)",
                "total (s)",
                "CPU (s, all)",
                "MB on the wire",
            ],
        )
        cells.auto_set_font_size(False)
        cells.set_fontsize(9)
    fig.text(
        0.01,
        0.01,
        "comp. = CPU seconds of the busiest worker; comm. + wait = total - encode - comp.; CPU = master + all workers",
        fontsize=8,
    )
    fig.tight_layout()
    table2 = out.with_name(f"{out.stem}_table2.png")
    fig.savefig(table2, dpi=120)
    plt.close(fig)
    return [figure3, table2]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run every configuration, write the JSON and the figures; exit 1 if any protocol's weights differ."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and few iterations, to test the script")
    parser.add_argument(
        "--dataset", default=None, help="your own CIFAR-like dataset (.csv/.npz/.svm) instead of the synthetic one"
    )
    parser.add_argument("--datasets", default="cifar,gisette", help="which of cifar,gisette to run")
    parser.add_argument("--workers", default=None, help="comma-separated N (default 10,20,30,40,50; quick: 9,15)")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--iterations", type=int, default=None, help="default 50 (quick: 3)")
    parser.add_argument("--prime", type=int, default=2**25 - 39)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--residues", type=int, default=None, help="residue primes (default: automatic)")
    parser.add_argument("--levels", default=None, help="l_x,l_w,l_c (default: automatic)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the in-process simulators instead of gRPC daemons (no network costs)",
    )
    parser.add_argument(
        "--network",
        choices=("loopback", "shaped"),
        default="loopback",
        help="loopback: every process on 127.0.0.1; shaped: a host per process, links capped",
    )
    parser.add_argument(
        "--bandwidth-mbit",
        type=int,
        default=SHAPED_MBIT,
        help=f"shaped: every host's link, each way (default {SHAPED_MBIT})",
    )
    parser.add_argument("--lab", default=None, help=argparse.SUPPRESS)  # set for the run inside the master host
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/mpc.json (shaped: mpc_shaped.json)"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("mpc_shaped.json" if args.network == "shaped" else "mpc.json")
    configure_logging("error", "console")  # the loopback plaintext warning is expected here
    iterations = args.iterations or (3 if args.quick else 50)
    ns = [int(n) for n in (args.workers or ("9,15" if args.quick else "10,20,30,40,50")).split(",")]
    protocols = [p for p in args.protocols.split(",") if p]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        parser.error(f"Argument 'protocols' must name only {', '.join(PROTOCOLS)}, not {sorted(unknown)}.")
    fixed: dict[str, int | None] = {"residues": args.residues, "lx": None, "lw": None, "lc": None}
    if args.levels:
        fixed.update(zip(("lx", "lw", "lc"), (int(v) for v in args.levels.split(","))))
    shapes = QUICK_SHAPES if args.quick else SHAPES
    hosts = ["master", *(f"w{i}" for i in range(max(ns)))]
    if args.network == "shaped" and args.lab is None:
        if args.in_process:
            parser.error("Argument 'network' must be loopback with --in-process, not 'shaped'.")
        if args.bandwidth_mbit < 1:
            parser.error(f"Argument 'bandwidth_mbit' must be positive, not {args.bandwidth_mbit}.")
        reason = unavailable_reason()
        if reason is not None:
            parser.error(f"Argument 'network' cannot be 'shaped' here: {reason}.")
        with NetLab(hosts) as lab:
            for host in hosts:
                lab.shape(host, args.bandwidth_mbit * 1000)
            # this script again, inside the master's host: the master's sockets live in its namespace
            inner = [
                sys.executable,
                str(Path(__file__).resolve()),
                *(sys.argv[1:] if argv is None else argv),
                "--lab",
                lab.name,
                "--out",
                str(args.out),
            ]
            return lab.run("master", inner, check=False).returncode
    lab = None if args.lab is None else NetLab(hosts, name=args.lab)
    transport = (
        "gRPC on 127.0.0.1: real cpml-worker processes; BGW/BH08 workers talk to each other directly"
        if lab is None
        else f"gRPC across emulated hosts: the master and every cpml-worker in a network namespace of its own on "
        f"one bridge, every host's link capped at {args.bandwidth_mbit} Mbit/s each way (tc tbf on both "
        "ends); BGW/BH08 workers talk to each other directly"
    )
    results: dict[str, Any] = {
        "benchmark": "CodedPrivateML vs MPC baselines (paper Section V, Figure 3, Table II)",
        "transport": "in-process simulators (no network)" if args.in_process else transport,
        "network": None
        if lab is None
        else {
            "bandwidth_mbit_per_host_each_way": args.bandwidth_mbit,
            "why": "the paper's workers and master were EC2 m3.xlarge instances, 'High' network performance "
            "(about 1 Gbit/s per instance)",
            "latency": "not emulated: this kernel has no netem; within one EC2 region a round trip is 0.1-0.5 ms, "
            "and a baseline's round has a handful of sequential exchanges, so 50 rounds add tens of "
            "milliseconds against totals of tens of seconds",
        },
        "quick": args.quick,
        "iterations": iterations,
        "workers": ns,
        "protocols": protocols,
        "prime": args.prime,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
        },
        "definitions": {
            "total_seconds": "wall time of data sharing plus all rounds (worker start-up excluded)",
            "encode_seconds": "master time encoding/sharing the data and the weights",
            "computation_seconds": "CPU seconds of the busiest worker",
            "communication_and_wait_seconds": "total - encode - computation: transfers, waiting for other "
            "workers and for a core (all workers share this machine)",
            "workers_cpu_seconds": "sum over worker processes of user+system CPU seconds during the job",
            "speedups": "baseline / CodedPrivateML, for wall time, CPU seconds and total bytes",
        },
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="cpml-bench-mpc-") as tmp:
        workdir = Path(tmp)
        for name in args.datasets.split(","):
            train_rows, test_rows, cols = shapes[name]
            if name == "cifar" and args.dataset:
                source, test_fraction = args.dataset, 0.2
            else:
                source = str(synthetic(workdir / f"{name}.npz", train_rows + test_rows, cols, args.seed))
                test_fraction = test_rows / (train_rows + test_rows)
            results["datasets"][name] = asyncio.run(
                bench_dataset(
                    name,
                    source,
                    test_fraction,
                    ns,
                    protocols,
                    iterations,
                    args.prime,
                    args.seed,
                    workdir,
                    args.in_process,
                    fixed,
                    lab,
                )
            )
            if not (name == "cifar" and args.dataset):
                results["datasets"][name]["source"] = f"synthetic ({train_rows} train + {test_rows} test) x {cols}"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            results["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
            write_metrics(args.out, results)  # after every dataset: a long run keeps what it finished
    figures = plot(results, args.out)
    _progress(f"wrote {args.out} and {', '.join(str(f) for f in figures)}")
    identical = all(
        v
        for ds in results["datasets"].values()
        for r in ds["runs"]
        for k, v in r.items()
        if k.startswith("weights_identical")
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

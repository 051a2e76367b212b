"""Reproduce the WD-DP paper's experiments on data that ships with scikit-learn.

For breast cancer and digits (4 vs 9), logistic regression, P parties split into two groups
(n_min and rho*n_min records, as in the paper): test accuracy and optimality gap
F(w) - F(w*) against epsilon (at fixed rho) and against rho = 1..9 (at fixed epsilon), for
WD-DP (weighted aggregation), the unweighted baseline (Jayaraman et al. 2018) and centralized
DP-GD, each over several seeds (a seed fixes the split; the noise is the production CSPRNG).
Every method is calibrated by the same accountant to the same (epsilon, delta) over the same
rounds, and takes the same step (by default the public rule of `cpml.dp.dpgd.public_step`).
Writes bench/results/wddp.json and PNG figures next to it.

With --defaults it measures the default step and round count instead: on a census-like table
of 30,000 rows (`cpml.dp.synthetic`) and on breast cancer and digits, at epsilon 1 and
rho = 1 and 9, non-private logistic regression (scikit-learn, same rows) against WD-DP with
fixed steps 2 (the old default), 1/L and 8, and the public rule at 20, 50 and 100 rounds.
Writes bench/results/wddp_defaults.json and wddp_defaults_gap.png (gap per round).

    python bench/bench_wddp.py                     # the committed results (~2 min on one core)
    python bench/bench_wddp.py --seeds 3 --quick   # a smoke run
    python bench/bench_wddp.py --defaults          # the defaults study (~3 min)
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cpml.data import load_dataset
from cpml.dp.accountant import Budget
from cpml.dp.dpgd import (
    LocalSettings,
    OptimalityGap,
    Scheme,
    accuracy,
    add_bias_and_normalise,
    smoothness_bound,
    split_uneven,
)
from cpml.dp.noise import SecureGaussian
from cpml.dp.session import RunSettings
from cpml.dp.simulate import SimulationResult, simulate, simulate_centralized
from cpml.dp.synthetic import census_like
from cpml.logs import configure_logging
from cpml.reporting import write_metrics

METHODS = ("wd-dp", "unweighted", "centralized")
LABELS = {"wd-dp": "WD-DP (weighted)", "unweighted": "unweighted baseline", "centralized": "centralized DP-GD"}
DATASETS = ("breast-cancer", "digits-4v9")
CENSUS = "census-like-30000"


def prepared(name: str) -> dict:
    """Standardised, bias-augmented, row-normalised splits as `cpml-master aggregate` makes them."""
    if name == CENSUS:
        with tempfile.TemporaryDirectory() as tmp:
            x, y = census_like(30_000, seed=0)
            path = Path(tmp) / "census-like.npz"
            np.savez(path, x=x, y=y)
            data = load_dataset(str(path), test_fraction=0.2, scaling="standard", seed=0)
    else:
        data = load_dataset(name, test_fraction=0.2, scaling="standard", seed=0)
    x_train = add_bias_and_normalise(data.x_train)
    x_test = add_bias_and_normalise(data.x_test)
    return {
        "name": name,
        "x": x_train,
        "y": data.y_train,
        "x_test": x_test,
        "y_test": data.y_test,
        "x_std": data.x_train,
        "x_std_test": data.x_test,
        "notes": list(data.notes),
    }


def run_once(method: str, data: dict, settings: RunSettings, rho: float, seed: int, on_round=None) -> SimulationResult:
    """One private training run of `method`."""
    source = SecureGaussian()
    if method == "centralized":
        return simulate_centralized(settings, data["x"], data["y"], source, on_round)
    scheme = Scheme.WEIGHTED if method == "wd-dp" else Scheme.UNWEIGHTED
    parts = split_uneven(len(data["y"]), settings.parties, rho, shuffle_seed=seed)
    shards = [(data["x"][i], data["y"][i]) for i in parts]
    return simulate(replace(settings, scheme=scheme), shards, source, on_round=on_round)


def sweep(data: dict, args: argparse.Namespace, points: list[tuple[float, float]], gap_of: OptimalityGap) -> dict:
    """Mean and standard deviation over seeds of accuracy and gap at each (epsilon, rho)."""
    local = LocalSettings(learning_rate=args.learning_rate, clip=1.0, l2=args.l2)
    out: dict = {m: [] for m in METHODS}
    for epsilon, rho in points:
        settings = RunSettings(
            "bench", args.parties, args.rounds, Budget(epsilon, args.delta), local, momentum=args.momentum
        )
        for method in METHODS:
            acc, gap, party_eps, release_eps = [], [], [], []
            for seed in range(args.seeds):
                result = run_once(method, data, settings, rho, seed)
                acc.append(accuracy(result.weights, data["x_test"], data["y_test"]))
                gap.append(gap_of(result.weights))
                release_eps.append(result.guarantees.release_epsilon)
                party_eps.append(max(result.guarantees.party_epsilons.values()))
            out[method].append(
                {
                    "epsilon": epsilon,
                    "rho": rho,
                    "seeds": args.seeds,
                    "learning_rate": result.learning_rate,
                    "momentum": result.momentum,
                    "accuracy_mean": float(np.mean(acc)),
                    "accuracy_std": float(np.std(acc)),
                    "gap_mean": float(np.mean(gap)),
                    "gap_std": float(np.std(gap)),
                    "release_epsilon_max": float(np.max(release_eps)),
                    "worst_party_epsilon_mean": float(np.mean(party_eps)),
                }
            )
        print(
            f"  {data['name']} eps={epsilon:g} rho={rho:g}: "
            + ", ".join(f"{m} acc {out[m][-1]['accuracy_mean']:.3f} gap {out[m][-1]['gap_mean']:.3f}" for m in METHODS),
            flush=True,
        )
    return out


def plot(path: Path, dataset: str, result: dict, key: str, xlabel: str, logx: bool, fixed: str) -> None:
    """Accuracy and optimality gap against `key`, one line per method, std error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_acc, ax_gap = fig.subplots(1, 2)
    for method, marker in zip(METHODS, "osd"):
        rows = result[method]
        xs = [r[key] for r in rows]
        for ax, metric in ((ax_acc, "accuracy"), (ax_gap, "gap")):
            ax.errorbar(
                xs,
                [r[f"{metric}_mean"] for r in rows],
                yerr=[r[f"{metric}_std"] for r in rows],
                marker=marker,
                capsize=3,
                label=LABELS[method],
            )
    ax_acc.axhline(result["nonprivate_accuracy"], color="grey", ls=":", label="non-private")
    ax_acc.set_ylabel("test accuracy")
    ax_gap.set_ylabel("optimality gap F(w) - F(w*)")
    ax_gap.set_yscale("log")
    for ax in (ax_acc, ax_gap):
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"{dataset}: {fixed}")
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Run both sweeps on both datasets and write JSON and figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--parties", type=int, default=6)
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="default: the public rule, as cpml-master aggregate"
    )
    parser.add_argument("--momentum", type=float, default=None)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--rhos", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    parser.add_argument("--rho-for-epsilon-sweep", type=float, default=5.0)
    parser.add_argument("--epsilon-for-rho-sweep", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="three points per sweep")
    parser.add_argument(
        "--defaults", action="store_true", help="measure the default step and rounds instead (wddp_defaults.json)"
    )
    parser.add_argument("--census-seeds", type=int, default=10, help="seeds on the 30,000-row table in --defaults")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.epsilons, args.rhos = [0.25, 1.0, 4.0], [1, 5, 9]
    configure_logging(level="warning")
    if args.defaults:
        return defaults_study(args, argv)
    started = time.time()
    report: dict = {
        "benchmark": "wddp",
        "command": " ".join(["python", "bench/bench_wddp.py", *(argv or sys.argv[1:])]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "local_settings": asdict(LocalSettings(learning_rate=args.learning_rate, l2=args.l2)),
        "step": "as given"
        if args.learning_rate
        else "public rule (cpml.dp.dpgd.public_step), resolved per run; learning_rate and momentum recorded per point",
        "noise_source": "SecureGaussian (os.urandom, Box-Muller)",
        "accountant": "dp_accounting PLD (REPLACE_ONE), full batch",
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "datasets": {},
    }
    for name in DATASETS:
        data = prepared(name)
        gap_of = OptimalityGap.fit(data["x"], data["y"], args.l2)
        entry: dict = {
            "notes": data["notes"],
            "train_records": len(data["y"]),
            "features_with_bias": data["x"].shape[1],
            "nonprivate_accuracy": accuracy(gap_of.optimum, data["x_test"], data["y_test"]),
            "optimum_objective": gap_of.optimum_objective,
        }
        print(
            f"{name}: {len(data['y'])} train records, non-private accuracy {entry['nonprivate_accuracy']:.3f}",
            flush=True,
        )
        entry["vs_epsilon"] = sweep(data, args, [(e, args.rho_for_epsilon_sweep) for e in args.epsilons], gap_of)
        entry["vs_rho"] = sweep(data, args, [(args.epsilon_for_rho_sweep, r) for r in args.rhos], gap_of)
        report["datasets"][name] = entry
        args.out.mkdir(parents=True, exist_ok=True)
        plot(
            args.out / f"wddp_{name}_vs_epsilon.png",
            name,
            {**entry["vs_epsilon"], "nonprivate_accuracy": entry["nonprivate_accuracy"]},
            "epsilon",
            "privacy budget epsilon",
            True,
            f"rho = {args.rho_for_epsilon_sweep:g}, P = {args.parties}, delta = {args.delta:g}",
        )
        plot(
            args.out / f"wddp_{name}_vs_rho.png",
            name,
            {**entry["vs_rho"], "nonprivate_accuracy": entry["nonprivate_accuracy"]},
            "rho",
            "unevenness rho = n_max / n_min",
            False,
            f"epsilon = {args.epsilon_for_rho_sweep:g}, P = {args.parties}, delta = {args.delta:g}",
        )
    report["seconds"] = round(time.time() - started, 1)
    path = write_metrics(args.out / "wddp.json", report)
    print(f"wrote {path} in {report['seconds']} s")
    return 0


def candidates(l2: float) -> dict[str, tuple[float | None, float | None, int]]:
    """Step settings compared by --defaults: name -> (learning rate, momentum, rounds)."""
    return {
        "lr 2 (old default)": (2.0, 0.0, 50),
        "lr 1/L": (1.0 / smoothness_bound(l2), 0.0, 50),
        "lr 8": (8.0, 0.0, 50),
        "public rule, 20 rounds": (None, None, 20),
        "public rule, 50 rounds (default)": (None, None, 50),
        "public rule, 100 rounds": (None, None, 100),
    }


def nonprivate(data: dict, gap_of: OptimalityGap) -> dict:
    """Non-private logistic regression by scikit-learn: on the same rows and l2, and as usual."""
    from sklearn.linear_model import LogisticRegression

    n = len(data["y"])
    same = LogisticRegression(C=1.0 / (gap_of.l2 * n), fit_intercept=False, tol=1e-10, max_iter=10_000).fit(
        data["x"], data["y"]
    )
    usual = LogisticRegression(max_iter=10_000).fit(data["x_std"], data["y"])
    return {
        "sklearn_same_objective_accuracy": float(same.score(data["x_test"], data["y_test"])),
        "optimum_accuracy": accuracy(gap_of.optimum, data["x_test"], data["y_test"]),
        "optimum_objective": gap_of.optimum_objective,
        "sklearn_default_on_standardised_features_accuracy": float(usual.score(data["x_std_test"], data["y_test"])),
    }


def study_point(
    data: dict,
    args: argparse.Namespace,
    gap_of: OptimalityGap,
    rho: float,
    candidate: tuple[float | None, float | None, int],
    seeds: int,
) -> dict:
    """WD-DP at (epsilon, rho) with one candidate step over seeds, with the gap per round."""
    rate, momentum, rounds = candidate
    settings = RunSettings(
        "defaults",
        args.parties,
        rounds,
        Budget(args.epsilon_for_rho_sweep, args.delta),
        LocalSettings(learning_rate=rate, l2=args.l2),
        momentum=momentum,
    )
    acc, gap, curves = [], [], []
    for seed in range(seeds):
        curve: list[float] = []
        result = run_once(
            "wd-dp", data, settings, rho, seed, on_round=lambda _, w, curve=curve: curve.append(gap_of(w))
        )
        acc.append(accuracy(result.weights, data["x_test"], data["y_test"]))
        gap.append(gap_of(result.weights))
        curves.append(curve)
    return {
        "rho": rho,
        "rounds": rounds,
        "seeds": seeds,
        "learning_rate": result.learning_rate,
        "momentum": result.momentum,
        "release_epsilon": result.guarantees.release_epsilon,
        "accuracy_mean": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "gap_mean": float(np.mean(gap)),
        "gap_std": float(np.std(gap)),
        "gap_per_round_mean": np.mean(curves, axis=0).tolist(),
    }


def defaults_study(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Measure candidate default steps against non-private accuracy; write JSON and a figure."""
    started = time.time()
    report: dict = {
        "benchmark": "wddp_defaults",
        "command": " ".join(["python", "bench/bench_wddp.py", *(argv or sys.argv[1:])]),
        "epsilon": args.epsilon_for_rho_sweep,
        "delta": args.delta,
        "parties": args.parties,
        "l2": args.l2,
        "noise_source": "SecureGaussian (os.urandom, Box-Muller)",
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "datasets": {},
    }
    for name in (CENSUS, *DATASETS):
        data = prepared(name)
        gap_of = OptimalityGap.fit(data["x"], data["y"], args.l2)
        entry = {
            "train_records": len(data["y"]),
            "features_with_bias": data["x"].shape[1],
            "notes": data["notes"],
            "nonprivate": nonprivate(data, gap_of),
            "wd-dp": {},
        }
        print(
            f"{name}: {len(data['y'])} train records, non-private accuracy "
            f"{entry['nonprivate']['optimum_accuracy']:.4f}",
            flush=True,
        )
        seeds = args.census_seeds if name == CENSUS else args.seeds
        for label, candidate in candidates(args.l2).items():
            rows = [study_point(data, args, gap_of, rho, candidate, seeds) for rho in (1.0, 9.0)]
            entry["wd-dp"][label] = rows
            print(
                f"  {label:34s} "
                + "  ".join(
                    f"rho={r['rho']:g}: lr {r['learning_rate']:.3g} momentum {r['momentum']:.2f}"
                    f" acc {r['accuracy_mean']:.4f}±{r['accuracy_std']:.4f} gap {r['gap_mean']:.4f}"
                    for r in rows
                ),
                flush=True,
            )
        report["datasets"][name] = entry
    report["seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_gap_per_round(args.out / "wddp_defaults_gap.png", report)
    path = write_metrics(args.out / "wddp_defaults.json", report)
    print(f"wrote {path} in {report['seconds']} s")
    return 0


def plot_gap_per_round(path: Path, report: dict) -> None:
    """Optimality gap per round at rho = 9, one panel per dataset, one line per candidate."""
    from matplotlib.figure import Figure

    names = list(report["datasets"])
    fig = Figure(figsize=(5 * len(names), 3.8), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        for label, rows in report["datasets"][name]["wd-dp"].items():
            curve = next(r for r in rows if r["rho"] == 9.0)["gap_per_round_mean"]
            ax.plot(range(1, len(curve) + 1), curve, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel("optimality gap F(w) - F(w*)")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"WD-DP at epsilon = {report['epsilon']:g}, rho = 9, P = {report['parties']}")
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())

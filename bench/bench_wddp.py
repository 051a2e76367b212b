"""Reproduce the WD-DP paper's experiments on data that ships with scikit-learn.

For breast cancer and digits (4 vs 9), logistic regression, P parties split into two groups
(n_min and rho*n_min records, as in the paper): test accuracy and optimality gap
F(w) - F(w*) against epsilon (at fixed rho) and against rho = 1..9 (at fixed epsilon), for
WD-DP (weighted aggregation), the unweighted baseline (Jayaraman et al. 2018) and centralized
DP-GD, each over several seeds (a seed fixes the split; the noise is the production CSPRNG).
Every method is calibrated by the same accountant to the same (epsilon, delta) over the same
rounds. Writes bench/results/wddp.json and PNG figures next to it.

    python bench/bench_wddp.py                     # the committed results (~2 min on one core)
    python bench/bench_wddp.py --seeds 3 --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cpml.data import load_dataset
from cpml.dp.accountant import Budget
from cpml.dp.dpgd import (
    LocalSettings,
    Scheme,
    accuracy,
    add_bias_and_normalise,
    objective,
    optimum,
    split_uneven,
)
from cpml.dp.noise import SecureGaussian
from cpml.dp.session import RunSettings
from cpml.dp.simulate import SimulationResult, simulate, simulate_centralized
from cpml.logs import configure_logging
from cpml.reporting import write_metrics

METHODS = ("wd-dp", "unweighted", "centralized")
LABELS = {"wd-dp": "WD-DP (weighted)", "unweighted": "unweighted baseline",
          "centralized": "centralized DP-GD"}
DATASETS = ("breast-cancer", "digits-4v9")


def prepared(name: str) -> dict:
    """Standardised, bias-augmented, row-normalised splits and the non-private optimum."""
    data = load_dataset(name, test_fraction=0.2, scaling="standard", seed=0)
    x_train = add_bias_and_normalise(data.x_train)
    x_test = add_bias_and_normalise(data.x_test)
    return {"name": name, "x": x_train, "y": data.y_train, "x_test": x_test,
            "y_test": data.y_test, "notes": list(data.notes)}


def run_once(method: str, data: dict, settings: RunSettings, rho: float, seed: int
             ) -> SimulationResult:
    """One private training run of `method`."""
    source = SecureGaussian()
    if method == "centralized":
        return simulate_centralized(settings, data["x"], data["y"], source)
    scheme = Scheme.WEIGHTED if method == "wd-dp" else Scheme.UNWEIGHTED
    parts = split_uneven(len(data["y"]), settings.parties, rho, shuffle_seed=seed)
    shards = [(data["x"][i], data["y"][i]) for i in parts]
    return simulate(RunSettings(settings.run_id, settings.parties, settings.rounds,
                                settings.budget, settings.local, scheme), shards, source)


def sweep(data: dict, args: argparse.Namespace, points: list[tuple[float, float]],
          w_star: np.ndarray) -> dict:
    """Mean and standard deviation over seeds of accuracy and gap at each (epsilon, rho)."""
    l2 = args.l2
    f_star = objective(w_star, data["x"], data["y"], l2)
    local = LocalSettings(learning_rate=args.learning_rate, clip=1.0, l2=l2)
    out: dict = {m: [] for m in METHODS}
    for epsilon, rho in points:
        settings = RunSettings("bench", args.parties, args.rounds, Budget(epsilon, args.delta),
                               local)
        for method in METHODS:
            acc, gap, party_eps, release_eps = [], [], [], []
            for seed in range(args.seeds):
                result = run_once(method, data, settings, rho, seed)
                acc.append(accuracy(result.weights, data["x_test"], data["y_test"]))
                gap.append(objective(result.weights, data["x"], data["y"], l2) - f_star)
                release_eps.append(result.guarantees.release_epsilon)
                party_eps.append(max(result.guarantees.party_epsilons.values()))
            out[method].append({
                "epsilon": epsilon, "rho": rho, "seeds": args.seeds,
                "accuracy_mean": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
                "gap_mean": float(np.mean(gap)), "gap_std": float(np.std(gap)),
                "release_epsilon_max": float(np.max(release_eps)),
                "worst_party_epsilon_mean": float(np.mean(party_eps)),
            })
        print(f"  {data['name']} eps={epsilon:g} rho={rho:g}: " + ", ".join(
            f"{m} acc {out[m][-1]['accuracy_mean']:.3f} gap {out[m][-1]['gap_mean']:.3f}"
            for m in METHODS), flush=True)
    return out


def plot(path: Path, dataset: str, result: dict, key: str, xlabel: str, logx: bool,
         fixed: str) -> None:
    """Accuracy and optimality gap against `key`, one line per method, std error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_acc, ax_gap = fig.subplots(1, 2)
    for method, marker in zip(METHODS, "osd"):
        rows = result[method]
        xs = [r[key] for r in rows]
        for ax, metric in ((ax_acc, "accuracy"), (ax_gap, "gap")):
            ax.errorbar(xs, [r[f"{metric}_mean"] for r in rows],
                        yerr=[r[f"{metric}_std"] for r in rows], marker=marker, capsize=3,
                        label=LABELS[method])
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
    parser.add_argument("--learning-rate", type=float, default=2.0)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epsilons", type=float, nargs="+",
                        default=[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--rhos", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    parser.add_argument("--rho-for-epsilon-sweep", type=float, default=5.0)
    parser.add_argument("--epsilon-for-rho-sweep", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="three points per sweep")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.epsilons, args.rhos = [0.25, 1.0, 4.0], [1, 5, 9]
    configure_logging(level="warning")
    started = time.time()
    report: dict = {
        "benchmark": "wddp",
        "command": " ".join(["python", "bench/bench_wddp.py", *(argv or sys.argv[1:])]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "local_settings": asdict(LocalSettings(learning_rate=args.learning_rate, l2=args.l2)),
        "noise_source": "SecureGaussian (os.urandom, Box-Muller)",
        "accountant": "dp_accounting RDP, replace-one, full batch",
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "datasets": {},
    }
    for name in DATASETS:
        data = prepared(name)
        w_star = optimum(data["x"], data["y"], args.l2)
        entry: dict = {
            "notes": data["notes"],
            "train_records": len(data["y"]),
            "features_with_bias": data["x"].shape[1],
            "nonprivate_accuracy": accuracy(w_star, data["x_test"], data["y_test"]),
            "optimum_objective": objective(w_star, data["x"], data["y"], args.l2),
        }
        print(f"{name}: {len(data['y'])} train records, non-private accuracy "
              f"{entry['nonprivate_accuracy']:.3f}", flush=True)
        entry["vs_epsilon"] = sweep(
            data, args, [(e, args.rho_for_epsilon_sweep) for e in args.epsilons], w_star)
        entry["vs_rho"] = sweep(
            data, args, [(args.epsilon_for_rho_sweep, r) for r in args.rhos], w_star)
        report["datasets"][name] = entry
        args.out.mkdir(parents=True, exist_ok=True)
        plot(args.out / f"wddp_{name}_vs_epsilon.png", name,
             {**entry["vs_epsilon"], "nonprivate_accuracy": entry["nonprivate_accuracy"]},
             "epsilon", "privacy budget epsilon", True,
             f"rho = {args.rho_for_epsilon_sweep:g}, P = {args.parties}, delta = {args.delta:g}")
        plot(args.out / f"wddp_{name}_vs_rho.png", name,
             {**entry["vs_rho"], "nonprivate_accuracy": entry["nonprivate_accuracy"]},
             "rho", "unevenness rho = n_max / n_min", False,
             f"epsilon = {args.epsilon_for_rho_sweep:g}, P = {args.parties}, "
             f"delta = {args.delta:g}")
    report["seconds"] = round(time.time() - started, 1)
    path = write_metrics(args.out / "wddp.json", report)
    print(f"wrote {path} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

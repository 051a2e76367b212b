"""scikit-learn estimators that train with CodedPrivateML: `cpml-master train` behind fit, predict and score.

`fit(X, y)` takes raw features, writes them with the labels to a private .npz in a temporary directory and runs
exactly what `cpml-master train --dataset that.npz --test-fraction 0` runs (`cpml.master.train.train` with a
`TrainSettings`): the same preprocessing (`cpml.preprocessing.Preprocessing`: standard scaling on the training
rows, an intercept column, the larger label -> 1), the same plan and the same rounds, so the weights are
bit-identical to the command line's for the same seed. Where it runs:

- `workers=None` (default): `n_workers` embedded `cpml-worker` processes on 127.0.0.1, as the CLI starts them;
- `workers=["host:port", ...]`: running daemons, over TLS (`tls_ca`, and `tls_cert`/`tls_key` for mutual TLS)
  unless `insecure=True`;
- `workers="in-process"`: the same trainer with N virtual workers in this process (`cpml.protocol.simulate`,
  bit-identical to a cluster, no processes or sockets: the fast choice for cross-validation and tests).

After fit, `model_` is the run's artifact (`cpml.model.Model`, what model.json holds): `model_.save(path)`
writes a model.json for `cpml-master predict`, `model_.to_sklearn()` gives a plain scikit-learn Pipeline.
`coef_` and `intercept_` act on the preprocessed features (standardised; for linear regression they predict
standardised targets), as those of a LogisticRegression placed after a StandardScaler would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from cpml.field import DEFAULT_PRIME
from cpml.model import Model, load_model, model_of_run, wddp_privacy
from cpml.preprocessing import label_classes, label_note

IN_PROCESS = "in-process"
IN_PROCESS_TRANSPORT = "in process (cpml.protocol.simulate): N virtual workers, no network"
T = TypeVar("T")


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, also where an event loop already runs (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1) as pool:  # a notebook's loop is running in this thread: use a fresh one
        return pool.submit(lambda: asyncio.run(make())).result()


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """The run's log lines at info level when verbose, else errors only; the caller's configuration comes back."""
    from cpml.logs import configure_logging

    saved = structlog.get_config()
    configure_logging("info" if verbose else "error")
    try:
        yield
    finally:
        structlog.configure(**saved)


def _store(estimator: BaseEstimator, parameters: dict[str, Any]) -> None:
    """Keep every __init__ parameter as given, and nothing else (scikit-learn's convention)."""
    for name, value in parameters.items():
        if name != "self":
            setattr(estimator, name, value)


class _CodedEstimator(BaseEstimator):
    """Parameters, fit and the fitted attributes shared by the CodedPrivateML estimators."""

    _model = "logistic"

    def train_settings(self, dataset: str, out: Path) -> Any:
        """The TrainSettings `cpml-master train --dataset DATASET --test-fraction 0` would build from these."""
        from cpml.master.settings import TrainSettings

        seed = self.random_state
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(
                f"Argument 'random_state' must be an integer (the --seed of cpml-master train), not {seed!r}."
            )
        remote = self._remote_workers()

        def path(value: object) -> Path | None:
            return None if value is None else Path(str(value))

        return TrainSettings(
            dataset=dataset,
            test_fraction=0.0,
            scaling=self.scaling,
            intercept=bool(self.fit_intercept),
            workers=remote,
            local_workers=int(self.n_workers),
            case=self.case,
            sigmoid=getattr(self, "sigmoid", "exact"),
            r=getattr(self, "r", 1),
            k=self.k,
            t=self.t,
            lx=self.lx,
            lw=self.lw,
            lc=getattr(self, "lc", None),
            weight_bound=None if self.weight_bound is None else float(self.weight_bound),
            sigmoid_interval=float(getattr(self, "sigmoid_interval", 8.0)),
            prime=int(self.prime),
            residues=self.residues,
            byzantine=int(self.byzantine),
            learning_rate=self.learning_rate,
            iterations=int(self.iterations),
            model=self._model,
            seed=int(seed),
            out=out,
            insecure=bool(self.insecure),
            tls_ca=path(self.tls_ca),
            tls_cert=path(self.tls_cert),
            tls_key=path(self.tls_key),
            tls_server_name=self.tls_server_name,
            progress=False,
        )

    def _remote_workers(self) -> tuple[str, ...]:
        if self.workers is None or (isinstance(self.workers, str) and self.workers == IN_PROCESS):
            return ()
        if isinstance(self.workers, (list, tuple)) and self.workers and all(isinstance(w, str) for w in self.workers):
            return tuple(self.workers)
        raise ValueError(
            f"Argument 'workers' must be None (embedded local workers), {IN_PROCESS!r} or a list of "
            f"host:port addresses of cpml-worker daemons, not {self.workers!r}."
        )

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Model:
        """Train on (x, y) as cpml-master train would and return the run's artifact."""
        with tempfile.TemporaryDirectory(prefix="cpml-fit-") as tmp:
            dataset = Path(tmp) / "fit.npz"
            np.savez(dataset, x=x, y=y)
            out = Path(self.out) if self.out is not None else Path(tmp) / "run"
            settings = self.train_settings(str(dataset), out)
            with _logging(bool(self.verbose)):
                if isinstance(self.workers, str) and self.workers == IN_PROCESS:
                    return _fit_in_process(settings)
                return _fit_on_workers(settings)

    def _fitted(self, model: Model) -> None:
        self.model_ = model
        self.weights_ = model.weights.copy()
        self.plan_ = dict(model.plan)
        self.privacy_ = dict(model.privacy)
        self.n_iter_ = int(model.plan.get("iterations", 0))

    def _decision(self, X: Any) -> np.ndarray:
        """x' @ w on raw rows, after checking the estimator is fitted and X has its features."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.model_.decision_function(X)


def _fit_on_workers(settings: Any) -> Model:
    """train(settings) on embedded or remote workers, then the model.json it wrote."""
    from cpml.master.train import train

    run_coroutine(lambda: train(settings))
    return load_model(settings.out / "model.json")


def _fit_in_process(settings: Any) -> Model:
    """The same data loading, plan and trainer as train(settings), with N virtual workers in this process."""
    from cpml.master.job import load_training_data, run_inputs
    from cpml.master.train import make_plan
    from cpml.protocol import simulate

    data = load_training_data(settings)
    plan = make_plan(settings, settings.n_workers, data.x_train)
    result = simulate(run_inputs(plan, data, settings.seed))
    return model_of_run(
        result.plan, result.weights, data, IN_PROCESS_TRANSPORT, result.history[-1] if result.history else None
    )


class CodedLogisticRegression(ClassifierMixin, _CodedEstimator):
    """Logistic regression trained with CodedPrivateML on workers that may collude (see cpml.estimator); with C > 2
    classes, one-vs-rest: all C models in one run (coef_ C x n_features), predicting the class scoring highest."""

    _model = "logistic"

    def __init__(
        self,
        *,
        n_workers: int = 10,
        workers: Any = None,
        case: int = 1,
        t: int | None = None,
        k: int | None = None,
        sigmoid: str = "exact",
        r: int = 1,
        iterations: int = 50,
        learning_rate: float | None = None,
        prime: int = DEFAULT_PRIME,
        residues: int | None = None,
        lx: int | None = None,
        lw: int | None = None,
        lc: int | None = None,
        weight_bound: float | None = None,
        sigmoid_interval: float = 8.0,
        scaling: str = "standard",
        fit_intercept: bool = True,
        random_state: int = 0,
        byzantine: int = 0,
        insecure: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        out: str | None = None,
        verbose: bool = False,
    ) -> None:
        _store(self, locals())

    def fit(self, X: Any, y: Any) -> CodedLogisticRegression:
        """Train on raw features X and labels y: two classes (the larger is classes_[1]), or C > 2 one-vs-rest."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "multiclass"):
            raise ValueError(
                f"Argument 'y' must hold one class label per row (binary or multiclass), not a {kind} target."
            )
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(
                f"Argument 'y' must hold at least 2 classes, not {len(classes)} class(es): {classes[:5].tolist()}."
            )
        if len(classes) == 2:
            labels = label_classes(y)  # the rule of cpml-master train: the larger label -> 1
            model = self._fit(X, (y == labels[1]).astype(np.int64))
        else:
            labels = tuple(classes)
            model = self._fit(X, np.searchsorted(classes, y).astype(np.int64))
        self.classes_ = classes
        self._fitted(_with_labels(model, labels, getattr(self, "feature_names_in_", None)))
        self.coef_ = self.weights_[: self.n_features_in_].T.reshape(-1, self.n_features_in_).copy()
        self.intercept_ = np.atleast_1d(np.asarray(self.model_.intercept, dtype=np.float64)).copy()
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """x' @ w on raw rows: the log-odds of classes_[1], or one column per class (C > 2)."""
        return self._decision(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of each class: the sigmoid of the decision function (C > 2: normalised over classes)."""
        from cpml.model import ovr_probabilities

        z = self.decision_function(X)
        return ovr_probabilities(z) if z.ndim == 2 else ovr_probabilities(np.column_stack([-z, z]))

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of predict_proba."""
        z = self.decision_function(X)
        if z.ndim == 2:
            return np.log(self.predict_proba(X))
        return np.column_stack([-np.logaddexp(0.0, z), -np.logaddexp(0.0, -z)])

    def predict(self, X: Any) -> np.ndarray:
        """classes_[1] where the decision function is >= 0, else classes_[0]; for C > 2 the highest-scoring class."""
        z = self._decision(X)
        return self.classes_[np.argmax(z, axis=1) if z.ndim == 2 else (z >= 0.0).astype(int)]


class CodedLinearRegression(RegressorMixin, _CodedEstimator):
    """Linear regression (least squares) trained with CodedPrivateML on workers that may collude."""

    _model = "linear"

    def __init__(
        self,
        *,
        n_workers: int = 10,
        workers: Any = None,
        case: int = 1,
        t: int | None = None,
        k: int | None = None,
        iterations: int = 50,
        learning_rate: float | None = None,
        prime: int = DEFAULT_PRIME,
        residues: int | None = None,
        lx: int | None = None,
        lw: int | None = None,
        weight_bound: float | None = None,
        scaling: str = "standard",
        fit_intercept: bool = True,
        random_state: int = 0,
        byzantine: int = 0,
        insecure: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        out: str | None = None,
        verbose: bool = False,
    ) -> None:
        _store(self, locals())

    def fit(self, X: Any, y: Any) -> CodedLinearRegression:
        """Train on raw features X and real targets y (standardised on y's mean and std for training)."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, ensure_min_samples=2)
        if np.ptp(y) == 0:
            raise ValueError(
                f"Argument 'y' must vary to fit linear regression (the targets are standardised), not "
                f"the constant {y[0]:g} on all {len(y)} rows."
            )
        self._fitted(_with_labels(self._fit(X, y), None, getattr(self, "feature_names_in_", None)))
        self.coef_ = self.weights_[: self.n_features_in_].copy()
        self.intercept_ = self.model_.intercept
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets in y's units: mean + std * (x' @ w)."""
        z = self._decision(X)
        return self.model_.preprocessing.targets(z)


def _names(names: Any) -> tuple[str, ...] | None:
    return None if names is None else tuple(str(n) for n in names)


def _with_labels(model: Model, classes: tuple[Any, ...] | None, names: Any) -> Model:
    """The artifact with the caller's own labels and feature names (fit wrote 0/1 labels and unnamed columns)."""
    prep = model.preprocessing
    notes = model.notes
    if classes is not None:
        plain = tuple(c.item() if isinstance(c, np.generic) else c for c in classes)
        plain = tuple(c if isinstance(c, (str, int, float, bool)) else str(c) for c in plain)
        prep = dataclasses.replace(prep, classes=plain)
        notes = tuple(label_note(plain) if note.startswith("labels: ") else note for note in notes)
    if names is not None:
        prep = dataclasses.replace(prep, features=_names(names))
    return dataclasses.replace(model, preprocessing=prep, notes=notes)


class WDDPLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression by weighted distributed DP over parties (cpml.dp): fit(X, y, groups=party of each row)."""

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        rounds: int = 50,
        scheme: str = "weighted",
        parties: int = 6,
        rho: float = 4.0,
        clip: float = 1.0,
        l2: float = 1e-3,
        local_steps: int = 1,
        sampling_rate: float = 1.0,
        learning_rate: float | None = None,
        momentum: float | None = None,
        accountant: str | None = None,
        scaling: str = "standard",
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        _store(self, locals())

    def __sklearn_tags__(self) -> Any:
        """DP noise may cost accuracy on the tiny sets of the estimator checks."""
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = True
        return tags

    def fit(self, X: Any, y: Any, groups: Any = None) -> WDDPLogisticRegression:
        """Train with one party per distinct value of groups (else `parties` uneven parties, as aggregate does)."""
        from cpml.dp.dpgd import add_bias_and_normalise
        from cpml.dp.simulate import simulate
        from cpml.preprocessing import Preprocessing

        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "multiclass") or len(np.unique(y)) < 2:
            raise ValueError(
                f"Argument 'y' must hold two or more classes, one label per row, not a {kind} target "
                f"with {len(np.unique(y))} class(es)."
            )
        # the preprocessing of `cpml-master aggregate`: scaled on the training rows, bias, rows in the unit ball
        self.preprocessing_ = Preprocessing.fit(X, y, scaling=self.scaling, intercept=False)
        x = add_bias_and_normalise(self.preprocessing_.transform(X))
        shards = self._shards(x, self.preprocessing_.encode(y), groups)
        with _logging(bool(self.verbose)):
            result = simulate(self._run_settings(len(shards)), shards, self._noise())
        self.classes_ = np.unique(y)
        columns = self.preprocessing_.n_classes  # C > 2: the session's flat d x C one-vs-rest models
        self.weights_ = result.weights.reshape(-1, columns) if columns > 1 else result.weights.copy()
        self.coef_ = self.weights_[:-1].T.reshape(-1, self.n_features_in_).copy()
        self.intercept_ = np.atleast_1d(self.weights_[-1]).copy()
        self.guarantees_ = dataclasses.asdict(result.guarantees)
        self.party_sizes_ = [len(part_y) for _, part_y in shards]
        self.n_iter_ = len(result.history)
        prep = dataclasses.replace(
            self.preprocessing_,
            intercept=True,
            unit_rows=True,
            features=_names(getattr(self, "feature_names_in_", None)),
        )
        self.model_ = Model(
            weights=self.weights_.copy(),
            preprocessing=prep,
            plan={"rounds": self.n_iter_},
            privacy=wddp_privacy(self.guarantees_, self.scheme, len(shards)),
            notes=prep.notes(),
        )
        return self

    def _shards(self, x: np.ndarray, y: np.ndarray, groups: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """One (rows, labels) shard per party: by groups, or split unevenly (n_max/n_min = rho) as aggregate does."""
        from cpml.dp.dpgd import split_uneven

        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (len(y),):
                raise ValueError(
                    f"Argument 'groups' must name the party of each of the {len(y)} rows, not shape {groups.shape}."
                )
            return [(x[groups == g], y[groups == g]) for g in np.unique(groups)]
        if self.parties < 2 or self.scheme == "centralized":
            return [(x, y)]
        parts = split_uneven(len(y), int(self.parties), float(self.rho), self._seed())
        return [(x[rows], y[rows]) for rows in parts]

    def _run_settings(self, parties: int) -> Any:
        """The RunSettings `cpml-master aggregate` builds from the same flags."""
        from cpml.dp.accountant import Budget
        from cpml.dp.dpgd import LocalSettings, Scheme
        from cpml.dp.session import RunSettings

        if self.scheme not in ("weighted", "unweighted", "centralized"):
            raise ValueError(f"Argument 'scheme' must be weighted, unweighted or centralized, not {self.scheme!r}.")
        local = LocalSettings(
            learning_rate=self.learning_rate,
            clip=self.clip,
            l2=self.l2,
            local_steps=self.local_steps,
            sampling_rate=self.sampling_rate,
        )
        scheme = Scheme.WEIGHTED if self.scheme == "centralized" else Scheme(self.scheme)
        return RunSettings(
            run_id="estimator",
            parties=parties,
            rounds=int(self.rounds),
            budget=Budget(float(self.epsilon), float(self.delta)),
            local=local,
            scheme=scheme,
            accountant=self.accountant,
            momentum=self.momentum,
        )

    def _seed(self) -> int:
        seed = 0 if self.random_state is None else self.random_state
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"Argument 'random_state' must be an integer or None, not {seed!r}.")
        return int(seed)

    def _noise(self) -> Any:
        """The OS CSPRNG (random_state None), or a seeded generator: reproducible, for tests only, not private."""
        from cpml.dp.noise import SecureGaussian, SeededGaussian

        return SecureGaussian() if self.random_state is None else SeededGaussian(self._seed())

    def decision_function(self, X: Any) -> np.ndarray:
        """w · (the row scaled, with its bias, in the unit ball), as the parties computed it (a column per class)."""
        from cpml.dp.dpgd import add_bias_and_normalise

        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return add_bias_and_normalise(self.preprocessing_.transform(X)) @ self.weights_

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of each class (C > 2: the one-vs-rest sigmoids normalised over the classes)."""
        from scipy.special import expit

        from cpml.model import ovr_probabilities

        z = self.decision_function(X)
        return ovr_probabilities(z) if z.ndim == 2 else np.column_stack([expit(-z), expit(z)])

    def predict(self, X: Any) -> np.ndarray:
        """classes_[1] where the decision function is > 0 (as aggregate counts), else classes_[0]; or the top class."""
        z = self.decision_function(X)
        return self.classes_[np.argmax(z, axis=1) if z.ndim == 2 else (z > 0.0).astype(int)]

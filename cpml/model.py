"""A trained model as one versioned file (model.json, format 2), its predictions, and its scikit-learn export.

The artifact holds everything needed to use the weights on raw rows: the model kind, the weights (over the
preprocessed features, intercept last), the full preprocessing (feature names, scaling, intercept, label
mapping or target scaling: `cpml.preprocessing.Preprocessing`), the plan, the privacy guarantees of the
run, the dataset's name, the notes on how it was read and the final metrics. `cpml-master train`, the
scikit-learn estimators (`cpml.estimator`) and `cpml-master predict` all read and write it here.
`Model.to_sklearn` rebuilds it as a scikit-learn Pipeline, which `save_sklearn` writes with skops (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpml.files import write_atomically
from cpml.preprocessing import MISSING, MISSING_CELLS, Preprocessing

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from cpml.data import Dataset
    from cpml.protocol import Plan

FORMAT = 2  # what this cpml writes and reads; model.json files without "format" were written before it
KIND = "cpml-model"
SKLEARN_TYPES = (  # what an exported pipeline holds, and all save_sklearn/load_sklearn trust
    "sklearn.pipeline.Pipeline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "numpy.dtype",  # the dtype of the one-hot encoder's category arrays
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._base.LinearRegression",
)


def coded_privacy(plan: Plan, transport: str, protocol: str = "cpml") -> dict[str, Any]:
    """The privacy guarantees of a CodedPrivateML (or MPC baseline) run with this plan over this transport."""
    name = {"cpml": "CodedPrivateML", "bgw": "BGW (Shamir sharing)", "bh08": "BH08 (Shamir sharing)"}[protocol]
    out: dict[str, Any] = {
        "protocol": name,
        "guarantee": (
            f"information-theoretic: any {plan.t} colluding worker(s) learn nothing about the training "
            f"data or the weights (every share they hold is uniform in every residue field)"
        ),
        "colluding_workers_tolerated": plan.t,
        "workers": plan.n_workers,
        "public": (
            "the data's shape (rows x features), the moduli, r and the sigmoid polynomial's coefficients "
            "(r = 0: the exact sigmoid, no coefficients; planned from the shape and the scaling alone), the "
            "number of rounds"
        ),
        "transport": transport,
        "released_model": (
            "the weights are returned to the data owner as trained: they are not differentially "
            "private, so publish them only if the training data may be reflected in them"
        ),
        "differential_privacy": None,
    }
    if protocol == "cpml":
        out |= {"recovery_threshold": plan.threshold, "stragglers_tolerated": plan.n_workers - plan.threshold}
    return out


def wddp_privacy(guarantees: Mapping[str, Any], scheme: str, parties: int) -> dict[str, Any]:
    """The privacy guarantees of a WD-DP run: the released model's (epsilon, delta) and each party's."""
    return {
        "protocol": f"WD-DP ({scheme} aggregation of {parties} parties' DP gradient descent)",
        "guarantee": (
            f"the released weights are ({guarantees['release_epsilon']:.4g}, {guarantees['delta']:g})-"
            f"differentially private ({guarantees['release_basis']})"
        ),
        "released_model": "differentially private: it may be published under the guarantee above",
        "differential_privacy": dict(guarantees),
    }


@dataclass(frozen=True)
class Model:
    """A trained linear model with its preprocessing, plan, privacy guarantees and provenance."""

    weights: np.ndarray  # over the preprocessed features, the intercept's weight last; one column per class if C > 2
    preprocessing: Preprocessing
    plan: Mapping[str, Any] = field(default_factory=dict)
    privacy: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = ""
    notes: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        classes = self.preprocessing.n_classes
        shape = (self.preprocessing.width,) if classes == 1 else (self.preprocessing.width, classes)
        if w.shape != shape or not np.isfinite(w).all():
            size = " x ".join(map(str, shape))
            raise ValueError(
                f"Argument 'weights' must be {size} finite numbers (features and intercept"
                f"{', one column per class' if classes > 1 else ''}), not shape {w.shape}."
            )
        object.__setattr__(self, "weights", w)

    @property
    def kind(self) -> str:
        """'logistic' or 'linear'."""
        return self.preprocessing.model

    @property
    def coef(self) -> np.ndarray:
        """The weights of the (scaled) features, without the intercept's."""
        return self.weights[: self.preprocessing.n_inputs]

    @property
    def intercept(self) -> Any:
        """The intercept's weight (0 without an intercept column); one per class if C > 2."""
        if not self.preprocessing.intercept:
            return 0.0 if self.weights.ndim == 1 else np.zeros(self.weights.shape[1])
        return float(self.weights[-1]) if self.weights.ndim == 1 else self.weights[-1].copy()

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """x' @ w for raw rows x: log-odds of the class mapped to 1 (one column per class if C > 2), or linear's."""
        return self.preprocessing.transform(x) @ self.weights

    def probability(self, x: np.ndarray) -> np.ndarray:
        """Probability of the class mapped to 1 (logistic); for C > 2 of every class (sigmoids normalised to sum 1)."""
        return ovr_probabilities(self.decision_function(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw labels (the class mapped to 1 where x' @ w >= 0, or the top-scoring one) or targets (linear)."""
        z = self.decision_function(x)
        if self.kind == "linear":
            return self.preprocessing.targets(z)
        return self.preprocessing.labels(np.argmax(z, axis=1) if z.ndim == 2 else z >= 0.0)

    def evaluate(self, x: np.ndarray, y: np.ndarray, source: str = "") -> dict[str, float]:
        """Test metrics on raw rows and labels: accuracy and log-loss (logistic), R² and RMSE (linear)."""
        xt, yt = self.preprocessing.transform(x), self.preprocessing.encode(y, source)
        z = xt @ self.weights
        if z.ndim == 2:  # one-vs-rest: the arg-max class, and the log-loss of the normalised probabilities
            truth = np.argmax(yt, axis=1)
            p = ovr_probabilities(z)[np.arange(len(z)), truth]
            return {
                "accuracy": float(np.mean(np.argmax(z, axis=1) == truth)),
                "log_loss": float(-np.mean(np.log(np.maximum(p, 1e-300)))),
                "rows": len(yt),
            }
        if self.kind == "logistic":  # as the training rounds compute them (cpml.protocol.models)
            return {
                "accuracy": float(np.mean((z >= 0.0) == (yt == 1))),
                "log_loss": float(np.mean(np.logaddexp(0.0, z) - yt * z)),
                "rows": len(yt),
            }
        truth, prediction = self.preprocessing.targets(yt), self.preprocessing.targets(z)
        total = float(np.sum((truth - truth.mean()) ** 2))
        residual = float(np.sum((prediction - truth) ** 2))
        return {
            "r2": 1.0 - residual / total if total > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean((prediction - truth) ** 2))),
            "rows": len(yt),
        }

    def to_json(self) -> dict[str, Any]:
        """The artifact as JSON values (format 2); the top-level model, weights, plan, dataset, notes stay as before."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "kind": KIND,
            "model": self.kind,
            "weights": self.weights.tolist(),
            "preprocessing": self.preprocessing.to_json(),
            "plan": dict(self.plan),
            "privacy": dict(self.privacy),
            "dataset": self.dataset,
            "notes": list(self.notes),
            "metrics": dict(self.metrics),
        }
        if self.kind == "linear":  # linear regression predicts targets as mean + std * (x' @ w)
            out["targets"] = {"mean": self.preprocessing.target_mean, "std": self.preprocessing.target_std}
        return out

    @classmethod
    def from_json(cls, state: Any, where: str = "model") -> Model:
        """Rebuild a format-2 artifact, refusing other formats and damaged ones with the reason."""
        if not isinstance(state, dict) or state.get("kind", KIND) != KIND:
            raise ValueError(
                f"Argument 'model' must be a model.json written by cpml-master train, not {where} "
                f"holding a JSON {type(state).__name__}{_kind(state)}."
            )
        version = state.get("format")
        if version is None and "guarantees" in state:
            raise ValueError(
                f"Argument 'model' must be a cpml model of format {FORMAT}, not {where}, a WD-DP model "
                f"of cpml-master aggregate or cpml-party whose rows were preprocessed by the parties "
                f"(an embedded aggregate run without --feature-bounds, and "
                f"cpml.WDDPLogisticRegression's model_, write format {FORMAT})."
            )
        if version is None:
            raise ValueError(
                f"Argument 'model' must be a cpml model of format {FORMAT}, not {where} without a "
                f"format (written by an older cpml, or by --protocol bgw/bh08, which does not store "
                f"the preprocessing yet); retrain it with this cpml."
            )
        if version != FORMAT:
            advice = "upgrade cpml to read it" if isinstance(version, int) and version > FORMAT else "retrain it"
            raise ValueError(
                f"Argument 'model' must be a cpml model of format {FORMAT} (what this cpml reads), "
                f"not format {version!r} in {where}; {advice}."
            )
        try:
            return cls(
                weights=np.asarray(state["weights"], dtype=np.float64),
                preprocessing=Preprocessing.from_json(state["model"], state["preprocessing"]),
                plan=dict(state.get("plan") or {}),
                privacy=dict(state.get("privacy") or {}),
                dataset=str(state.get("dataset", "")),
                notes=tuple(state.get("notes") or ()),
                metrics=dict(state.get("metrics") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"Argument 'model' must be an intact cpml model, not {where} with a damaged "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}."
            ) from None

    def save(self, path: Path | str) -> None:
        """Write the artifact atomically as indented JSON."""
        write_atomically(path, json.dumps(self.to_json(), indent=1))

    def to_sklearn(self) -> Pipeline:
        """A fitted scikit-learn Pipeline (scalers + LogisticRegression/LinearRegression) computing the same model."""
        from sklearn.linear_model import LinearRegression, LogisticRegression
        from sklearn.pipeline import Pipeline

        steps: list[tuple[str, Any]] = [*_sklearn_one_hot(self.preprocessing), *_sklearn_scalers(self.preprocessing)]
        n = self.preprocessing.n_inputs
        if self.kind == "logistic":
            estimator: Any = LogisticRegression()
            assert self.preprocessing.classes is not None
            estimator.classes_ = np.array(list(self.preprocessing.classes))
            # C > 2: one row of coef_ per class; predict takes the arg-max of the C scores, as Model.predict does
            estimator.coef_ = self.coef.T.reshape(-1, n).copy()
            estimator.intercept_ = np.atleast_1d(np.asarray(self.intercept, dtype=np.float64)).copy()
            estimator.n_iter_ = np.array([int(self.plan.get("iterations", 0))])
        else:
            estimator = LinearRegression()
            std, mean = self.preprocessing.target_std, self.preprocessing.target_mean
            estimator.coef_ = std * self.coef
            estimator.intercept_ = mean + std * self.intercept
            estimator.rank_, estimator.singular_ = n, np.ones(n)
        estimator.n_features_in_ = n
        return Pipeline([*steps, ("model", estimator)])


def ovr_probabilities(z: np.ndarray) -> np.ndarray:
    """The sigmoid of binary scores; for a column of scores per class, the sigmoids normalised over the classes."""
    from scipy.special import expit

    p = expit(z)
    return p / p.sum(axis=1, keepdims=True) if p.ndim == 2 else p


def model_of_run(
    plan: Plan, weights: np.ndarray, data: Dataset, transport: str, final: Any = None, protocol: str = "cpml"
) -> Model:
    """The artifact of a finished run: its weights, the data's preprocessing, the plan, privacy and final metrics."""
    if data.preprocessing is None:
        raise ValueError(
            f"Argument 'data' must carry the preprocessing it was loaded with (cpml.data.load_dataset), "
            f"not None for {data.name!r}."
        )
    metrics: dict[str, Any] = {}
    if final is not None:
        metrics = {"rounds": final.round, "train_loss": final.loss}
        if plan.model == "logistic":
            metrics |= {"train_accuracy": final.train_accuracy, "test_accuracy": final.test_accuracy}
        else:
            metrics |= {"test_r2": final.test_r2, "test_rmse": final.test_rmse}
    return Model(
        weights=np.array(weights, dtype=np.float64),
        preprocessing=data.preprocessing,
        plan={k: getattr(plan, k) for k in plan.__dataclass_fields__},
        privacy=coded_privacy(plan, transport, protocol),
        dataset=data.name,
        notes=tuple(data.notes),
        metrics=metrics,
    )


def _kind(state: Any) -> str:
    return f" of kind {state.get('kind')!r}" if isinstance(state, dict) and "kind" in state else ""


def _sklearn_scalers(prep: Preprocessing) -> list[tuple[str, Any]]:
    """StandardScalers doing (x / prescale - center) / spread operation for operation, and the min-max clip."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if prep.scaling == "none":
        return []
    n = prep.n_inputs
    prescale = StandardScaler(with_mean=False)  # transform: x /= scale_
    prescale.scale_, prescale.mean_, prescale.var_ = np.array(prep.prescale), None, np.array(prep.prescale) ** 2
    scale = StandardScaler()  # transform: x -= mean_; x /= scale_
    scale.mean_, scale.scale_ = np.array(prep.center), np.array(prep.spread)
    scale.var_ = scale.scale_**2
    steps: list[tuple[str, Any]] = [("prescale", prescale), ("scale", scale)]
    if prep.scaling == "minmax":
        clip = MinMaxScaler(clip=True)  # transform: x *= 1; x += 0; clip to [0, 1]
        clip.scale_, clip.min_ = np.ones(n), np.zeros(n)
        clip.data_min_, clip.data_max_, clip.data_range_ = np.zeros(n), np.ones(n), np.ones(n)
        steps.append(("clip", clip))
    for _, step in steps:
        step.n_features_in_, step.n_samples_seen_ = n, 0
    return steps


def _sklearn_one_hot(prep: Preprocessing) -> list[tuple[str, Any]]:
    """A ColumnTransformer: the numeric columns as they are, then each categorical column one-hot (missing cells,
    however written, as the category 'missing'; unseen categories as all zeros), as Preprocessing encodes them."""
    if not prep.categorical:
        return []
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    columns = [column for column, _ in prep.categorical]
    placeholder = np.array([["missing"] * len(columns)], dtype=object)
    imputers = [
        (f"missing_{i}", SimpleImputer(missing_values=token, strategy="constant", fill_value=MISSING).fit(placeholder))
        for i, token in enumerate((np.nan, None, *sorted(MISSING_CELLS)))
    ]
    encoder = OneHotEncoder(
        categories=[list(categories) for _, categories in prep.categorical],
        handle_unknown="ignore",
        sparse_output=False,
    )
    encoder.fit(np.array([[categories[0] for _, categories in prep.categorical]], dtype=object))
    one_hot = Pipeline([*imputers, ("one_hot", encoder)])
    transformer = ColumnTransformer(
        [("numeric", "passthrough", prep.numeric_columns), ("categorical", one_hot, columns)]
    )
    sample = np.empty((1, prep.n_features), dtype=object)
    sample[0, :] = 0.0
    sample[0, columns] = [categories[0] for _, categories in prep.categorical]
    return [("columns", transformer.fit(sample))]


def load_model(path: Path | str) -> Model:
    """Read a model.json (format 2), refusing a missing, damaged, older or newer one with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"Argument 'model' must be a model.json written by cpml-master train, not "
            f"{'the directory' if path.is_dir() else 'a missing file'} {str(path)!r}."
        )
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"Argument 'model' must be a readable JSON model, not {str(path)!r} ({exc}).") from None
    return Model.from_json(state, repr(str(path)))


def save_sklearn(model: Model, path: Path | str) -> None:
    """Write the model as a scikit-learn Pipeline in skops' format (no pickle)."""
    import skops.io

    skops.io.dump(model.to_sklearn(), str(path))


def load_sklearn(path: Path | str) -> Pipeline:
    """Load a pipeline written by save_sklearn, trusting only the scikit-learn types it writes."""
    import skops.io
    from sklearn.pipeline import Pipeline

    untrusted = skops.io.get_untrusted_types(file=str(path))
    unexpected = sorted(set(untrusted) - set(SKLEARN_TYPES))
    if not unexpected:  # skops loads only the types it trusts by default and these
        pipeline = skops.io.load(str(path), trusted=list(untrusted))
        steps = pipeline.steps if isinstance(pipeline, Pipeline) else [("", pipeline)]
        names = [f"{type(step).__module__}.{type(step).__qualname__}" for _, step in steps]
        unexpected = [type(step).__name__ for (_, step), name in zip(steps, names) if name not in SKLEARN_TYPES]
        if isinstance(pipeline, Pipeline) and not unexpected:
            return pipeline
    raise ValueError(
        f"Argument 'path' must be a pipeline exported by cpml (scalers and a linear model), not "
        f"{str(path)!r} holding {', '.join(unexpected)}."
    )

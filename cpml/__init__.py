"""cpml: private training on machines you do not trust (CodedPrivateML and weighted distributed DP)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
ESTIMATORS = ("CodedLogisticRegression", "CodedLinearRegression", "WDDPLogisticRegression")  # in cpml.estimator
__all__ = [*ESTIMATORS, "__version__"]


def __getattr__(name: str) -> Any:
    # The estimators import scikit-learn: only when asked for, so `cpml-worker` and `import cpml` stay light.
    if name in ESTIMATORS:
        from cpml import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'cpml' has no attribute {name!r}")

"""What a training run shows a person: a progress bar on a terminal, a metrics JSON, a PNG of curves.

Shared by `cpml-master train` and `cpml-master aggregate`. The API is three names:
    ProgressBar(total, label)      .update(step, **metrics) / .close(); draws only on a terminal
    write_metrics(path, metrics)   JSON (numpy scalars and arrays allowed)
    plot_curves(path, x, panels)   one panel per named series against x (e.g. loss and accuracy)
    load_plotting()                start importing matplotlib in the background, for a plot_curves to come
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TextIO

import numpy as np

from cpml.files import write_atomically

BAR_WIDTH = 24


class ProgressBar:
    """A one-line progress bar with metrics and ETA, drawn only when the stream is a terminal."""

    def __init__(
        self,
        total: int,
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        start_step: int = 0,
    ) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._start_step = start_step
        self._started = time.monotonic()
        self._drawn = False

    def update(self, step: int, **metrics: float) -> None:
        """Redraw the bar at `step` (of total) with the given metrics."""
        if not self.enabled:
            return
        self.stream.write("\r" + self.render(step, time.monotonic() - self._started, metrics))
        self.stream.flush()
        self._drawn = True

    def render(self, step: int, elapsed: float, metrics: Mapping[str, float]) -> str:
        """The bar's text for `step` after `elapsed` seconds (pure; used by update)."""
        done = min(max(step, 0), self.total)
        filled = int(BAR_WIDTH * done / self.total)
        rate_steps = done - self._start_step
        eta = elapsed / rate_steps * (self.total - done) if rate_steps > 0 else math.nan
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        eta_text = "--:--" if math.isnan(eta) else _clock(eta)
        return (
            f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} {shown} eta {eta_text}"
        ).strip()

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write metrics as indented JSON (numpy values converted, NaN/inf as null); return the path."""
    return write_atomically(path, json.dumps(_jsonable(metrics), indent=2, sort_keys=False) + "\n")


def load_plotting() -> None:
    """Import matplotlib on a background thread, so a run's closing plot_curves finds it loaded."""
    # matplotlib's import costs about a second, as long as a short job's training: a run that will plot starts
    # it while it waits for its workers. A plot_curves that comes sooner waits on Python's import lock.
    threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), name="load-matplotlib").start()


def plot_curves(
    path: str | Path,
    x: Sequence[float],
    panels: Mapping[str, Sequence[float | None]],
    xlabel: str = "iteration",
    title: str = "",
) -> Path:
    """Save a PNG with one panel per named series plotted against x; return the path."""
    from matplotlib.figure import Figure  # imported lazily: only runs that plot pay for it

    if not panels:
        raise ValueError("Argument 'panels' must name at least one series, not {}.")
    for name, ys in panels.items():
        if len(ys) != len(x):
            raise ValueError(
                f"Argument 'panels' must hold series as long as x ({len(x)}), not {len(ys)} values for {name!r}."
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, ys) in zip(axes, panels.items(), strict=True):
        ax.plot(list(x), [math.nan if v is None else v for v in ys], marker="." if len(x) < 60 else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path

"""Progress bar, metrics JSON and the PNG of curves."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from cpml import reporting


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal():
    quiet = io.StringIO()
    with reporting.ProgressBar(10, "train", stream=quiet) as bar:
        bar.update(3, loss=0.5)
    assert quiet.getvalue() == ""
    tty = _Tty()
    with reporting.ProgressBar(10, "train", stream=tty) as bar:
        bar.update(5, loss=0.25, accuracy=0.9)
    out = tty.getvalue()
    assert out.startswith("\rtrain [############............] 5/10 loss=0.25 accuracy=0.9 eta ")
    assert out.endswith("\n")


def test_progress_bar_eta_counts_only_steps_done_this_run():
    bar = reporting.ProgressBar(100, stream=io.StringIO(), start_step=50)
    assert bar.render(60, elapsed=10.0, metrics={}).endswith("60/100  eta 00:40")
    assert bar.render(50, elapsed=1.0, metrics={}).endswith("eta --:--")


def test_metrics_json_handles_numpy_and_nan(tmp_path):
    path = reporting.write_metrics(
        tmp_path / "m" / "metrics.json", {"acc": np.float32(0.5), "w": np.arange(3), "loss": float("nan")}
    )
    assert json.loads(path.read_text()) == {"acc": 0.5, "w": [0, 1, 2], "loss": None}


def test_plot_curves_writes_a_png(tmp_path):
    path = reporting.plot_curves(
        tmp_path / "curves.png", [1, 2, 3], {"loss": [0.7, 0.5, 0.4], "accuracy": [0.5, 0.8, 0.9]}, title="demo"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="as long as x \\(3\\), not 2 values for 'loss'"):
        reporting.plot_curves(tmp_path / "bad.png", [1, 2, 3], {"loss": [1, 2]})

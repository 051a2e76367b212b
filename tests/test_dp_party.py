"""Party side: it refuses too little noise, reads its data safely, and its CLI fails clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import structlog

from cpml.dp.dpgd import LocalSettings
from cpml.dp.party import NoiseTooLow, check_noise
from cpml.dp.party_cli import load_party_data, main
from cpml.errors import ExitCode
from cpml.wire.aggregation_serde import TaskView


@pytest.fixture(autouse=True)
def restore_structlog():
    """The CLIs configure structlog for the process; put the previous setup back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def task(z_k: float, z: float = 10.0, total: int = 400) -> TaskView:
    return TaskView(
        round=1,
        finished=False,
        weights=np.zeros(3),
        noise_multiplier=z_k,
        run_noise_multiplier=z,
        total_records=total,
        local=LocalSettings(),
        stop_reason="",
        release_epsilon=0.0,
        party_epsilon=0.0,
    )


def test_party_accepts_the_wddp_noise_and_refuses_less():
    required = 10.0 * math.sqrt(100 / 400)
    check_noise(task(required), records=100)
    with pytest.raises(NoiseTooLow, match="below the 5 WD-DP requires for 100 of 400 records"):
        check_noise(task(0.9 * required), records=100)
    with pytest.raises(NoiseTooLow):
        check_noise(task(0.0, z=0.0), records=100)


def test_party_data_goes_into_the_unit_ball_with_01_labels(tmp_path):
    path = tmp_path / "d.csv"
    np.savetxt(path, np.array([[30.0, -40.0, -1], [0.1, 0.2, 1], [3.0, 4.0, 1]]), delimiter=",")
    x, y = load_party_data(str(path), "auto", -1, "none")
    assert x.shape == (3, 3) and np.all(np.linalg.norm(x, axis=1) <= 1 + 1e-12)
    assert y.tolist() == [0.0, 1.0, 1.0]


def test_party_data_with_other_labels_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    np.savetxt(path, np.array([[1.0, 2.0, 3], [1.0, 2.0, 7]]), delimiter=",")
    with pytest.raises(
        ValueError,
        match=r"Argument 'data' must have labels 0/1 or -1/1 \(or pass "
        r"--positive-label\), not 3, 7 in column 3 of 'd.csv'",
    ):
        load_party_data(str(path), "auto", -1, "none")


def test_party_cli_reports_a_missing_file(tmp_path, capsys):
    code = main(["--server", "127.0.0.1:1", "--data", str(tmp_path / "nope.csv"), "--insecure", "--log-level", "error"])
    assert code == ExitCode.USAGE
    assert "Argument 'data' must be an existing file" in capsys.readouterr().err

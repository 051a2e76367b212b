"""Running a bench/ script as a user does, for the tests that keep the benchmarks runnable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, out: Path, *args: str, timeout: float) -> Any:
    """Run `python bench/<script> ARGS --out OUT` from the repository root; the JSON it wrote."""
    run = subprocess.run(
        [sys.executable, f"bench/{script}", *args, "--out", str(out)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())

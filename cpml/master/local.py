"""The embedded default: N cpml-worker processes on 127.0.0.1 that the master starts, waits for and stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Self

import structlog

import cpml.errors as errors

log = structlog.get_logger(__name__)


class LocalWorkersFailed(errors.Unavailable, RuntimeError):
    """The embedded cpml-worker processes did not start serving."""


class LocalWorkers:
    """Start N plaintext loopback workers (logs in workdir/worker-<i>.log); stop them on exit."""

    def __init__(self, n: int, workdir: Path, start_timeout: float = 120.0, extra_args: tuple[str, ...] = ()) -> None:
        if n < 1:
            raise ValueError(f"Argument 'n' must be positive, not {n}.")
        self.n = n
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.processes: list[asyncio.subprocess.Process] = []
        self.addresses: list[str] = []

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # N workers share this machine's cores: one BLAS thread each instead of N x cores
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        env.setdefault("CPML_WORKER_COMPUTE_THREADS", "1")
        port_files = []
        try:
            for i in range(self.n):
                port_file = self.workdir / f"worker-{i}.port"
                port_file.unlink(missing_ok=True)
                port_files.append(port_file)
                with (self.workdir / f"worker-{i}.log").open("wb") as log_file:
                    self.processes.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "cpml.worker.cli",
                            "--listen",
                            "127.0.0.1:0",
                            "--insecure",
                            "--port-file",
                            str(port_file),
                            "--log-format",
                            "json",
                            "--drain-seconds",
                            "1",
                            "--stop-with-parent",
                            *self.extra_args,
                            stdin=asyncio.subprocess.DEVNULL,
                            stdout=log_file,
                            stderr=log_file,
                            env=env,
                        )
                    )
            self.addresses = await self._wait_for_ports(port_files)
        except BaseException:
            await self.stop()
            raise
        log.info("local workers started", workers=self.n, logs=str(self.workdir))
        return self

    async def _wait_for_ports(self, port_files: list[Path]) -> list[str]:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if all(p.exists() for p in port_files):
                return [p.read_text().strip() for p in port_files]
            for i, proc in enumerate(self.processes):
                if proc.returncode is not None:
                    raise LocalWorkersFailed(
                        f"local worker {i} exited with code {proc.returncode} before serving; "
                        f"see {self.workdir / f'worker-{i}.log'}"
                    )
            if time.monotonic() > deadline:
                raise LocalWorkersFailed(
                    f"local workers did not start within {self.start_timeout:g}s; see the logs in {self.workdir}"
                )
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every worker still running, SIGKILL any that outlive `grace` seconds."""
        running = [p for p in self.processes if p.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if running:
            _, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=grace)
            for proc in running:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

"""The worker's gRPC server: Worker service + health service, TLS, port file, idle-job expiry, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from threadpoolctl import threadpool_limits

from cpml.files import write_atomically
from cpml.protocol import fused_step
from cpml.wire import names
from cpml.wire.generated.v1 import mpc_pb2_grpc
from cpml.wire.generated.v1 import worker_pb2_grpc as pb_grpc
from cpml.wire.guard import guarded_server
from cpml.wire.tls import server_credentials
from cpml.worker.mpc_runtime import MpcRuntime
from cpml.worker.mpc_service import GrpcPeer, MpcService
from cpml.worker.service import WorkerService
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import ShareStore

log = structlog.get_logger(__name__)


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"Argument 'listen' must look like host:port (e.g. 127.0.0.1:50051), not {address!r}.")
    return host, int(port)


class WorkerServer:
    """One running daemon: start() binds and serves, stop() drains."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.store = ShareStore(settings.share_bytes_cap)
        self.health = health.aio.HealthServicer()
        self._executor = ThreadPoolExecutor(max_workers=settings.compute_threads, thread_name_prefix="compute")
        # the BGW/BH08 parties (cpml.mpc), reaching their peers over gRPC
        self.mpc = MpcRuntime(settings, self._executor, self.store, functools.partial(GrpcPeer, settings))
        self._server: grpc.aio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.address = ""

    async def start(self, name_logs: bool = False) -> str:
        """Bind, start serving and mark the service healthy; return the bound host:port."""
        s = self.settings
        host, _ = split_host_port(s.listen)
        limit = s.max_message_bytes
        server = guarded_server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # masters ping every 30 s to notice a vanished worker
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        worker_service = WorkerService(self.store, s, self._executor, self.health)
        pb_grpc.add_WorkerServicer_to_server(worker_service, server)
        mpc_pb2_grpc.add_MpcServicer_to_server(MpcService(self.mpc), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)  # guarded too: bad bytes, INVALID_ARGUMENT
        if s.tls_cert is not None and s.tls_key is not None:
            port = server.add_secure_port(s.listen, server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca))
        else:
            port = server.add_insecure_port(s.listen)
        self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '::') else host}:{port}"
        if name_logs:  # before serving starts, so every handler task inherits it (the daemon does this)
            structlog.contextvars.bind_contextvars(worker=self.address)
        await server.start()
        self._server = server
        for name in ("", names.WORKER_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._expiry = asyncio.create_task(self._expire_idle_jobs())
        log.info(
            "worker serving",
            listen=s.listen,
            port=port,
            tls=s.tls,
            mutual_tls=s.tls_client_ca is not None,
            share_bytes_cap=s.share_bytes_cap,
        )
        if not s.tls:
            log.warning("serving plaintext (--insecure): anyone on the network path can read the shares")
        if s.port_file is not None:
            write_atomically(s.port_file, self.address)
        return self.address

    async def _expire_idle_jobs(self) -> None:
        """The one reaper: share jobs idle or orphaned, and MPC parties idle, all free their bytes in the store."""
        s = self.settings
        period = max(1.0, min(60.0, s.job_idle_seconds / 4, s.orphan_seconds / 4))
        while True:
            await asyncio.sleep(period)
            for job_id in self.store.expire(s.job_idle_seconds, orphan_seconds=s.orphan_seconds):
                log.info(
                    "idle job expired", job=job_id, idle_seconds=s.job_idle_seconds, orphan_seconds=s.orphan_seconds
                )
            for job_id in await self.mpc.expire_idle():
                log.info("idle mpc job expired", job=job_id, idle_seconds=s.job_idle_seconds)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let calls in flight finish for `grace` seconds, then stop."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        if self._expiry is not None:
            self._expiry.cancel()
        await self._server.stop(self.settings.drain_seconds if grace is None else grace)
        self._server = None
        await self.mpc.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped")


def _warm_up() -> None:
    started = time.perf_counter()
    fused_step.warm_up()
    log.info("kernels ready", seconds=round(time.perf_counter() - started, 3))


async def run(settings: WorkerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain for settings.drain_seconds."""
    # BLAS on the calling thread only: the compute threads are the parallelism (cpml.field.matmul), and BLAS's
    # own threads would spin against them, and against the other workers on a shared machine (10x slower rounds).
    with threadpool_limits(1, user_api="blas"):
        await _serve(settings)


async def _serve(settings: WorkerSettings) -> None:
    # numba's import and the fused step's compilation take seconds: done while the daemon waits for its first job
    threading.Thread(target=_warm_up, name="compile-fused-step", daemon=True).start()
    server = WorkerServer(settings)
    await server.start(name_logs=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = asyncio.create_task(_watch_parent(stop)) if settings.stop_with_parent else None
    try:
        await stop.wait()
        log.info("draining", seconds=settings.drain_seconds)
    finally:
        if orphan_watch is not None:
            orphan_watch.cancel()
        with contextlib.suppress(NotImplementedError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await server.stop()


async def _watch_parent(stop: asyncio.Event, period: float = 1.0) -> None:
    """Set `stop` once the parent process is gone (we were re-parented), so no worker outlives its master."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(period)
    log.warning("parent process exited; stopping", parent=parent)
    stop.set()

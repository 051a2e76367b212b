"""Hosts emulated on one Linux machine: one network namespace per host, each with its own address on a
bridge that lives in a namespace of its own, and link faults (cut, random loss, a bandwidth cap).

Nothing is added to the machine's own namespace: no interface, no route, no firewall rule, so traffic
between the hosts never leaves the namespaces made here. Needs root, `ip` (iproute2), `tc` for
`shape` and `iptables` for `drop`.

    with NetLab(["master", "w1", "w2"]) as lab:
        workers = lab.start_workers(["w1", "w2"], workdir, ["--insecure"])   # at 10.213.0.2:50051, ...
        lab.shape("w1", rate_kbit=1000)
        lab.run("master", ["cpml-master", "train", "--workers", "10.213.0.2:50051,...", ...])
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

PREFIX = "cpmlnet"
SUBNET = "10.213.0"  # /24 inside the lab's namespaces only; the machine never routes to it
WORKER_PORT = 50051
_HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,14}")
_LABS = itertools.count()


class NetLabError(RuntimeError):
    """An `ip`, `tc` or `iptables` command failed."""


def unavailable_reason() -> str | None:
    """Why a lab cannot be built on this machine (not root, no `ip netns`), or None if it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, as CI does)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetLabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace(name: str) -> None:
    """SIGKILL every process in the namespace, then delete it (its interfaces go with it)."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces `prefix<pid>-<n>-*` whose creating process is gone (a crashed earlier run); return them."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    stale = []
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(re.escape(prefix) + r"(\d+)-\d+-.+", name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_namespace(name)
            stale.append(name)
    return stale


class NetLab:
    """Emulated hosts on a bridge, each in its own namespace at SUBNET.<i+1>; `close` removes everything."""

    def __init__(self, hosts: Sequence[str], prefix: str = PREFIX, name: str | None = None) -> None:
        # name: another process's lab.name, to use that lab (say, from inside one of its hosts) without owning it
        bad = [h for h in hosts if not _HOST_NAME.fullmatch(h)]
        if bad or len(set(hosts)) != len(hosts) or not 1 <= len(hosts) <= 250:
            raise ValueError(f"Argument 'hosts' must be 1 to 250 distinct short lowercase names, not {list(hosts)}.")
        self.hosts = tuple(hosts)
        self.builder = name is None  # the builder removes the lab on close
        self.name = f"{os.getpid()}-{next(_LABS)}" if name is None else name
        self.prefix = f"{prefix}{self.name}-"
        self._stale_prefix = prefix
        self._processes: list[subprocess.Popen] = []

    def ns(self, host: str) -> str:
        """The namespace of a host."""
        return self.prefix + host

    def ip(self, host: str) -> str:
        """The host's address on the bridge."""
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    @property
    def _switch(self) -> str:
        return self.prefix + "switch"

    def _port(self, host: str) -> str:
        return f"p{self.hosts.index(host)}"  # the host's end of its cable, on the switch's side

    def __enter__(self) -> Self:
        if not self.builder:
            return self
        remove_stale(self._stale_prefix)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _run("ip", "netns", "add", self._switch)
        _run("ip", "-n", self._switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self._switch, "link", "set", "br0", "up")
        for host in self.hosts:
            ns, port = self.ns(host), self._port(host)
            _run("ip", "netns", "add", ns)
            # both ends are born inside the lab's namespaces: no name ever appears in the machine's own
            _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self._switch)
            _run("ip", "-n", self._switch, "link", "set", port, "master", "br0")
            _run("ip", "-n", self._switch, "link", "set", port, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def popen(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a process inside the host's namespace; `close` ends it if it still runs."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kwargs)
        self._processes.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside the host's namespace to completion."""
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *argv], **kwargs)

    def cut(self, host: str) -> None:
        """Unplug the host's cable: its packets go nowhere, its connections hang (no reset is sent)."""
        _run("ip", "-n", self._switch, "link", "set", self._port(host), "down")

    def mend(self, host: str) -> None:
        """Plug the cable back in."""
        _run("ip", "-n", self._switch, "link", "set", self._port(host), "up")

    def drop(self, host: str, probability: float) -> None:
        """Drop this fraction of the host's incoming and outgoing packets at random (0 removes the rule)."""
        if not 0 <= probability < 1:
            raise ValueError(f"Argument 'probability' must be in [0, 1), not {probability}.")
        ns = self.ns(host)
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", ns, "iptables", "-F", chain)
            if probability > 0:
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-A",
                    chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    f"{probability:.4f}",
                    "-j",
                    "DROP",
                )

    def shape(self, host: str, rate_kbit: int | None) -> None:
        """Cap the host's link at rate_kbit each way (token bucket on both ends); None lifts the cap."""
        burst_bytes = max(3000, (rate_kbit or 0) * 1000 // 8 // 100)  # 10 ms at the rate, at least two frames
        ends = (("-n", self.ns(host), "eth0"), ("-n", self._switch, self._port(host)))
        for flag, ns, dev in ends:
            subprocess.run(["ip", flag, ns, "link", "show", dev], capture_output=True, check=True)
            subprocess.run(["tc", flag, ns, "qdisc", "del", "dev", dev, "root"], capture_output=True, check=False)
            if rate_kbit is not None:
                _run(
                    "tc",
                    flag,
                    ns,
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{rate_kbit}kbit",
                    "burst",
                    str(burst_bytes),
                    "latency",
                    "2s",
                )

    def start_workers(
        self, hosts: Sequence[str], workdir: Path, flags: Sequence[str] = (), timeout: float = 120.0
    ) -> list[subprocess.Popen]:
        """Start a cpml-worker on each host at <ip>:WORKER_PORT (logs in workdir) and wait until all serve."""
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CPML_WORKER_COMPUTE_THREADS": "1"}
        started, ports = [], []
        for host in hosts:
            ports.append(workdir / f"{host}.port")
            ports[-1].unlink(missing_ok=True)
            with (workdir / f"{host}.log").open("wb") as log:
                started.append(
                    self.popen(
                        host,
                        [
                            sys.executable,
                            "-m",
                            "cpml.worker.cli",
                            "--listen",
                            f"{self.ip(host)}:{WORKER_PORT}",
                            "--port-file",
                            str(ports[-1]),
                            "--log-format",
                            "json",
                            "--drain-seconds",
                            "1",
                            *flags,
                        ],
                        stdout=log,
                        stderr=log,
                        env=env,
                    )
                )
        deadline = time.monotonic() + timeout
        while not all(p.exists() for p in ports):
            exited = [h for h, proc in zip(hosts, started) if proc.poll() is not None]
            if exited or time.monotonic() > deadline:
                self.stop(started)
                why = f"exited ({', '.join(exited)})" if exited else f"did not serve within {timeout:g}s"
                raise NetLabError(f"cpml-worker {why}; see the logs in {workdir}")
            time.sleep(0.05)
        return started

    def stop(self, processes: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
        """SIGTERM the processes, SIGKILL those still running after `grace` seconds."""
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """End every process started here; the builder also deletes every namespace (and so link) of the lab."""
        self.stop(self._processes)
        if not self.builder:
            return
        for host in self.hosts:
            _kill_namespace(self.ns(host))
        _kill_namespace(self._switch)

"""`make cluster-demo`: build the images, run docker/compose.yaml (five workers and a master training over
mutual TLS), print the master's report and copy its outputs out, then tear the cluster down, also on a
failure or Ctrl-C. The compose file is run as it is:

- with `docker compose` when a Docker engine answers;
- otherwise with podman, through this driver: podman-compose 1.x ignores `condition: service_healthy`,
  so the driver reads compose.yaml, starts its services in dependency order and waits on each condition
  itself. Podman runs with `--runtime runc` and a containers.conf of ours (cgroupfs, no default ulimits).
  When python:3.11-slim cannot be pulled, the base image is a Debian bookworm made with debootstrap
  (kept as localhost/cpml-base:bookworm for the next run).

    python scripts/cluster_demo.py                      # outputs in runs/cluster-demo
    python scripts/cluster_demo.py --engine podman --out /tmp/demo
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker" / "compose.yaml"
TARGET = "master"
BASE_IMAGE = "localhost/cpml-base:bookworm"
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n'
DEBIAN_MIRROR = os.environ.get("CPML_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RUN_TIMEOUT = 1800.0
LOCK = Path(tempfile.gettempdir()) / "cpml-cluster-demo.lock"  # one compose project per machine at a time
# what the podman driver understands of a service; anything else is refused rather than ignored
SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "environment",
    "volumes",
    "networks",
    "network_mode",
    "read_only",
    "tmpfs",
    "cap_drop",
    "security_opt",
    "healthcheck",
    "depends_on",
    "stop_grace_period",
    "restart",
}


class DemoFailed(RuntimeError):
    """The cluster could not be built, started or finish its job."""


def _say(text: str) -> None:
    print(f"cluster-demo: {text}", file=sys.stderr, flush=True)


def _seconds(text: str | int | float) -> float:
    """A compose duration such as 5s, 1m30s or 15 in seconds."""
    text, total, number = str(text), 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise ValueError(f"Argument 'duration' must look like 5s or 1m30s, not {text!r}.")
    return total + (float(number) if number else 0.0)


def _out_flag(command: Sequence[str]) -> str:
    """The --out directory of the master's command (inside its container)."""
    for i, arg in enumerate(command):
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
        if arg == "--out":
            return command[i + 1]
    raise DemoFailed(f"the {TARGET} service's command has no --out: nothing to copy out")


def _unmount_under(root: Path) -> None:
    """Unmount whatever is mounted below root, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def _report(stdout: str, out: Path) -> None:
    for line in stdout.splitlines():  # the master's report; its JSON log lines go to stderr
        if line.strip() and not line.startswith("{"):
            print(line)
    print(f"outputs: {out}")


# --- Docker ---------------------------------------------------------------------------------------------


def docker_answers() -> bool:
    """Whether a Docker engine with the compose plugin answers here."""
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def run_docker(compose: dict, out: Path) -> None:
    """`docker compose up` the target, copy its outputs out, and `down -v` whatever happens."""
    base = ["docker", "compose", "-f", str(COMPOSE)]
    try:
        subprocess.run([*base, "build"], check=True)
        up = subprocess.run([*base, "up", "--exit-code-from", TARGET, TARGET], check=False, timeout=RUN_TIMEOUT)
        logs = subprocess.run([*base, "logs", "--no-log-prefix", TARGET], capture_output=True, text=True, check=False)
        if up.returncode != 0:
            raise DemoFailed(f"the {TARGET} exited with {up.returncode}")
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        source = _out_flag(compose["services"][TARGET]["command"])
        subprocess.run([*base, "cp", f"{TARGET}:{source}", str(out)], check=True)
        _report(logs.stdout, out)
    finally:
        subprocess.run([*base, "down", "--volumes", "--remove-orphans", "--timeout", "5"], check=False)


# --- podman ---------------------------------------------------------------------------------------------


class Podman:
    """docker/compose.yaml's services as podman containers, labelled with the project for teardown."""

    def __init__(self, compose: dict, workdir: Path) -> None:
        self.compose = compose
        self.project = compose.get("name", "cpml")
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.workdir = workdir
        self.label = f"com.docker.compose.project={self.project}"
        self.healthy: set[str] = set()
        for name, service in compose["services"].items():
            unknown = set(service) - SERVICE_KEYS
            if unknown:
                raise DemoFailed(
                    f"service {name!r} uses {sorted(unknown)}, which this podman driver does not "
                    "handle; run the compose file with Docker, or teach scripts/cluster_demo.py"
                )

    def podman(
        self, *args: str, check: bool = True, capture: bool = False, timeout: float | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run `podman --runtime runc ARGS` with our containers.conf."""
        done = subprocess.run(
            ["podman", "--runtime", "runc", *args],
            env=self.env,
            check=False,
            text=True,
            capture_output=capture,
            timeout=timeout,
            **kwargs,
        )
        if check and done.returncode != 0:
            detail = f": {done.stderr.strip()[-2000:]}" if capture else ""
            raise DemoFailed(f"`podman {' '.join(args[:3])} ...` failed with {done.returncode}{detail}")
        return done

    def container(self, service: str) -> str:
        """The container name compose would give the service."""
        return f"{self.project}-{service}-1"

    # images

    def ensure_base(self) -> None:
        """Build the Debian bookworm base image with debootstrap unless it exists already."""
        if self.podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return
        if shutil.which("debootstrap") is None:
            raise DemoFailed("the base image needs debootstrap: apt-get install -y podman runc debootstrap")
        rootfs = self.workdir / "rootfs"
        _say(f"building the base image {BASE_IMAGE} with debootstrap (a few minutes, once)")
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3,python3-venv,python3-pip",
                    "bookworm",
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        finally:
            _unmount_under(rootfs)  # a debootstrap that failed midway leaves /proc mounted in the rootfs
        # what python:3.11-slim offers the Dockerfile: `python`, `pip`, a site-packages pip may write to,
        # and this machine's CA bundle so pip inside a build reaches the package index
        (rootfs / "usr/bin/python").unlink(missing_ok=True)
        (rootfs / "usr/bin/python").symlink_to("python3")
        if not (rootfs / "usr/bin/pip").exists():
            (rootfs / "usr/bin/pip").symlink_to("pip3")
        for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--one-file-system", "-c", "."], stdout=subprocess.PIPE)
        self.podman("import", "--change", "CMD=/bin/bash", "-", BASE_IMAGE, stdin=tar.stdout, capture=True)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)

    def build(self) -> None:
        """Build every image the services name, once per tag, on the local base image."""
        base = BASE_IMAGE
        if self.podman("image", "exists", "docker.io/library/python:3.11-slim", check=False).returncode == 0:
            base = "docker.io/library/python:3.11-slim"
        else:
            self.ensure_base()
        built = set()
        for service in self.compose["services"].values():
            image, build = service["image"], service.get("build")
            if build is None or image in built:
                continue
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            args = [
                arg
                for k, v in {"BASE": base, **build.get("args", {})}.items()
                for arg in ("--build-arg", f"{k}={'' if v is None else v}")
            ]
            ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
            _say(f"building {image}")
            self.podman(
                "build",
                "--network",
                "host",
                "--pull=never",
                "--quiet",
                "--format",
                "docker",
                "-f",
                str(dockerfile),
                *(["--ignorefile", str(ignore)] if ignore.exists() else []),
                *args,
                "-t",
                image,
                str(context),
                stdout=subprocess.DEVNULL,
            )
            built.add(image)

    # services

    def down(self) -> None:
        """Remove every container, network and volume of the project (also an earlier run's)."""
        listed = self.podman(
            "ps", "-a", "--filter", f"label={self.label}", "--format", "{{.Names}}", capture=True, check=False
        ).stdout.split()
        if listed:
            self.podman("rm", "--force", "--time", "2", *listed, check=False, capture=True)
        for network in self.compose.get("networks", {}):
            self.podman("network", "rm", "--force", f"{self.project}_{network}", check=False, capture=True)
        for volume in self.compose.get("volumes", {}):
            self.podman("volume", "rm", "--force", f"{self.project}_{volume}", check=False, capture=True)

    def create_resources(self) -> None:
        """The project's networks and volumes."""
        for name, spec in self.compose.get("networks", {}).items():
            internal = ["--internal"] if (spec or {}).get("internal") else []
            self.podman("network", "create", "--label", self.label, *internal, f"{self.project}_{name}", capture=True)
        for name in self.compose.get("volumes", {}):
            self.podman("volume", "create", "--label", self.label, f"{self.project}_{name}", capture=True)

    def run_flags(self, name: str, service: dict) -> list[str]:
        """`podman run` flags for one compose service (its health check is the driver's business)."""
        flags = [
            "--detach",
            "--name",
            self.container(name),
            "--label",
            self.label,
            "--label",
            f"com.docker.compose.service={name}",
            "--no-healthcheck",
        ]
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            flags += ["--env", f"{key}={value}"]
        for volume in service.get("volumes", []):
            source, _, rest = volume.partition(":")
            if source in self.compose.get("volumes", {}):
                source = f"{self.project}_{source}"
            else:
                source = str((COMPOSE.parent / source).resolve())
            flags += ["--volume", f"{source}:{rest}"]
        if service.get("network_mode") is not None:
            flags += ["--network", service["network_mode"]]
        for network in service.get("networks", []):
            flags += ["--network", f"{self.project}_{network}", "--network-alias", name]
        if service.get("read_only"):
            flags.append("--read-only")
        for path in service.get("tmpfs", []):
            flags += ["--tmpfs", path]
        for cap in service.get("cap_drop", []):
            flags += ["--cap-drop", cap]
        for opt in service.get("security_opt", []):
            flags += ["--security-opt", opt]
        if "stop_grace_period" in service:
            flags += ["--stop-timeout", str(int(_seconds(service["stop_grace_period"])))]
        if service.get("restart") not in (None, "no"):
            flags += ["--restart", service["restart"]]
        return flags

    def start(self, name: str) -> None:
        """Wait for the service's dependencies' conditions, then start it."""
        service = self.compose["services"][name]
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dependency, spec in depends.items():
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_completed_successfully":
                self.wait_completed(dependency)
            elif condition == "service_healthy":
                self.wait_healthy(dependency)
        self.podman("run", *self.run_flags(name, service), service["image"], *service.get("command", []), capture=True)

    def wait_completed(self, name: str, timeout: float = 300) -> None:
        """Wait for a one-shot service to exit 0."""
        code = self.podman("wait", self.container(name), capture=True, timeout=timeout).stdout.strip()
        if code != "0":
            raise DemoFailed(f"service {name} exited with {code}: {self.logs(name)[-1500:]}")

    def wait_healthy(self, name: str) -> None:
        """Run the service's health check until it passes; fail once it has failed `retries` times in a row."""
        if name in self.healthy:
            return
        check = self.compose["services"][name]["healthcheck"]
        test = check["test"]
        command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
        interval, timeout = _seconds(check.get("interval", "30s")), _seconds(check.get("timeout", "30s"))
        # compose's patience (retries checks, interval apart), probing every second to start sooner
        patience = interval * int(check.get("retries", 3))
        deadline = time.monotonic() + patience
        while True:
            state = self.podman(
                "inspect", "--format", "{{.State.Status}}", self.container(name), capture=True
            ).stdout.strip()
            if state in ("exited", "stopped", "dead"):
                raise DemoFailed(f"service {name} stopped before it was healthy: {self.logs(name)[-1500:]}")
            try:
                probe = self.podman(
                    "exec", self.container(name), *command, check=False, capture=True, timeout=timeout + 5
                )
                passed = probe.returncode == 0
            except subprocess.TimeoutExpired:
                passed = False
            if passed:
                self.healthy.add(name)
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"service {name} was not healthy within {patience:g}s: {self.logs(name)[-1500:]}")
            time.sleep(1.0)

    def logs(self, name: str, stream: str = "both") -> str:
        """A container's output (stdout, stderr or both)."""
        done = self.podman("logs", self.container(name), capture=True, check=False)
        return {"stdout": done.stdout, "stderr": done.stderr}.get(stream, done.stdout + done.stderr)

    def order(self) -> list[str]:
        """The target and everything it depends on, dependencies first."""
        seen: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise DemoFailed(f"services depend on each other in a cycle: {' -> '.join((*path, name))}")
            if name not in seen:
                for dependency in self.compose["services"][name].get("depends_on", {}):
                    visit(dependency, (*path, name))
                seen.append(name)

        visit(TARGET, ())
        return seen

    def run(self, out: Path) -> None:
        """Build, start in dependency order, wait for the target, copy its outputs out; always tear down."""
        self.build()
        self.down()
        try:
            self.create_resources()
            for name in self.order():
                _say(f"starting {name}")
                self.start(name)
            code = self.podman("wait", self.container(TARGET), capture=True, timeout=RUN_TIMEOUT).stdout.strip()
            if code != "0":
                raise DemoFailed(f"the {TARGET} exited with {code}: {self.logs(TARGET, 'stderr')[-3000:]}")
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            source = _out_flag(self.compose["services"][TARGET]["command"])
            self.podman("cp", f"{self.container(TARGET)}:{source}", str(out), capture=True)
            _report(self.logs(TARGET, "stdout"), out)
        finally:
            _say("tearing the cluster down")
            self.down()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when the master finished, 1 when something failed, 130 on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--engine",
        choices=("auto", "docker", "podman"),
        default="auto",
        help="auto: docker compose when an engine answers, else podman",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "cluster-demo",
        help="where the master's outputs are copied (default runs/cluster-demo)",
    )
    args = parser.parse_args(argv)
    compose = yaml.safe_load(COMPOSE.read_text())
    engine = args.engine
    if engine == "auto":
        engine = "docker" if docker_answers() else "podman"
    if engine == "podman" and shutil.which("podman") is None:
        parser.error(
            "Argument 'engine' found no Docker engine and no podman here: install Docker, or "
            "apt-get install -y podman runc debootstrap"
        )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        lock = LOCK.open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("another cluster demo runs on this machine (same compose project); waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _say(f"running {COMPOSE.relative_to(REPO)} with {engine}")
        if engine == "docker":
            run_docker(compose, args.out.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="cpml-cluster-demo-") as tmp:
                Podman(compose, Path(tmp)).run(args.out.resolve())
    except KeyboardInterrupt:
        _say("interrupted; the cluster is torn down")
        return 130
    except (DemoFailed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _say(f"failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

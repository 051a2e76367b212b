"""`cpml-worker`: parse settings, configure logging, serve on uvloop until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import structlog

from cpml import runner
from cpml.errors import ExitCode
from cpml.logs import configure_logging
from cpml.worker.settings import settings_from_args

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker daemon; returns the process exit code."""
    settings = settings_from_args(argv)
    if settings.port_file is not None and not settings.port_file.parent.is_dir():
        # checked before serving: a server that fails after binding cannot be torn down quietly
        print(
            f"cpml-worker: Argument 'port_file' must be in an existing directory, not {str(settings.port_file)!r}.",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    configure_logging(settings.log_level, settings.log_format)
    from cpml.worker.server import run  # after logging is configured

    try:
        runner.run(run(settings))
    except (RuntimeError, ValueError, OSError) as exc:
        log.error("cannot serve", listen=settings.listen, reason=str(exc))
        print(f"cpml-worker: cannot serve on {settings.listen}: {exc}", file=sys.stderr)
        return ExitCode.CANNOT_SERVE
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

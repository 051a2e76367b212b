"""structlog configuration, called once from each entry point (never at import).

JSON lines when the stream is not a terminal, a readable console format when it is. Loggers bind
job, round and worker ids through contextvars; no code in cpml logs a share, a datum or a weight.
"""

from __future__ import annotations

import sys
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog to `stream` (stderr) at `level`, as JSON or console text ("auto": console on a TTY)."""
    if level not in LEVELS:
        raise ValueError(f"Argument 'level' must be one of {', '.join(LEVELS)}, not {level!r}.")
    if fmt not in FORMATS:
        raise ValueError(f"Argument 'fmt' must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    import logging  # here, not at import: `--help` and the settings that name LEVELS stay instant

    import structlog

    target = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and target.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=target.isatty()) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not console else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # without an explicit stream, look sys.stderr up at every call (it may be swapped, e.g. by pytest)
        logger_factory=(
            structlog.PrintLoggerFactory(file=stream)
            if stream is not None
            else lambda *_: structlog.PrintLogger(file=sys.stderr)
        ),
        cache_logger_on_first_use=False,
    )

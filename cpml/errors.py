"""cpml's one error model: the exception root and its categories (each with the gRPC status a servicer sends
and the exit code a command returns), the registry of exit codes, and the template every argument error follows.
"""

from __future__ import annotations

import enum
import os
import sys
import traceback
from pathlib import Path
from typing import Any


class ExitCode(enum.IntEnum):
    """Every exit code of every cpml command: one meaning each (see `exit_codes_help`)."""

    OK = 0
    FAILED = 1  # a bug or an environment failure
    USAGE = 2  # bad arguments, data or plan: fix the command line
    NOT_ENOUGH_WORKERS = 3  # fewer than R workers left; checkpointed, rerun with --resume
    UNREACHABLE = 4  # too few workers (or the server) answered: addresses, TLS, daemons down
    ROUND_TIMEOUT = 5  # a round got too few replies in time; checkpointed
    UNSUITABLE = 6  # too few workers can take the job (free share bytes, message size, modulus)
    WRONG_RESULTS = 7  # wrong results the redundancy could not correct; checkpointed
    REFUSED = 8  # the server refused this party (its status is printed) or asked for too little noise
    PARTIES_MISSING = 9  # not every WD-DP party joined in time
    LEFT_EARLY = 10  # a party left the run to stay within --max-epsilon
    CANNOT_SERVE = 11  # a daemon could not start serving (address in use, unreadable certificates)
    INTERRUPTED = 130  # SIGINT or SIGTERM; checkpointed where the command checkpoints


_EXIT_HELP = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "failed (a bug or the environment; --log-level debug shows the traceback)",
    ExitCode.USAGE: "bad arguments, data or plan",
    ExitCode.NOT_ENOUGH_WORKERS: "fewer than R workers left (checkpointed: rerun with --resume)",
    ExitCode.UNREACHABLE: "too few workers or no server reachable",
    ExitCode.ROUND_TIMEOUT: "a round timed out (checkpointed)",
    ExitCode.UNSUITABLE: "too few workers can take the job",
    ExitCode.WRONG_RESULTS: "wrong results that could not be corrected (checkpointed)",
    ExitCode.REFUSED: "refused by the server",
    ExitCode.PARTIES_MISSING: "not every party joined in time",
    ExitCode.LEFT_EARLY: "left early to stay within the privacy budget",
    ExitCode.CANNOT_SERVE: "could not start serving",
    ExitCode.INTERRUPTED: "interrupted",
}


def exit_codes_help(*codes: ExitCode) -> str:
    """The epilog a command's --help shows: its exit codes and what each means."""
    return "exit codes: " + "; ".join(f"{int(c)} {_EXIT_HELP[c]}" for c in sorted(codes))


class CpmlError(Exception):
    """The root of cpml's own errors: `status` is the gRPC status code a servicer answers with, by name."""

    status = "INTERNAL"
    exit_code = ExitCode.FAILED


class InvalidInput(CpmlError, ValueError):
    """A request, message or input that is malformed or out of range: the sender must change it."""

    status = "INVALID_ARGUMENT"
    exit_code = ExitCode.USAGE


class NotFound(CpmlError, KeyError):
    """A job, party or run that does not exist (here, or any more)."""

    status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(CpmlError):
    """Something that exists already: a job id, a party name, a message sent twice."""

    status = "ALREADY_EXISTS"


class Exhausted(CpmlError):
    """No room: share bytes, party slots, a round too far ahead to buffer."""

    status = "RESOURCE_EXHAUSTED"
    exit_code = ExitCode.UNSUITABLE


class NotReady(CpmlError):
    """A request that comes in the wrong state: out of order, before its upload ended, for a stale round."""

    status = "FAILED_PRECONDITION"


class Unavailable(CpmlError):
    """A peer that cannot be reached or dropped out."""

    status = "UNAVAILABLE"
    exit_code = ExitCode.UNREACHABLE


class TimedOut(CpmlError):
    """Something that did not happen in time."""

    status = "DEADLINE_EXCEEDED"


class Unauthenticated(CpmlError):
    """A caller that does not prove who it is."""

    status = "UNAUTHENTICATED"
    exit_code = ExitCode.REFUSED


class PermissionDenied(CpmlError):
    """A caller who is not allowed to do this."""

    status = "PERMISSION_DENIED"
    exit_code = ExitCode.REFUSED


def failure_site(exc: BaseException) -> str:
    """Where an exception was raised, as "file.py:123 in function" (no values, unlike its message)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def refuse(command: str, message: object, code: ExitCode = ExitCode.USAGE) -> ExitCode:
    """Print "<command>: <message>" on stderr and return `code`: how a command says why it stops."""
    print(f"{command}: {message}", file=sys.stderr)
    return code


def unexpected(command: str, exc: BaseException) -> ExitCode:
    """A bug or an environment failure: one line on stderr, the traceback logged at debug level only."""
    import structlog

    structlog.get_logger(command).debug("failed", exc_info=exc)
    return refuse(
        command, f"failed: {type(exc).__name__}: {exc} (--log-level debug shows the traceback)", ExitCode.FAILED
    )


def argument_error(name: str, requirement: str, value: Any) -> ValueError:
    """Build "Argument 'name' must <requirement>, not <value>." as a ValueError."""
    return ValueError(f"Argument {name!r} must {requirement}, not {value!r}.")


def check_output_dir(path: Path, flag: str = "out") -> None:
    """Refuse (ValueError) an output directory that is a file or cannot be created or written."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        what = "is a file" if existing == path else f"would be under the file {str(existing)!r}"
        raise ValueError(f"Argument '{flag}' must be a directory, not {str(path)!r}, which {what}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"Argument '{flag}' must be a directory you can write to, not {str(path)!r} "
            f"({str(existing)!r} is not writable)."
        )

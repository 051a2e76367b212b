"""Files cpml writes for others to read (whole or not at all), and the small files it reads (size-capped)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cpml.errors import argument_error


def write_atomically(path: Path | str, text: str, private: bool = False) -> Path:
    """Write text to path through a temporary file and a rename, so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of this writer's own: two processes writing the same path must not rename each other's file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_capped(path: Path | str, limit: int, flag: str, what: str) -> str:
    """The UTF-8 text of a file of at most `limit` bytes, else a ValueError naming the argument `flag`."""
    try:
        with Path(path).open("rb") as f:
            raw = f.read(limit + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argument_error(flag, f"be a readable {what}", f"{path} ({exc})") from None
    if len(raw) > limit:
        raise argument_error(flag, f"be at most {limit} bytes", str(path))
    return text

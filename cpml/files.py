"""Files cpml writes for others to read: whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path | str, text: str, private: bool = False) -> Path:
    """Write text to path through a temporary file and a rename, so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if private:
        os.chmod(tmp, 0o600)  # secrets: an existing .tmp keeps its mode through O_CREAT
    os.replace(tmp, path)
    return path

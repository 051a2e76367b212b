"""The one template every argument error in cpml follows, and the checks built on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
        raise ValueError(f"Argument '{flag}' must be a directory you can write to, not {str(path)!r} "
                         f"({str(existing)!r} is not writable).")

"""The one template every argument error in cpml follows."""

from __future__ import annotations

from typing import Any


def argument_error(name: str, requirement: str, value: Any) -> ValueError:
    """Build "Argument 'name' must <requirement>, not <value>." as a ValueError."""
    return ValueError(f"Argument {name!r} must {requirement}, not {value!r}.")

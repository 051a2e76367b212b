"""numba for cpml's few fused loops: optional (None where numba is not installed), compiled once, cached on disk."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def compiled(function: Callable[..., None], signature: str, contract: bool = False) -> Callable[..., Any] | None:
    """`function` compiled by numba for one signature, without the GIL; None if numba is unusable here."""
    try:
        import numba
    except ImportError:  # a platform without numba wheels, or a worker-only install: callers fall back to numpy
        return None
    options: dict[str, Any] = {"nogil": True, "boundscheck": False, "error_model": "numpy"}
    if contract:
        options["fastmath"] = {"contract"}
    try:
        return numba.njit(signature, cache=True, **options)(function)
    except RuntimeError:  # no writable cache directory (e.g. a read-only install): compile every process
        return numba.njit(signature, cache=False, **options)(function)

"""numba for cpml's few fused loops: optional (None where numba is not installed), compiled once, cached on disk."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.Lock()  # one compilation per kernel, however many threads ask for it first


def compiled(function: Callable[..., None], signature: str, contract: bool = False) -> Callable[..., Any] | None:
    """`function` compiled by numba for one signature, without the GIL; None if numba is unusable here."""
    with _LOCK:
        return _compile(function, signature, contract)


@functools.cache
def _compile(function: Callable[..., None], signature: str, contract: bool) -> Callable[..., Any] | None:
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

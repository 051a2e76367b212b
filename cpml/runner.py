"""The one way every cpml command runs its event loop: uvloop where it exists, SIGTERM as a cancellation."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], cancel_on_sigterm: bool = False) -> T:
    """Run coro to completion (on uvloop when installed); SIGTERM cancels it when asked, so it can clean up."""
    main = _cancelled_by_sigterm(coro) if cancel_on_sigterm else coro
    try:
        import uvloop
    except ImportError:  # Windows: plain asyncio
        return asyncio.run(main)
    return uvloop.run(main)


async def _cancelled_by_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # called inside a running task
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except NotImplementedError:  # Windows: SIGTERM ends the process as usual
        return await coro
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)

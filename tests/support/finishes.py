"""Run a call that might block forever (a FIFO read waits for a writer) and fail the test instead of hanging."""

from __future__ import annotations

import threading
from collections.abc import Callable


def finishes(fn: Callable[[], object], seconds: float = 10.0) -> BaseException | None:
    """The exception `fn` raised (None if none); fails the test when it is still running after `seconds`.

    `fn` runs in a daemon thread, so a call stuck on a FIFO or a device cannot keep the test process alive.
    """
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a FIFO or reading a device?)"
    return result[0]

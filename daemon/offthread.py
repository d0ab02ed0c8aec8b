"""Calls that may block on a disk, run off the thread that answers signals.

Reading a file on a network share or a USB disk that is going away can block
for minutes in the kernel, and a signal does not end a blocked ``open()`` or
``read()``: Python retries it after running the handler. So the service loop
never reads an inbox itself: it hands each scan and each content hash to
``OffThread``, collects what has finished at every tick, and carries on. A call
still running after ``stall_seconds`` is reported once; its key is not started
again until it ends, and at most ``limit`` run at once, so a stalled volume
costs a few threads, not one per file. The threads are daemon threads: a call
stuck in the kernel never keeps whisperd from exiting.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

log = logging.getLogger("whisperd.offthread")


@dataclass
class _Call:
    started: float
    what: str
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    reported: bool = False


class OffThread:
    def __init__(
        self,
        *,
        limit: int = 4,
        stall_seconds: float = 30.0,
        on_done: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.stall_seconds = stall_seconds
        self.on_done = on_done
        self.monotonic = monotonic
        self._calls: dict[Hashable, _Call] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def pending(self) -> int:
        """Calls running that have not stalled: what a drain still waits for."""
        with self._lock:
            return sum(1 for c in self._calls.values() if not c.reported)

    def busy(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._calls

    def submit(self, key: Hashable, fn: Callable[[], Any], what: str = "", *, notify: bool = True) -> bool:
        """Start ``fn`` unless a call under ``key`` is still running or ``limit`` calls are.
        Returns whether it started. ``notify``: call ``on_done`` when it ends (a call that runs
        at every tick wakes the loop itself when it has news, or the loop would never rest)."""
        with self._lock:
            if key in self._calls or len(self._calls) >= self.limit:
                return False
            call = _Call(self.monotonic(), what or str(key))
            self._calls[key] = call

        def run() -> None:
            try:
                call.result = fn()
            except BaseException as exc:  # handed to the loop, which decides
                call.error = exc
            call.done = True
            if notify:
                self.on_done()

        threading.Thread(target=run, name=f"whisperd-read-{call.what[:32]}", daemon=True).start()
        return True

    def collect(self) -> list[tuple[Hashable, Any, BaseException | None]]:
        """(key, result, error) of every call that ended since the last collect; a call
        running longer than ``stall_seconds`` is logged once."""
        now = self.monotonic()
        out: list[tuple[Hashable, Any, BaseException | None]] = []
        with self._lock:
            for key, call in list(self._calls.items()):
                if call.done:
                    del self._calls[key]
                    out.append((key, call.result, call.error))
                elif not call.reported and now - call.started >= self.stall_seconds:
                    call.reported = True
                    log.warning(
                        "reading %s has taken over %.0f s; its disk may be gone or very slow. whisperd goes on with "
                        "other files and tries it again when the read ends", call.what, now - call.started,
                        extra={"action": "watch.stalled"},
                    )
        return out

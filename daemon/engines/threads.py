"""How many threads the model may use now: the cores that other programs leave free.

Each of the model's parallel steps waits for its slowest thread. When another program keeps
one of two cores busy, the thread that shares its core runs at half speed and holds the other
one back (docs/decisions.md has the measurements). So before each batch the engine asks how
busy the other programs kept the CPU since the last batch (or since the model began to load),
and uses the cores they left. The text does not depend on the number of threads.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

# Other programs keeping at least this much of a core busy (on average) take it from the model.
TAKEN = 0.5
MIN_INTERVAL = 1.0  # seconds between readings; shorter ones are noise


def _busy_seconds() -> float:
    """CPU seconds all cores have spent running something (hypervisor steal left out)."""
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "steal", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


Reading = tuple[float, float, float]  # (clock, CPU seconds of all programs, CPU seconds of this process)


def reading(
    *, busy: Callable[[], float] = _busy_seconds, own: Callable[[], float] = _own_seconds,
    clock: Callable[[], float] = time.monotonic,
) -> Reading:
    """Where the counters stand now: taken when the model begins to load, so that the first
    batch (a few seconds later, often the only one) is decided on what other programs did
    meanwhile instead of on the default."""
    return clock(), busy(), own()


class FreeCores:
    """Called before each batch: the number of threads to use, from 1 to ``cores``."""

    def __init__(
        self,
        cores: int,
        *,
        busy: Callable[[], float] = _busy_seconds,
        own: Callable[[], float] = _own_seconds,
        clock: Callable[[], float] = time.monotonic,
        since: Reading | None = None,
    ) -> None:
        self.cores = max(1, cores)
        self.busy, self.own, self.clock = busy, own, clock
        self.threads = self.cores
        # the first reading: ``since`` (see ``reading``), else now
        self._last: Reading | None = since or reading(busy=busy, own=own, clock=clock)

    def __call__(self) -> int:
        now, busy, own = self.clock(), self.busy(), self.own()
        if self._last is not None:
            then, busy_then, own_then = self._last
            if now - then < MIN_INTERVAL:
                return self.threads
            others = max(0.0, (busy - busy_then) - (own - own_then)) / (now - then)
            self.threads = max(1, min(self.cores, int(self.cores - others + (1 - TAKEN))))
        self._last = (now, busy, own)
        return self.threads


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch computes on ``n`` threads inside, on as many as before after."""
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

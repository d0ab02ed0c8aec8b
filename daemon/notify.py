"""Batched notifications: fifty finished files make one banner, not fifty.

The service reports each finished job with ``done(name)`` / ``failed(name,
reason)`` and calls ``tick(queue_empty=...)`` from its clock. A banner goes out

* when the queue has drained and nothing new finished for ``settle`` seconds, or
* while work goes on, once ``interval`` seconds have passed since the oldest
  unreported result (so a long queue reports progress at most that often).

``close()`` sends what is left at shutdown. Sending never raises.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from daemon.config import Config

log = logging.getLogger("whisperd.notify")

Sender = Callable[[str, str], "bool | None"]
TITLE = "whisperd"


@dataclass(frozen=True)
class Summary:
    done: int
    failed: int
    only: str = ""  # the one file's name (and reason), when the batch holds a single result

    @property
    def text(self) -> str:
        if self.only:
            return self.only
        plural = "recording" if self.done == 1 else "recordings"
        if self.done and self.failed:
            return f"{self.done} {plural} transcribed, {self.failed} failed"
        if self.done:
            return f"{self.done} {plural} transcribed"
        return f"{self.failed} {'recording' if self.failed == 1 else 'recordings'} failed"


def summarize(done: list[str], failed: list[tuple[str, str]]) -> Summary:
    if len(done) + len(failed) == 1:
        if done:
            return Summary(1, 0, f"{done[0]} transcribed")
        name, reason = failed[0]
        reason = reason if len(reason) <= 120 else reason[:119] + "…"
        return Summary(0, 1, f"{name} failed: {reason}" if reason else f"{name} failed")
    return Summary(len(done), len(failed))


class Notifier:
    def __init__(
        self,
        send: Sender | None = None,
        *,
        enabled: bool = True,
        interval: float = 300.0,
        settle: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        title: str = TITLE,
    ) -> None:
        if send is None and enabled:
            from daemon.platform import notify_sender

            send = notify_sender
        self._send = send
        self.enabled = enabled and send is not None
        self.interval = interval
        self.settle = settle
        self._clock = clock
        self._title = title
        self._lock = threading.Lock()
        self._done: list[str] = []
        self._failed: list[tuple[str, str]] = []
        self._first = 0.0  # when the oldest unreported result arrived
        self._last = 0.0  # when the newest one arrived

    @classmethod
    def from_config(cls, cfg: Config, send: Sender | None = None, **kwargs: object) -> "Notifier":
        return cls(send, enabled=cfg.notify, **kwargs)  # type: ignore[arg-type]

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._done) + len(self._failed)

    def done(self, name: str) -> None:
        self._add(lambda: self._done.append(name))

    def failed(self, name: str, reason: str = "") -> None:
        self._add(lambda: self._failed.append((name, reason)))

    def _add(self, append: Callable[[], None]) -> None:
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            if not self._done and not self._failed:
                self._first = now
            self._last = now
            append()

    def tick(self, *, queue_empty: bool) -> Summary | None:
        """Send a banner if one is due; returns what was sent."""
        now = self._clock()
        with self._lock:
            if not self._done and not self._failed:
                return None
            drained = queue_empty and now - self._last >= self.settle
            overdue = now - self._first >= self.interval
            if not (drained or overdue):
                return None
        return self.flush()

    def flush(self) -> Summary | None:
        """Send whatever is pending now."""
        with self._lock:
            if not self._done and not self._failed:
                return None
            summary = summarize(self._done, self._failed)
            self._done, self._failed = [], []
        assert self._send is not None
        try:
            ok = self._send(self._title, summary.text)
        except Exception as exc:  # a banner must never take the daemon down
            log.debug("notification failed: %s", exc, extra={"action": "notify.failed"})
            ok = False
        log.debug("notification: %s", summary.text, extra={"action": "notify.sent" if ok is not False else "notify.failed"})
        return summary

    def alert(self, text: str) -> None:
        """Send ``text`` at once, on its own (why work has stopped: it must not wait for a summary)."""
        if not self.enabled:
            return
        assert self._send is not None
        try:
            ok = self._send(self._title, text)
        except Exception as exc:  # a banner must never take the daemon down
            log.debug("notification failed: %s", exc, extra={"action": "notify.failed"})
            ok = False
        log.debug("notification: %s", text, extra={"action": "notify.sent" if ok is not False else "notify.failed"})

    def close(self) -> Summary | None:
        return self.flush()

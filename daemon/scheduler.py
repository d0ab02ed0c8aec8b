"""APScheduler as a clock only.

``Clock`` calls the service's plain callables at the right times and keeps no
state of its own: the jobs table stays the single record of work, and
APScheduler's jobs live in a MemoryJobStore that is rebuilt at every start.

- ``on_window_change()`` at every window opening and closing (a cron trigger
  per boundary, on the days it happens), so the service loop re-decides at
  once instead of waiting for its next tick;
- ``on_rescan()`` every ``watch.rescan_minutes``;
- ``on_reap()`` every ``jobs.lease_seconds / 2`` (expired leases).

Every job coalesces missed runs into one, never overlaps itself, and may run
up to ``schedule.misfire_grace_minutes`` late, so a Mac that wakes from sleep
still does what it missed. Callbacks run on a small thread pool; they should
be quick (set a flag, wake the loop). An exception in one is logged and the
schedule goes on.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timezone, tzinfo
from typing import Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.config import Config
from daemon.timewindows import boundaries

log = logging.getLogger(__name__)


def local_timezone() -> tzinfo:
    """The system's zone (for window times), with tzlocal's complaints logged instead of raised.

    tzlocal warns when, say, ``TZ`` and ``/etc/localtime`` disagree; that is a
    fact about the machine worth a log line, not a reason to stop.
    """
    import tzlocal

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            zone: tzinfo = tzlocal.get_localzone()
        except (LookupError, ValueError) as exc:  # e.g. TZ names no known zone
            log.warning("time zone could not be determined (%s); using UTC, as the C library does",
                        exc, extra={"action": "clock.timezone"})
            zone = timezone.utc
    for w in caught:
        log.warning("time zone: %s", w.message, extra={"action": "clock.timezone"})
    return zone


def _guarded(name: str, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("scheduled %s failed", name, extra={"action": f"clock.{name}"})

    run.__name__ = f"clock_{name}"
    return run


class Clock:
    """Owns one BackgroundScheduler; ``start()`` once, ``shutdown()`` once."""

    def __init__(
        self,
        config: Config,
        on_rescan: Callable[[], object],
        on_reap: Callable[[], object],
        on_window_change: Callable[[], object],
        *,
        timezone: tzinfo | str | None = None,
    ) -> None:
        self.config = config
        self.timezone = timezone if timezone is not None else local_timezone()
        grace = config.schedule.misfire_grace_minutes * 60
        self.scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                # APScheduler wants a positive number of seconds; 0 in the config means "no grace".
                "misfire_grace_time": max(1, round(grace)),
            },
            timezone=self.timezone,
        )
        tz = self.scheduler.timezone
        add = self.scheduler.add_job
        add(_guarded("rescan", on_rescan), IntervalTrigger(seconds=config.watch.rescan_minutes * 60, timezone=tz),
            id="rescan", name="rescan inboxes")
        add(_guarded("reap", on_reap), IntervalTrigger(seconds=max(config.jobs.lease_seconds / 2, 0.5), timezone=tz),
            id="reap", name="reap expired leases")
        for b in boundaries(config.schedule.windows, config.schedule.days):
            day_of_week = ",".join(b.days) if b.days else None
            add(_guarded("window", on_window_change),
                CronTrigger(hour=b.hour, minute=b.minute, day_of_week=day_of_week, timezone=tz),
                id=f"window-{b.hour:02d}{b.minute:02d}", name=f"window boundary {b.hour:02d}:{b.minute:02d}")

    def start(self) -> None:
        self.scheduler.start()
        log.info("clock started", extra={"action": "clock.start"})

    def shutdown(self, wait: bool = True) -> None:
        """Stop the timers; with ``wait`` also let a callback that is running finish."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
            log.info("clock stopped", extra={"action": "clock.stop"})

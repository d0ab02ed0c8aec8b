"""The Clock with a real BackgroundScheduler: callbacks fire, triggers follow the config."""

import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from daemon.config import Config, JobsConfig, ModelConfig, ScheduleConfig, WatchConfig
from daemon.scheduler import Clock, local_timezone

WAIT = 10.0  # seconds; the callbacks below are due within a second


def make_config(**sections) -> Config:
    defaults = dict(path=None, database="sqlite:///:memory:", state_dir=Path("/tmp/state"), log_dir=None,
                    model=ModelConfig(), folders=())
    defaults.update(sections)
    return Config(**defaults)


def noop() -> None:
    pass


@pytest.fixture
def clocks():
    made: list[Clock] = []
    yield made
    for c in made:
        c.shutdown(wait=True)


def test_rescan_and_reap_fire(clocks):
    rescanned, reaped = threading.Event(), threading.Event()
    cfg = make_config(watch=WatchConfig(rescan_minutes=0.01), jobs=JobsConfig(lease_seconds=1.0))  # 0.6 s, 0.5 s
    clock = Clock(cfg, on_rescan=rescanned.set, on_reap=reaped.set, on_window_change=noop)
    clocks.append(clock)
    clock.start()
    assert rescanned.wait(WAIT), "rescan callback did not fire"
    assert reaped.wait(WAIT), "reap callback did not fire"


def test_a_failing_callback_is_logged_and_the_schedule_goes_on(clocks, caplog):
    calls = []
    again = threading.Event()

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk went away")
        again.set()

    cfg = make_config(jobs=JobsConfig(lease_seconds=1.0))
    clock = Clock(cfg, on_rescan=noop, on_reap=flaky, on_window_change=noop,
                  timezone=ZoneInfo("UTC"))
    clocks.append(clock)
    with caplog.at_level(logging.ERROR, logger="daemon.scheduler"):
        clock.start()
        assert again.wait(WAIT), "reap did not run again after failing"
    assert any("scheduled reap failed" in r.getMessage() for r in caplog.records)


def test_job_defaults_and_triggers(clocks):
    zone = ZoneInfo("Europe/Berlin")
    cfg = make_config(schedule=ScheduleConfig(windows=("22:00-07:00", "12:00-13:00"), days=("fri",),
                                              misfire_grace_minutes=30),
                      watch=WatchConfig(rescan_minutes=10), jobs=JobsConfig(lease_seconds=120))
    clock = Clock(cfg, on_rescan=noop, on_reap=noop, on_window_change=noop, timezone=zone)
    clocks.append(clock)
    clock.scheduler.start(paused=True)  # job defaults are applied when the scheduler starts
    jobs = {job.id: job for job in clock.scheduler.get_jobs()}
    assert set(jobs) == {"rescan", "reap", "window-0700", "window-1200", "window-1300", "window-2200"}
    for job in jobs.values():
        assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time == 30 * 60
    assert jobs["rescan"].trigger.interval == timedelta(minutes=10)
    assert jobs["reap"].trigger.interval == timedelta(seconds=60)

    # the night window opens Friday 22:00 and closes Saturday 07:00, in the configured zone
    monday = datetime(2024, 1, 1, 8, 0, tzinfo=zone)
    opens: CronTrigger = jobs["window-2200"].trigger
    closes: CronTrigger = jobs["window-0700"].trigger
    assert opens.get_next_fire_time(None, monday) == datetime(2024, 1, 5, 22, 0, tzinfo=zone)
    assert closes.get_next_fire_time(None, monday) == datetime(2024, 1, 6, 7, 0, tzinfo=zone)
    assert jobs["window-1300"].trigger.get_next_fire_time(None, monday) == datetime(2024, 1, 5, 13, 0, tzinfo=zone)


def test_window_boundary_follows_local_time_across_daylight_saving(clocks):
    zone = ZoneInfo("Europe/Berlin")  # clocks went forward on 2024-03-31
    cfg = make_config(schedule=ScheduleConfig(windows=("22:00-07:00",)))
    clock = Clock(cfg, on_rescan=noop, on_reap=noop, on_window_change=noop, timezone=zone)
    clocks.append(clock)
    opens = {job.id: job for job in clock.scheduler.get_jobs()}["window-2200"].trigger
    fire = opens.get_next_fire_time(None, datetime(2024, 3, 31, 12, 0, tzinfo=zone))
    assert fire == datetime(2024, 3, 31, 22, 0, tzinfo=zone)
    assert fire.astimezone(timezone.utc).hour == 20  # CEST: UTC+2


def test_zero_grace_is_one_second_and_no_windows_means_no_window_jobs(clocks):
    cfg = make_config(schedule=ScheduleConfig(misfire_grace_minutes=0))
    clock = Clock(cfg, on_rescan=noop, on_reap=noop, on_window_change=noop,
                  timezone="UTC")
    clocks.append(clock)
    clock.scheduler.start(paused=True)
    jobs = clock.scheduler.get_jobs()
    assert {j.id for j in jobs} == {"rescan", "reap"}
    assert all(j.misfire_grace_time == 1 for j in jobs)


def test_shutdown_is_idempotent_and_local_timezone_is_a_tzinfo():
    clock = Clock(make_config(), on_rescan=noop, on_reap=noop, on_window_change=noop)
    clock.start()
    clock.shutdown()
    clock.shutdown()
    assert not clock.scheduler.running
    assert datetime(2024, 1, 1, tzinfo=local_timezone()).utcoffset() is not None


def test_local_timezone_falls_back_to_utc_on_a_bogus_tz(monkeypatch, caplog):
    import tzlocal.unix

    monkeypatch.setenv("TZ", "Nowhere/Bogus")
    monkeypatch.setattr(tzlocal.unix, "_cache_tz", None)  # tzlocal remembers the zone it found first
    with caplog.at_level(logging.WARNING, logger="daemon.scheduler"):
        assert local_timezone() == timezone.utc
    assert "using UTC" in caplog.text


def test_local_timezone_logs_tzlocal_warnings_instead_of_raising(monkeypatch, caplog):
    import warnings

    import tzlocal

    def grumbling():
        warnings.warn("Timezone offset does not match system offset", stacklevel=2)
        return ZoneInfo("Europe/Berlin")

    monkeypatch.setattr(tzlocal, "get_localzone", grumbling)
    with caplog.at_level(logging.WARNING, logger="daemon.scheduler"):
        assert local_timezone() == ZoneInfo("Europe/Berlin")
    assert "offset does not match" in caplog.text

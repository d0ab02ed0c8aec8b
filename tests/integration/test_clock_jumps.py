"""Sleep and clock jumps: the service's leases and timers on injected clocks, on a real queue.

A Mac that sleeps overnight with a job running wakes with its wall clock hours ahead and its
monotonic clock barely moved (macOS's stops during sleep); a clock set back or forward an hour
jumps the wall clock alone. Neither may hand a running job to a second worker."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from daemon import config as config_mod
from daemon.jobs import State
from daemon.queue import Queue
from daemon.service import Service

LEASE = 120.0
HOUR = 3600.0


@dataclass
class Clocks:
    wall: float = 1_000_000.0
    mono: float = 50.0


@dataclass
class Handle:
    """What the service knows of a worker process: its lease owner, whether it lives, its jobs."""

    owner: str
    jobs: list[int] = field(default_factory=list)
    alive: bool = True
    busy: bool = True

    def active_jobs(self) -> list[int]:
        return list(self.jobs)


@pytest.fixture
def service(tmp_path):
    for d in ("inbox", "outbox", "archive", "failed"):
        (tmp_path / d).mkdir()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        f"database: sqlite:///{tmp_path}/state/queue.db\n"
        f"folders: [{{inbox: {tmp_path}/inbox, output: {tmp_path}/outbox, archive: {tmp_path}/archive, failed: {tmp_path}/failed}}]\n"
        f"jobs: {{lease_seconds: {LEASE}}}\nthermal: {{source: none}}\npower: {{prevent_sleep: false}}\nnotify: false\n"
    )
    clocks = Clocks()
    svc = Service(config_mod.load(cfg_path, check_permissions=False), clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    svc.queue = Queue(svc.config.database)
    svc.clocks = clocks
    yield svc
    svc.queue.close()


def running_job(svc: Service, owner: str, name: str = "long.m4a") -> int:
    q = svc.queue
    q.enqueue(folder=0, path=f"/in/{name}", rel=name, size=1, mtime=1.0, content_hash=name, now=svc.clocks.wall)
    job = q.claim(owner, now=svc.clocks.wall, lease_seconds=LEASE)
    assert job is not None
    return job.id


@pytest.mark.parametrize("jump", [8 * HOUR, HOUR, -HOUR], ids=["slept overnight", "an hour forward", "an hour back"])
def test_a_running_job_is_never_handed_to_a_second_worker_when_the_wall_clock_jumps(service, jump):
    w0 = Handle("host:101:w0")
    service.workers = [w0]
    service._heartbeat()
    job_id = running_job(service, w0.owner)  # just claimed: the worker has not told the daemon yet

    service.clocks.wall += jump  # the monotonic clock moves a second only
    service.clocks.mono += 1.0
    service._heartbeat()  # not due yet on the monotonic clock: nothing is renewed or reaped
    service.clocks.mono += LEASE / 4  # due: the lease has expired by the wall clock, and is still ours
    service._heartbeat()
    w0.jobs = [job_id]
    service.clocks.wall += 2 * LEASE
    service.clocks.mono += LEASE / 4
    service._heartbeat()

    job = service.queue.get(job_id)
    assert job.state is State.RUNNING and job.lease_owner == w0.owner and job.strikes == 0
    assert service.queue.claim("host:102:w1", now=service.clocks.wall, lease_seconds=LEASE) is None  # nothing twice


def test_the_jobs_of_an_owner_no_worker_of_ours_vouches_for_go_back_once_their_lease_expires(service):
    w0 = Handle("host:101:w0")
    service.workers = [w0]
    ours = running_job(service, w0.owner, "ours.m4a")
    w0.jobs = [ours]
    stale = running_job(service, "host:999:w9", "stale.m4a")  # a worker that is gone, or another machine's
    service.clocks.wall += LEASE / 2
    service._heartbeat()
    assert service.queue.get(stale).state is State.RUNNING  # its lease still runs
    service.clocks.wall += LEASE
    service.clocks.mono += LEASE / 4
    service._heartbeat()
    assert service.queue.get(stale).state is State.QUEUED
    assert service.queue.get(ours).state is State.RUNNING


def test_a_worker_that_died_no_longer_holds_its_lease_by_being_ours(service):
    w0 = Handle("host:101:w0")
    service.workers = [w0]
    job_id = running_job(service, w0.owner)
    w0.alive, w0.jobs = False, []
    service.clocks.wall += 2 * LEASE
    service._heartbeat()
    assert service.queue.get(job_id).state is State.QUEUED


def test_the_rescan_timer_runs_on_the_monotonic_clock(service):
    scans: list[float] = []
    service.rescan = lambda: scans.append(service.clocks.mono)
    minutes = service.config.watch.rescan_minutes
    service._rescan_due = False
    service._last_rescan = service.clocks.mono
    service.clocks.wall -= HOUR  # set back an hour: the wall-clock timer would wait an hour more
    service.clocks.mono += minutes * 60
    service._tick()
    assert scans == [service.clocks.mono]

"""The service's decisions, in milliseconds: which worker may claim, which one starts, what it
is told to pause for, and when a drain stops with work left. The governor and the queue are
real (probes and clock injected); the worker processes are stand-ins that record what the
service asked of them."""

from __future__ import annotations

from datetime import datetime

import pytest

from daemon.faults import inbox_fault, model_fault
from daemon.governor import Governor
from daemon.jobs import Permission
from daemon.probes import FixedProbe, ThermalLevel
from daemon.queue import Queue
from daemon.service import Service, read_status
from tests.fakes import enqueue, make_config, tone

GIB = 1024**3
NOON = datetime(2024, 1, 1, 12, 0)  # a Monday
NIGHT = datetime(2024, 1, 1, 23, 0)


class Handle:
    """Stands in for a worker process: busy or not, started or not, and the permissions sent."""

    def __init__(self, name: str, busy: bool = False, alive: bool = False) -> None:
        self.name = name
        self.busy = busy
        self.alive = alive
        self.starts = 0
        self.allowed: list[Permission] = []
        self.engine = None  # what a worker says of its loaded engine (procs.engine_status)

    def start(self) -> None:
        self.starts += 1
        self.alive = True

    def allow(self, perm: Permission) -> None:
        self.allowed.append(perm)


@pytest.fixture
def make(tmp_path):
    queues: list[Queue] = []

    def build(*, workers=1, thermal=ThermalLevel.NOMINAL, now=NIGHT, memory=64 * GIB, extra="", folders=""):
        cfg = make_config(tmp_path, folders=folders,
                          extra=f"schedule: {{windows: ['22:00-07:00'], max_concurrency: {workers}}}\n" + extra)
        governor = Governor(cfg, thermal_probe=FixedProbe(thermal, "test"), memory_probe=lambda: memory,
                            now=lambda: now, clock=lambda: 0.0, thermal_ttl_seconds=0)
        service = Service(cfg, governor=governor)
        service.queue = Queue(cfg.database)
        queues.append(service.queue)
        service.workers = [Handle(f"w{i}") for i in range(workers)]
        return service, cfg

    yield build
    for q in queues:
        q.close()


def test_an_idle_worker_starts_only_when_a_job_may_be_claimed(make):
    service, cfg = make()
    worker = service.workers[0]
    service._decide()
    assert worker.starts == 0 and worker.allowed == []  # nothing queued: no process, no model

    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0))
    service._decide()
    assert worker.starts == 1
    assert worker.allowed[-1] == Permission(claim=True, folders=None, pause=False, reason=None)
    assert read_status(cfg)["reason"] is None


def test_a_busy_worker_may_still_take_jobs_into_its_batch_at_one_job_at_a_time(make):
    service, cfg = make(workers=1)
    worker = service.workers[0]
    worker.busy = worker.alive = True
    service._decide()
    # its own slot is allowed: more files join its batch, which adds no model and no concurrency
    assert worker.allowed[-1].claim is True and worker.starts == 0


def test_with_two_slots_and_one_worker_busy_the_other_may_claim_too(make):
    service, cfg = make(workers=2)
    busy, idle = service.workers
    busy.busy = busy.alive = True
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0))
    service._decide()
    assert busy.allowed[-1].claim and idle.allowed[-1].claim and idle.starts == 1


def test_heat_pauses_running_work_and_starts_nothing(make):
    service, cfg = make(thermal=ThermalLevel.SERIOUS)
    busy = service.workers[0]
    busy.busy = busy.alive = True
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0))
    service._decide()
    perm = busy.allowed[-1]
    assert perm.pause is True and perm.claim is False and perm.reason.startswith("paused: thermal serious")
    assert read_status(cfg)["reason"].startswith("paused: thermal serious")


def test_too_little_memory_starts_nothing_and_says_why(make):
    service, cfg = make(memory=1 * GIB)  # under the 2 GB floor
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0))
    service._decide()
    assert service.workers[0].starts == 0
    assert read_status(cfg)["reason"].startswith("waiting for memory")


def test_outside_the_window_only_an_immediate_folder_is_worked_on(make, tmp_path):
    rush = tmp_path / "rush"
    rush.mkdir()
    service, cfg = make(now=NOON, folders=f"  - {{inbox: {rush}, output: {tmp_path}/outbox/rush, archive: {tmp_path}/archive/rush, "
                                          f"failed: {tmp_path}/failed/rush, immediate: true}}\n")
    worker = service.workers[0]
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "later.wav", 2.0), folder=0)
    service._decide()
    assert worker.starts == 0  # only the night inbox has work: wait for its window
    assert "22:00" in read_status(cfg)["reason"]

    enqueue(service.queue, cfg, tone(rush / "now.wav", 2.0), folder=1)
    service._decide()
    assert worker.starts == 1
    assert worker.allowed[-1].claim is True and worker.allowed[-1].folders == (1,)


def test_a_drain_stops_with_work_left_only_when_the_window_is_shut(make):
    service, cfg = make(now=NOON)
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0))
    service._decide()
    assert service._drained() is True  # nothing may start before 22:00: stop, the file waits

    night, cfg = make(now=NIGHT)  # the same folders and queue, at night
    night._decide()
    assert night._drained() is False  # claimable now: keep going until it is done


def test_an_inbox_whose_disk_is_gone_holds_only_its_own_files(make, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    service, cfg = make(folders=f"  - {{inbox: {other}, output: {tmp_path}/outbox/o, archive: {tmp_path}/archive/o, "
                                f"failed: {tmp_path}/failed/o}}\n")
    worker = service.workers[0]
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0), folder=0)
    service.faults.add(inbox_fault(0, cfg.folders[0].inbox))
    service._decide()
    assert worker.starts == 0  # the only work waits on the missing disk
    assert "is not there" in read_status(cfg)["reason"]

    enqueue(service.queue, cfg, tone(other / "b.wav", 2.0), folder=1)
    service._decide()
    assert worker.starts == 1 and worker.allowed[-1].folders == (1,)


def test_a_fault_of_the_machine_pauses_everything_and_says_why(make):
    service, cfg = make()
    busy = service.workers[0]
    busy.busy = busy.alive = True
    service.faults.add(model_fault("base", OSError("no such file")))
    service._decide()
    perm = busy.allowed[-1]
    assert perm.pause is True and perm.claim is False and "could not be loaded" in perm.reason


def test_status_names_the_engine_and_why_and_the_governor_counts_its_gpu_memory(make):
    """What a worker says of its engine reaches `whisperd status`; the memory its engines hold on
    a GPU, which no RSS shows, is what the governor's estimate counts for the model."""
    service, cfg = make(workers=2)
    enqueue(service.queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 2.0))
    service._decide()
    assert read_status(cfg)["engine"] is None  # no model loaded yet
    said = {"name": "mlx-whisper", "model": "tiny.en", "device": "mps", "precision": "fp16", "note": None,
            "gpu_memory_bytes": 4 * GIB}
    service.workers[0].engine = said
    service.workers[1].engine = {**said, "gpu_memory_bytes": 5 * GIB}
    service._decide()
    assert read_status(cfg)["engine"] == {**said, "gpu_memory_bytes": 9 * GIB}
    assert service.governor.model_bytes == 9 * GIB > service.governor.estimate.model_bytes
    fallback = "the model on mps heard a known clip as \"!\" instead of \"the two stray kittens\", so it runs on the CPU"
    service.workers[0].engine = {**said, "device": "cpu", "precision": "fp32", "note": fallback, "gpu_memory_bytes": None}
    service.workers[1].engine = None
    service._decide()
    assert read_status(cfg)["engine"]["note"] == fallback
    assert service.governor.model_bytes == service.governor.estimate.model_bytes

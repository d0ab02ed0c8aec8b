import os
import stat
import threading

import pytest

from daemon.jobs import Cause, Checkpoint, Segment, State
from daemon.queue import Queue


@pytest.fixture
def queue(tmp_path):
    q = Queue(f"sqlite:///{tmp_path}/state/queue.db")
    yield q
    q.close()


def add(q, name, h="h", now=1.0, folder=0):
    return q.enqueue(folder=folder, path=f"/in/{name}", rel=name, size=10, mtime=1.0, content_hash=h + name, now=now)


def test_database_is_created_private_and_in_wal_mode(tmp_path, queue):
    db = tmp_path / "state" / "queue.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with queue.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_a_file_is_queued_once(queue):
    assert add(queue, "a.wav") is not None
    assert add(queue, "a.wav") is None
    assert queue.counts()["queued"] == 1


def test_claim_is_fifo_and_exclusive(queue):
    for i in range(3):
        add(queue, f"{i}.wav", now=float(i))
    got = [queue.claim("w", now=10, lease_seconds=60) for _ in range(4)]
    assert [j.rel for j in got[:3]] == ["0.wav", "1.wav", "2.wav"]
    assert got[3] is None
    assert all(j.state is State.RUNNING and j.lease_owner == "w" for j in got[:3])


def test_concurrent_claims_never_share_a_job(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    setup = Queue(url)
    for i in range(60):
        add(setup, f"{i}.wav", now=float(i))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name):
        q = Queue(url)  # its own engine and connections, as another process would have
        while (job := q.claim(name, now=100, lease_seconds=60)) is not None:
            with lock:
                claimed.append(job.id)
        q.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 61))
    setup.close()


def test_checkpoint_finish_and_lease_ownership(queue):
    add(queue, "a.wav")
    job = queue.claim("w1", now=0, lease_seconds=60)
    cp = Checkpoint(offset=30.0, segments=(Segment(0.5, 4.0, "hello"),), language="en", chunks_done=1)
    assert queue.save_checkpoint(job.id, "w1", cp, duration=60.0, now=1, lease_seconds=60)
    assert not queue.save_checkpoint(job.id, "intruder", cp, duration=60.0, now=1, lease_seconds=60)
    got = queue.get(job.id)
    assert got.checkpoint == cp and got.progress == pytest.approx(0.5)
    assert queue.finish(job.id, "w1", State.DONE, now=2)
    assert queue.get(job.id).state is State.DONE and queue.get(job.id).progress == 1.0


def test_expired_leases_go_back_to_the_queue_with_no_strike(queue):
    add(queue, "stuck.wav")
    add(queue, "moving.wav")
    stuck = queue.claim("dead", now=0, lease_seconds=10)
    moving = queue.claim("dead", now=0, lease_seconds=10)
    queue.save_checkpoint(moving.id, "dead", Checkpoint(offset=30.0), duration=60, now=1, lease_seconds=10)
    assert queue.reap(now=5) == []  # not expired yet
    reaped = {j.rel: j for j in queue.reap(now=100)}
    assert set(reaped) == {"stuck.wav", "moving.wav"}
    assert all(j.strikes == 0 and j.suspect_until is None for j in reaped.values())
    assert [i.cause for i in reaped["stuck.wav"].interruptions] == [Cause.LEASE_EXPIRED]
    assert reaped["moving.wav"].interruptions[0].offset == 30.0
    again = queue.claim("new", now=101, lease_seconds=10)
    assert again.attempts == 2 and again.checkpoint.offset in (0.0, 30.0)


def test_leases_of_a_previous_daemon_go_back_at_start_up_with_no_strike(queue):
    for name in ("a.wav", "b.wav", "c.wav"):
        add(queue, name)
    for _ in range(3):
        for _ in range(3):
            queue.claim("host:1:w0", now=0, lease_seconds=60)
        assert queue.claim("host:2:w0", now=0, lease_seconds=60) is None
        back = queue.recover(now=10, owners_alive=["host:3:w0"])
        assert len(back) == 3
    jobs = queue.all()
    assert all(j.state is State.QUEUED and j.strikes == 0 and j.suspect_until is None for j in jobs)
    assert all([i.cause for i in j.interruptions] == [Cause.STOPPED] * 3 for j in jobs)
    # a live owner's jobs stay with it
    held = queue.claim("host:3:w0", now=20, lease_seconds=60)
    assert queue.recover(now=21, owners_alive=["host:3:w0"]) == []
    assert queue.get(held.id).state is State.RUNNING


def test_a_worker_that_dies_with_one_file_suspects_it_and_strikes_it_only_where_it_died_again(queue):
    add(queue, "a.wav")
    job = queue.claim("w", now=0, lease_seconds=60)
    back = queue.abandoned("w", now=1, died=True, detail="killed by signal SIGSEGV", reached={job.id: (0.0, 24.0)})
    # a death with a batch in the model places the crash no closer than the batch: no strike yet
    assert [(j.strikes, j.suspect_until) for j in back] == [(0, 24.0)]
    (crash,) = back[0].interruptions
    assert (crash.cause, crash.reached, crash.detail, crash.strike) == (Cause.WORKER_DIED, (0.0, 24.0), "killed by signal SIGSEGV", False)
    # alone, a chunk at a time, it dies again in its first chunk: a strike
    job = queue.claim("w1", now=2, lease_seconds=60)
    (back,) = queue.abandoned("w1", now=3, died=True, detail="killed by signal SIGSEGV", reached={job.id: (0.0, 8.0)})
    assert (back.strikes, back.suspect_until, back.interruptions[-1].strike) == (1, 24.0, True)
    # claimed again, it gets past its first chunk, then its worker dies further on: no strike, and
    # the strike before counts no more (it got further)
    job = queue.claim("w2", now=4, lease_seconds=60)
    queue.save_checkpoint(job.id, "w2", Checkpoint(offset=8.0, chunks_done=1), duration=600, now=5, lease_seconds=60)
    assert queue.get(job.id).strikes == 0 and queue.get(job.id).suspect_until == 24.0
    (back,) = queue.abandoned("w2", now=6, died=True, reached={job.id: (8.0, 16.0)})
    assert back.strikes == 0 and back.suspect_until == 24.0 and not back.interruptions[-1].strike
    # past the stretch: no longer a suspect
    job = queue.claim("w3", now=7, lease_seconds=60)
    queue.save_checkpoint(job.id, "w3", Checkpoint(offset=24.0, chunks_done=3), duration=600, now=8, lease_seconds=60)
    assert queue.get(job.id).suspect_until is None
    # a worker that ended of itself (exit code 0) still holding a job: nothing against the file
    (back,) = queue.abandoned("w3", now=9, died=False)
    assert back.strikes == 0 and back.interruptions[-1].cause is Cause.WORKER_EXITED and back.suspect_until is None


def test_a_worker_that_dies_with_several_files_strikes_none_and_each_then_runs_alone(queue):
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        add(queue, name)
    a, b, c = (queue.claim("w", now=0, lease_seconds=60) for _ in range(3))
    back = queue.abandoned("w", now=1, died=True, reached={a.id: (0.0, 8.0), b.id: (0.0, 12.0)})
    assert {j.rel: (j.strikes, j.suspect_until) for j in back} == {"a.wav": (0, 8.0), "b.wav": (0, 12.0), "c.wav": (0, 0.001)}
    # a suspect is taken alone, and nothing beside it
    first = queue.claim("w2", now=2, lease_seconds=60)
    assert first.rel == "a.wav" and queue.claim("w2", now=2, lease_seconds=60) is None
    # while suspects wait, a worker that holds a job takes no more; one that holds none takes one
    other = queue.claim("w3", now=2, lease_seconds=60)
    assert other.rel == "b.wav" and queue.claim("w3", now=2, lease_seconds=60) is None
    # past where the worker was, a file is no longer suspected, and its worker takes more again
    assert queue.save_checkpoint(first.id, "w2", Checkpoint(offset=8.0), duration=20, now=3, lease_seconds=60)
    assert queue.get(first.id).suspect_until is None
    assert queue.claim("w2", now=3, lease_seconds=60) is None  # c.wav, a suspect, waits for a worker holding nothing
    queue.finish(first.id, "w2", State.DONE, now=4)
    assert queue.claim("w2", now=4, lease_seconds=60).rel == "c.wav"
    queue.finish(other.id, "w3", State.DONE, now=4)
    assert queue.claim("w3", now=4, lease_seconds=60).rel == "d.wav"  # no suspect waits: batching as before
    add(queue, "e.wav")
    assert queue.claim("w3", now=4, lease_seconds=60).rel == "e.wav"


def test_a_database_from_the_previous_version_gains_the_new_columns(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    columns = _OLD_COLUMNS
    con.execute(f"CREATE TABLE jobs ({', '.join(columns)})")
    con.execute(
        "INSERT INTO jobs (folder, path, rel, state, size, mtime, attempts, strikes, progress, created_at, not_before, \"offset\", claim_offset)"
        " VALUES (0, '/in/a.wav', 'a.wav', 'running', 10, 1.0, 1, 0, 0.0, 1.0, 0.0, 0.0, 0.0)"
    )
    con.commit()
    con.close()
    q = Queue(f"sqlite:///{db}")
    try:
        (job,) = q.all()
        assert job.suspect_until is None and job.interruptions == ()
        (back,) = q.recover(now=5)
        assert back.interruptions[0].cause is Cause.STOPPED
        again = Queue(f"sqlite:///{db}")  # opened again: nothing more to add
        assert again.all() == q.all()
        again.close()
    finally:
        q.close()


# the jobs table as the previous version made it
_OLD_COLUMNS = [
    "id INTEGER NOT NULL PRIMARY KEY", "folder INTEGER NOT NULL", "path TEXT NOT NULL", "rel TEXT NOT NULL",
    "state VARCHAR(16) NOT NULL", "content_hash VARCHAR(64)", "size INTEGER NOT NULL", "mtime FLOAT NOT NULL",
    "attempts INTEGER NOT NULL", "strikes INTEGER NOT NULL", "progress FLOAT NOT NULL", "duration FLOAT", "error TEXT",
    "model TEXT", "device VARCHAR(16)", "precision VARCHAR(16)", "created_at FLOAT NOT NULL", "started_at FLOAT",
    "finished_at FLOAT", "not_before FLOAT NOT NULL", "lease_owner TEXT", "lease_expires FLOAT", '"offset" FLOAT NOT NULL',
    "claim_offset FLOAT NOT NULL", "checkpoint TEXT", "outputs TEXT", "destination TEXT", "duplicate_of INTEGER",
]


def test_retry_later_backs_off(queue):
    add(queue, "a.wav")
    job = queue.claim("w", now=0, lease_seconds=60)
    queue.retry_later(job.id, "w", error="disk full", not_before=100)
    assert queue.claim("w", now=50, lease_seconds=60) is None
    assert queue.claim("w", now=100, lease_seconds=60).id == job.id


def test_changed_queued_file_is_evaluated_afresh(queue):
    add(queue, "a.wav", h="1")
    queue.enqueue(folder=0, path="/in/a.wav", rel="a.wav", size=99, mtime=2.0, content_hash="2a.wav", now=2)
    (job,) = [j for j in queue.all() if j.path == "/in/a.wav"]  # still one job for the path
    assert job.size == 99 and job.content_hash == "2a.wav"


def test_done_with_hash_finds_the_first_transcription(queue):
    first = add(queue, "a.wav", h="same")
    j = queue.claim("w", now=0, lease_seconds=60)
    queue.finish(j.id, "w", State.DONE, now=1)
    second = queue.enqueue(folder=0, path="/in/b.wav", rel="b.wav", size=10, mtime=1, content_hash="samea.wav", now=2)
    assert queue.done_with_hash("samea.wav", exclude_id=second.id).id == first.id


def test_a_corrupt_database_is_moved_aside_not_deleted(tmp_path):
    db = tmp_path / "queue.db"
    db.write_bytes(b"this is not a database" * 200)
    q = Queue(f"sqlite:///{db}")
    assert q.counts()["queued"] == 0
    q.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("queue.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")


def test_copies_of_one_recording_are_claimed_one_at_a_time(queue):
    queue.enqueue(folder=0, path="/in/a.wav", rel="a.wav", size=1, mtime=1, content_hash="same", now=1)
    queue.enqueue(folder=0, path="/in/b.wav", rel="b.wav", size=1, mtime=1, content_hash="same", now=2)
    queue.enqueue(folder=0, path="/in/c.wav", rel="c.wav", size=1, mtime=1, content_hash="other", now=3)
    first = queue.claim("w", now=10, lease_seconds=60)
    assert first.rel == "a.wav"
    assert queue.claim("w", now=10, lease_seconds=60).rel == "c.wav"  # b waits for a
    assert queue.claim("w", now=10, lease_seconds=60) is None
    queue.finish(first.id, "w", State.DONE, now=11)
    assert queue.claim("w", now=12, lease_seconds=60).rel == "b.wav"


def test_copies_wait_only_in_folders_that_skip_them(queue):
    """A folder that transcribes copies again has no reason to hold them back."""
    queue.enqueue(folder=0, path="/in/a.wav", rel="a.wav", size=1, mtime=1, content_hash="same", now=1)
    queue.enqueue(folder=1, path="/other/b.wav", rel="b.wav", size=1, mtime=1, content_hash="same", now=2)
    queue.enqueue(folder=0, path="/in/c.wav", rel="c.wav", size=1, mtime=1, content_hash="same", now=3)
    first = queue.claim("w", now=10, lease_seconds=60, copies_wait=[0])
    assert first.rel == "a.wav"
    assert queue.claim("w", now=10, lease_seconds=60, copies_wait=[0]).rel == "b.wav"  # folder 1 transcribes copies
    assert queue.claim("w", now=10, lease_seconds=60, copies_wait=[0]) is None  # c, in folder 0, waits for a
    assert queue.claim("w", now=10, lease_seconds=60, copies_wait=[]).rel == "c.wav"


def test_a_worker_killed_from_outside_leaves_nothing_against_its_files(queue):
    add(queue, "a.wav")
    job = queue.claim("w", now=0, lease_seconds=60)
    (back,) = queue.abandoned("w", now=1, died=True, killed=True, detail="killed by signal SIGKILL", reached={job.id: (0.0, 24.0)})
    assert (back.strikes, back.suspect_until) == (0, None)
    assert [(i.cause, i.strike) for i in back.interruptions] == [(Cause.KILLED, False)]

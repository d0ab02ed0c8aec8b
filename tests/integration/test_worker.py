"""The worker in-process, on a real queue, real files and the real model: when files are
opened (after the model's load; the next batch's during a batch), and what a model that cannot
load does to the jobs."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from daemon import config as config_mod
from daemon import files
from daemon.engines.loader import load_engine
from daemon.errors import ModelError
from daemon.jobs import Permission, State
from daemon.queue import Queue
from daemon.worker import Worker
from tests import speech

CLIPS = ["ls_1988-24833-0000.flac", "ls_1988-24833-0001.flac", "ls_3752-4944-0000.flac"]


@pytest.fixture
def setup(tmp_path, model_cache):
    cfg, queue = _queued(tmp_path, model_cache, CLIPS, batch_size=8)
    yield cfg, queue, tmp_path, model_cache
    queue.close()


def _queued(tmp_path, model_cache, clips, *, batch_size):
    """A configuration for ``tmp_path`` and a queue holding ``clips``, copied into its inbox."""
    for d in ("inbox", "outbox", "archive", "failed", "state"):
        (tmp_path / d).mkdir()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        f"database: sqlite:///{tmp_path}/state/queue.db\n"
        f"model: {{name: tiny.en, cache_dir: {model_cache}, batch_size: {batch_size}}}\n"
        f"folders: [{{inbox: {tmp_path}/inbox, output: {tmp_path}/outbox, archive: {tmp_path}/archive, failed: {tmp_path}/failed}}]\n"
        "jobs: {retry_base_seconds: 60, max_attempts: 3}\n"
        "thermal: {source: none}\npower: {prevent_sleep: false}\nnotify: false\n"
    )
    cfg = config_mod.load(cfg_path, check_permissions=False)
    queue = Queue(cfg.database)
    for name in clips:
        dest = tmp_path / "inbox" / name
        shutil.copy(speech.DATA / name, dest)
        st = dest.stat()
        queue.enqueue(folder=0, path=str(dest), rel=name, size=st.st_size, mtime=st.st_mtime,
                      content_hash=files.content_hash(dest), now=time.time())
    return cfg, queue


def worker_for(cfg, queue, factory) -> Worker:
    return Worker("host:1:w0", cfg, queue, engine_factory=factory, permission=lambda _w: Permission(claim=True),
                  stop=threading.Event(), wake=threading.Event())


def jobs_of(queue: Queue) -> list:
    """The jobs of ``setup``'s clips, in the order they were queued."""
    return [queue.get(i) for i in range(1, len(CLIPS) + 1)]


def drain(worker: Worker, queue: Queue, limit: int = 50) -> None:
    for _ in range(limit):
        if not worker.step() and queue.pending() == 0:
            return
    raise AssertionError("the worker did not finish its jobs")


def test_no_file_is_claimed_or_opened_until_the_model_has_loaded(setup):
    cfg, queue, root, cache = setup
    release = threading.Event()

    def factory():
        # the load waits (up to a minute) for the test's signal, so the worker's steps meanwhile
        # are seen while it is certainly still loading
        release.wait(60)
        return load_engine(cfg.model, Path(cache))

    worker = worker_for(cfg, queue, factory)
    worker.warm_up()
    try:
        for _ in range(3):
            assert worker.step() is True  # busy loading: the loop comes straight back
            assert not worker.runs
            jobs = jobs_of(queue)
            assert all(j is not None and j.state is State.QUEUED and not j.lease_owner for j in jobs), [(j.state, j.lease_owner) for j in jobs]
    finally:
        release.set()
    drain(worker, queue)
    assert queue.counts()[State.DONE.value] == len(CLIPS)
    for name in CLIPS:
        stem = Path(name).stem
        text = (root / "outbox" / f"{stem}.txt").read_text()
        assert len(text.split()) > 5, text
        assert (root / "archive" / name).exists()
    jobs = jobs_of(queue)
    assert all(j is not None and j.model == "tiny.en" and j.device == "cpu" and j.duration for j in jobs)


class _Watched:
    """The real engine; each ``prepare`` (a chunk joining the batch) notes how many jobs the
    worker has open at that moment."""

    def __init__(self, engine, worker_of):
        self._engine, self._worker_of, self.open_at_prepare = engine, worker_of, []

    def prepare(self, chunk, language):
        self.open_at_prepare.append(len(self._worker_of().runs))
        return self._engine.prepare(chunk, language)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_with_the_model_loaded_the_waiting_files_are_opened_together(setup):
    """Files waiting for a warm worker are opened at once, so that each one's read-ahead
    decodes and cuts it while the chunks before it are encoded, not one file after another."""
    cfg, queue, root, cache = setup
    holder: list[Worker] = []
    watched: list[_Watched] = []

    def factory():
        watched.append(_Watched(load_engine(cfg.model, Path(cache)), lambda: holder[0]))
        return watched[0]

    worker = worker_for(cfg, queue, factory)
    holder.append(worker)
    worker._engine()  # loaded before any job is claimed, as in a daemon that has worked before
    drain(worker, queue)
    assert watched[0].open_at_prepare[0] == len(CLIPS), watched[0].open_at_prepare
    assert queue.counts()[State.DONE.value] == len(CLIPS)
    for name in CLIPS:
        assert len((root / "outbox" / f"{Path(name).stem}.txt").read_text().split()) > 5


class _Batches:
    """The real engine; each ``transcribe`` (a batch) notes the audio of the jobs the worker has
    open and not yet taken whole, and how many jobs are still waiting in the queue."""

    def __init__(self, engine, worker_of, queue):
        self._engine, self._worker_of, self._queue, self.seen = engine, worker_of, queue, []

    def transcribe(self, chunks, **kw):
        waiting = [r for r in self._worker_of().runs if not r.exhausted]
        self.seen.append((sum(r.duration for r in waiting), self._queue.claimable(time.time())))
        return self._engine.transcribe(chunks, **kw)

    def __getattr__(self, name):
        return getattr(self._engine, name)


# 7.9, 10.5, 11.7, 13.3, 4.8 and 4.9 s. With batch_size 1 (a 30 s window's worth), the first batch
# holds the first two; the files opened before it hold 30 s of audio, the two in it 18.4 s of that.
NEXT_CLIPS = ["ls_1988-24833-0001.flac", "ls_2412-153948-0001.flac", "ls_2412-153948-0000.flac",
              "ls_1272-141231-0002.flac", "ls_1221-135766-0002.wav", "ls_61-70968-0000.flac"]


def test_while_a_batch_is_transcribed_the_next_batchs_files_are_open(tmp_path, model_cache):
    """Once a batch is taken, files are opened again up to a batch's worth of audio not yet
    taken, so that their read-ahead runs while the batch is transcribed, not after it."""
    cfg, queue = _queued(tmp_path, model_cache, NEXT_CLIPS, batch_size=1)
    holder: list[Worker] = []
    watched: list[_Batches] = []

    def factory():
        watched.append(_Batches(load_engine(cfg.model, Path(model_cache)), lambda: holder[0], queue))
        return watched[0]

    try:
        worker = worker_for(cfg, queue, factory)
        holder.append(worker)
        worker._engine()
        drain(worker, queue)
        assert len(watched[0].seen) > 2, watched[0].seen  # more than one batch, so there was a next one to open
        for audio_s, queued in watched[0].seen:
            assert audio_s >= 30 or queued == 0, watched[0].seen
        assert queue.counts()[State.DONE.value] == len(NEXT_CLIPS)
    finally:
        queue.close()


@pytest.mark.parametrize("at_start", [True, False], ids=["loading from the worker's start", "loading at the first job"])
def test_a_model_that_cannot_load_holds_the_worker_without_touching_a_job_and_resume_goes_on(setup, at_start):
    cfg, queue, root, cache = setup
    calls: list[int] = []
    faults: list = []

    def broken():
        calls.append(1)
        raise ModelError("model file '/nowhere/small.pt' does not exist")

    worker = Worker("host:1:w0", cfg, queue, engine_factory=broken, permission=lambda _w: Permission(claim=True),
                    stop=threading.Event(), wake=threading.Event(), on_fault=faults.append)
    if at_start:
        worker.warm_up()  # as a worker process starts
    for _ in range(20):  # a step waits at most LOAD_WAIT for a load under way
        worker.step()
        if faults:
            break
    for _ in range(3):
        assert worker.step() is False  # held: nothing is claimed, the load is not tried again
    assert len(faults) == 1 and faults[0].key == "model"
    assert "model 'tiny.en' could not be loaded" in faults[0].reason and "whisperd doctor" in faults[0].reason
    assert len(calls) == 1
    jobs = jobs_of(queue)
    assert all(j.state is State.QUEUED and j.strikes == 0 and j.attempts == 0 and not j.error for j in jobs)
    assert sorted(p.name for p in (root / "inbox").iterdir()) == sorted(CLIPS)  # nothing moved, nothing lost
    assert not worker.runs

    worker.engine_factory = lambda: load_engine(cfg.model, cache)  # the configuration was fixed
    worker.resume()
    drain(worker, queue)
    assert all(j.state is State.DONE and j.strikes == 0 for j in jobs_of(queue))
    assert len(faults) == 1

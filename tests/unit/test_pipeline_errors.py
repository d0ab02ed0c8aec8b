"""The pipeline's error paths, on the fake engine: what fails at once and says why beside the
file, what is retried later, and what a crash loop or a model error does to a job."""

from __future__ import annotations

import os

import pytest

from daemon.engines.fake import FakeEngine
from daemon.errors import EmptyFileError, NoAudioStreamError, NotAudioError, SourceGoneError
from daemon.jobs import State
from daemon.queue import Queue
from tests.fakes import drain, enqueue, fake_worker, make_config, tone


@pytest.fixture
def setup(tmp_path):
    cfg = make_config(tmp_path)
    queue = Queue(cfg.database)
    yield cfg, queue
    queue.close()


def failed_reason(cfg, name: str) -> str:
    return (cfg.folders[0].failed / f"{name}.error.txt").read_text()


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("empty.m4a", b"", EmptyFileError),
        ("notes.wav", b"these are my shopping notes, not audio\n" * 20, NotAudioError),
        ("notes.txt", b"these are my shopping notes, not audio\n" * 20, NoAudioStreamError),  # FFmpeg reads text
    ],
)
def test_a_file_that_is_not_audio_fails_at_once_with_its_reason_beside_it(setup, name, content, error):
    cfg, queue = setup
    path = cfg.folders[0].inbox / name
    path.write_bytes(content)
    enqueue(queue, cfg, path)
    good = enqueue(queue, cfg, tone(cfg.folders[0].inbox / "good.wav", 3.0))
    outcomes = []
    drain(fake_worker(cfg, queue, on_outcome=outcomes.append), queue)

    job = queue.get(1)
    assert job.state is State.FAILED and job.attempts <= 1
    assert job.error == error().message
    assert error().message in failed_reason(cfg, name)
    assert (cfg.folders[0].failed / name).read_bytes() == content  # moved, untouched
    assert not path.exists()
    assert queue.get(good.id).state is State.DONE  # the rest of the queue goes on
    assert {o.job_id: o.state for o in outcomes} == {1: State.FAILED, good.id: State.DONE}


def test_a_file_deleted_after_it_was_queued_fails_with_nothing_to_move(setup):
    cfg, queue = setup
    path = tone(cfg.folders[0].inbox / "gone.wav", 3.0)
    enqueue(queue, cfg, path)
    path.unlink()
    drain(fake_worker(cfg, queue), queue)
    job = queue.get(1)
    assert job.state is State.FAILED and job.error == SourceGoneError().message
    assert not any(cfg.folders[0].failed.iterdir())


def test_a_link_in_the_inbox_is_never_followed(setup, tmp_path):
    cfg, queue = setup
    target = tone(tmp_path / "elsewhere" / "secret.wav", 3.0)
    link = cfg.folders[0].inbox / "alias.wav"
    os.symlink(target, link)
    st = target.stat()
    queue.enqueue(folder=0, path=str(link), rel="alias.wav", size=st.st_size, mtime=st.st_mtime, content_hash=None, now=0)
    engine = FakeEngine()
    drain(fake_worker(cfg, queue, engine), queue)
    job = queue.get(1)
    assert job.state is State.FAILED and "never follows links" in job.error
    assert engine.batches == []  # nothing of it reached the model
    assert target.exists() and (cfg.folders[0].failed / "alias.wav").is_symlink()


def test_a_model_error_is_retried_later_and_the_file_stays_in_the_inbox(setup):
    cfg, queue = setup
    path = tone(cfg.folders[0].inbox / "a.wav", 3.0)
    enqueue(queue, cfg, path)

    class Failing(FakeEngine):
        def transcribe(self, chunks, *, language, task):
            raise RuntimeError("out of cheese")

    now = 1_000_000.0
    worker = fake_worker(cfg, queue, Failing(), clock=lambda: now)
    for _ in range(20):
        worker.step()
        if queue.get(1).state is not State.RUNNING and queue.get(1).strikes:
            break
    job = queue.get(1)
    assert job.state is State.QUEUED and job.strikes == 1
    assert job.not_before == now + cfg.jobs.retry_base_seconds
    assert "The speech model failed on this file (RuntimeError: out of cheese)" in job.error
    assert "try again at" in job.error
    assert path.exists() and not any(cfg.folders[0].failed.iterdir())
    assert queue.claimable(now) == 0 and queue.claimable(now + cfg.jobs.retry_base_seconds) == 1


def test_after_max_attempts_a_failing_file_gives_up_with_the_reason(setup):
    cfg, queue = setup
    path = tone(cfg.folders[0].inbox / "a.wav", 3.0)
    enqueue(queue, cfg, path)

    class Failing(FakeEngine):
        def transcribe(self, chunks, *, language, task):
            raise RuntimeError("out of cheese")

    clock = [1_000_000.0]
    worker = fake_worker(cfg, queue, Failing(), clock=lambda: clock[0])
    for _ in range(60):
        worker.step()
        job = queue.get(1)
        if job.state is State.FAILED:
            break
        clock[0] += 3600  # past any backoff
    assert job.state is State.FAILED
    assert f"gave up after {cfg.jobs.max_attempts} tries" in job.error
    assert (cfg.folders[0].failed / "a.wav").exists()


def test_a_file_that_killed_its_worker_too_often_fails_without_reaching_the_model(setup):
    cfg, queue = setup
    path = tone(cfg.folders[0].inbox / "poison.wav", 3.0)
    enqueue(queue, cfg, path)
    # a worker died with it, then with it alone each time, in its first chunk
    for _ in range(1 + cfg.jobs.max_attempts):
        job = queue.claim("host:9:dead", now=0.0, lease_seconds=1.0)
        assert job is not None
        queue.abandoned("host:9:dead", now=10.0, died=True, detail="killed by signal SIGSEGV", reached={job.id: (0.0, 3.0)})
    assert queue.get(1).strikes == cfg.jobs.max_attempts
    engine = FakeEngine()
    drain(fake_worker(cfg, queue, engine), queue)
    job = queue.get(1)
    assert job.state is State.FAILED and "worker crashed 3 times on this file (killed by signal SIGSEGV)" in job.error
    assert engine.batches == []
    assert (cfg.folders[0].failed / "poison.wav").exists()

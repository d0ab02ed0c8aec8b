"""The worker's batching, on the fake engine: which chunks share a batch, how batch_size counts
windows, what goes apart, and what a pause or a failed load does to the jobs. Real queue, real
files, real chunking; no model."""

from __future__ import annotations

import json
import threading

import pytest

from daemon.engines.fake import FakeEngine, chunk_text
from daemon.jobs import Permission, State
from daemon.queue import Queue
from tests.fakes import drain, enqueue, fake_worker, make_config, tone, write_wav


@pytest.fixture
def tree(tmp_path):
    def make(**kw):
        cfg = make_config(tmp_path, **kw)
        queue = Queue(cfg.database)
        trees.append(queue)
        return cfg, queue

    trees: list[Queue] = []
    yield make
    for q in trees:
        q.close()


def batch_files(engine: FakeEngine, cfg, queue) -> list[list[str]]:
    """Each batch as the names of the files its chunks came from."""
    names = {str(j.id): j.name for j in queue.all()}
    return [[names[key] for key, _ in batch] for batch in engine.batches]


def test_short_files_share_one_batch_and_each_gets_its_own_transcript(tree):
    cfg, queue = tree()
    for name in ("a.wav", "b.wav", "c.wav"):
        enqueue(queue, cfg, tone(cfg.folders[0].inbox / name, 4.0))
    engine = FakeEngine(batch_size=cfg.model.batch_size)
    outcomes = []
    drain(fake_worker(cfg, queue, engine, on_outcome=outcomes.append), queue)

    assert batch_files(engine, cfg, queue) == [["a.wav", "b.wav", "c.wav"]]
    assert sorted(o.state for o in outcomes) == [State.DONE] * 3
    for stem in ("a", "b", "c"):
        assert (cfg.folders[0].output / f"{stem}.txt").read_text().strip() == chunk_text(f"{stem}.wav", 0)
        assert (cfg.folders[0].archive / f"{stem}.wav").exists()
        doc = json.loads((cfg.folders[0].output / f"{stem}.json").read_text())
        assert [s["text"].strip() for s in doc["segments"]] == [chunk_text(f"{stem}.wav", 0)]
    assert not list(cfg.folders[0].inbox.iterdir())


@pytest.mark.parametrize(("files", "expected"), [(6, [6]), (8, [6, 2])])
def test_batch_size_counts_windows_so_a_batch_holds_three_ten_second_memos_per_window(tree, files, expected):
    cfg, queue = tree(batch_size=2)  # two windows' worth: six memos of 10 s (a third of a window each)
    for i in range(files):
        enqueue(queue, cfg, tone(cfg.folders[0].inbox / f"m{i}.wav", 9.0))  # 10 s with its pauses
    engine = FakeEngine(batch_size=2)
    drain(fake_worker(cfg, queue, engine), queue)
    assert [len(b) for b in engine.batches] == expected
    assert queue.counts()[State.DONE.value] == files


def test_a_long_files_chunks_cut_at_its_pauses_fill_batches_in_order(tree):
    cfg, queue = tree(batch_size=1)  # one window: three chunks of about 8.5 s fit, a fourth does not
    path = write_wav(cfg.folders[0].inbox / "talk.wav", [("tone", 8.0), ("silence", 6.0)] * 4 + [("tone", 8.0)])
    enqueue(queue, cfg, path)
    engine = FakeEngine(batch_size=1)
    drain(fake_worker(cfg, queue, engine), queue)
    assert [[i for _, i in b] for b in engine.batches] == [[0, 1, 2], [3, 4]]
    lines = [line for line in (cfg.folders[0].output / "talk.txt").read_text().split("\n") if line]
    assert lines == [chunk_text("talk.wav", i) for i in range(5)]
    assert queue.get(1).state is State.DONE


def test_files_of_different_tasks_never_share_a_batch(tree, tmp_path):
    root = tmp_path
    cfg, queue = tree(folders=f"  - {{inbox: {root}/inbox2, output: {root}/out2, archive: {root}/arch2, "
                              f"failed: {root}/fail2, language: en, task: translate}}\n")
    (root / "inbox2").mkdir()
    enqueue(queue, cfg, tone(cfg.folders[0].inbox / "said.wav", 4.0), folder=0)
    enqueue(queue, cfg, tone(root / "inbox2" / "translated.wav", 4.0), folder=1)
    enqueue(queue, cfg, tone(cfg.folders[0].inbox / "said2.wav", 4.0), folder=0)
    engine = FakeEngine(batch_size=cfg.model.batch_size)
    drain(fake_worker(cfg, queue, engine), queue)
    batches = sorted(sorted(b) for b in batch_files(engine, cfg, queue))
    assert batches == [["said.wav", "said2.wav"], ["translated.wav"]]
    assert (root / "out2" / "translated.txt").exists()


def test_a_pause_hands_open_jobs_back_with_their_place_kept(tree):
    cfg, queue = tree(batch_size=1)
    path = write_wav(cfg.folders[0].inbox / "long.wav", [("tone", 20.0), ("silence", 6.0), ("tone", 20.0)])
    enqueue(queue, cfg, path)
    pause = threading.Event()
    engine = FakeEngine(batch_size=1)

    def permission(_w):
        return Permission(claim=not pause.is_set(), pause=pause.is_set(), reason="paused: thermal serious")

    worker = fake_worker(cfg, queue, engine, permission=permission)
    while not engine.batches:
        worker.step()
    pause.set()  # after the first chunk's batch
    assert worker.step() is False
    job = queue.get(1)
    assert job.state is State.QUEUED and job.lease_owner is None
    assert job.checkpoint.chunks_done == 1 and job.checkpoint.offset == pytest.approx(20.4)  # the first chunk is kept
    assert path.exists()

    pause.clear()
    drain(worker, queue)
    assert [[i for _, i in b] for b in engine.batches] == [[0], [1]]  # resumed after the first chunk
    assert queue.get(1).state is State.DONE


def test_a_model_that_cannot_load_holds_the_worker_and_claims_nothing(tree):
    cfg, queue = tree()
    enqueue(queue, cfg, tone(cfg.folders[0].inbox / "a.wav", 3.0))
    faults = []

    def broken():
        raise OSError("no such checkpoint")

    worker = fake_worker(cfg, queue, factory=broken, on_fault=faults.append)
    worker.warm_up()
    for _ in range(40):
        worker.step()
        if faults:
            break
    assert len(faults) == 1 and faults[0].key == "model"
    assert worker.step() is False
    job = queue.get(1)
    assert job.state is State.QUEUED and job.attempts == 0 and job.strikes == 0 and not job.error
    assert (cfg.folders[0].inbox / "a.wav").exists()

    engine = FakeEngine()
    worker.engine_factory = lambda: engine
    worker.resume()
    drain(worker, queue)
    assert queue.get(1).state is State.DONE and len(faults) == 1


def test_copies_of_one_recording_are_transcribed_once_and_wait_for_the_first(tree):
    cfg, queue = tree()
    first = tone(cfg.folders[0].inbox / "meeting.wav", 4.0)
    (cfg.folders[0].inbox / "sub").mkdir()
    copy = cfg.folders[0].inbox / "sub" / "meeting copy.wav"
    copy.write_bytes(first.read_bytes())
    enqueue(queue, cfg, first)
    enqueue(queue, cfg, copy)
    engine = FakeEngine(batch_size=cfg.model.batch_size)
    drain(fake_worker(cfg, queue, engine), queue)

    assert batch_files(engine, cfg, queue) == [["meeting.wav"]]  # the copy never reached the model
    assert queue.get(2).state is State.DONE and queue.get(2).duplicate_of == 1
    note = (cfg.folders[0].archive / "sub" / "meeting copy.wav.duplicate.txt").read_text()
    assert "same recording as meeting.wav" in note and str(cfg.folders[0].output / "meeting.txt") in note
    assert (cfg.folders[0].archive / "sub" / "meeting copy.wav").exists()
    assert not (cfg.folders[0].output / "sub").exists()

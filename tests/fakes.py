"""What the unit tests of the worker, the service and the pipeline run on instead of a model:
the package's fake engine, a voice detector that hears any sound as speech, tones written as WAV
files, and a real queue in a temporary SQLite file. Everything else is whisperd's own code, so
these tests run in milliseconds and still go through claims, chunking, checkpoints, outputs and
moves on disk."""

from __future__ import annotations

import threading
import time
import wave
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from daemon import config as config_mod
from daemon import files
from daemon.audio import SAMPLE_RATE, Vad
from daemon.engines.fake import FakeEngine
from daemon.jobs import Job, Permission
from daemon.queue import Queue
from daemon.worker import Worker


class LoudVad:
    """Voice detection by loudness: a 32 ms frame is speech when it is not silent. Chunking
    (``audio.plan_window``) then cuts at the silences a test wrote, as Silero would at pauses."""

    FRAME = Vad.FRAME

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        n = -(-len(audio) // self.FRAME)
        frames = np.zeros(n * self.FRAME, np.float32)
        frames[: len(audio)] = audio
        rms = np.sqrt((frames.reshape(n, self.FRAME) ** 2).mean(axis=1))
        return (rms > 0.01).astype(np.float32)


def write_wav(path: Path, pieces: Sequence[tuple[str, float]]) -> Path:
    """A 16 kHz mono WAV of ``("tone" | "silence", seconds)`` pieces, in order. The tone's pitch
    follows the file's name, so two files are two recordings, not copies of one."""
    pitch = 200 + zlib.crc32(path.name.encode()) % 400
    parts = []
    for kind, seconds in pieces:
        n = int(round(seconds * SAMPLE_RATE))
        if kind == "tone":
            t = np.arange(n) / SAMPLE_RATE
            parts.append(0.3 * np.sin(2 * np.pi * pitch * t))
        else:
            parts.append(np.zeros(n))
    pcm = (np.concatenate(parts) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return path


def tone(path: Path, seconds: float) -> Path:
    """A file whose one stretch of sound makes one chunk (when under 30 s)."""
    return write_wav(path, [("silence", 0.5), ("tone", seconds), ("silence", 0.5)])


def make_config(root: Path, *, batch_size: int = 16, folders: str = "", extra: str = "") -> config_mod.Config:
    """A configuration for a folder tree under ``root``: one inbox (plus ``folders``, YAML list
    items), the fake engine, no thermal probe, and a SQLite queue in ``root/state``."""
    for d in ("inbox", "outbox", "archive", "failed", "state"):
        (root / d).mkdir(exist_ok=True)
    path = root / "config.yaml"
    path.write_text(
        f"database: sqlite:///{root}/state/queue.db\n"
        f"model: {{engine: fake, name: fake, batch_size: {batch_size}}}\n"
        f"folders:\n  - {{inbox: {root}/inbox, output: {root}/outbox, archive: {root}/archive, failed: {root}/failed, language: en}}\n"
        + folders
        + "jobs: {retry_base_seconds: 60, max_attempts: 3}\n"
        "thermal: {source: none}\npower: {prevent_sleep: false}\nnotify: false\n"
        + extra
    )
    return config_mod.load(path, check_permissions=False)


def enqueue(queue: Queue, cfg: config_mod.Config, path: Path, folder: int = 0, now: float | None = None) -> Job:
    """Queue ``path`` as the watcher would once it settled."""
    inbox = cfg.folders[folder].inbox
    st = path.stat()
    job = queue.enqueue(
        folder=folder, path=str(path), rel=str(path.relative_to(inbox)), size=st.st_size, mtime=st.st_mtime,
        content_hash=files.content_hash(path), now=time.time() if now is None else now,
    )
    assert job is not None
    return job


def fake_worker(
    cfg: config_mod.Config,
    queue: Queue,
    engine: FakeEngine | None = None,
    *,
    permission: Callable[[Worker], Permission] = lambda _w: Permission(claim=True),
    factory: Callable[[], FakeEngine] | None = None,
    **kw,
) -> Worker:
    """A worker on the fake engine and the loudness VAD, in this process."""
    engine = engine or FakeEngine(batch_size=cfg.model.batch_size)
    worker = Worker(
        "host:1:w0", cfg, queue, engine_factory=factory or (lambda: engine), permission=permission,
        stop=threading.Event(), wake=threading.Event(), **kw,
    )
    worker.vad = LoudVad()  # type: ignore[assignment]
    return worker


def drain(worker: Worker, queue: Queue, limit: int = 100) -> None:
    """Step the worker until nothing is left for it to do."""
    for _ in range(limit):
        if not worker.step() and not worker.runs and queue.claimable(time.time()) == 0:
            return
    raise AssertionError("the worker did not finish its jobs")

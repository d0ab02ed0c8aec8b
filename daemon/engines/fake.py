"""A stand-in for a speech model, shipped with the package as a test double (as procrastinate
ships its ``InMemoryConnector`` and huey its ``MemoryStorage``): ``model.engine: fake``.

It loads in no time, needs neither torch nor a checkpoint, and says the same thing for the same
chunk every time: one segment per chunk, spanning it, whose text is made of the file's name and
the chunk's index ("lecture, part 3."). Everything around the model (batching, checkpoints,
outputs, the queue, the worker's process) then runs for real in milliseconds, and a test can
predict each transcript exactly.

``crash_on`` is its fault-injection seam: a glob matched against the name of each chunk's file
(``model.fake_crash_on``). A batch holding a chunk of such a file ends the worker's process at
once, as a segfault in a decoder would (``os.abort``: no clean-up, no exception to catch, jobs
left running), so that a test can show what whisperd does with a file that kills its worker.

It is never chosen unless the configuration names it.
"""

from __future__ import annotations

import fnmatch
import os
import resource
import time
from pathlib import PurePath
from typing import Any, Callable, Sequence

from daemon.audio import MAX_CHUNK_SECONDS, Chunk
from daemon.engines.base import ChunkResult, EngineInfo
from daemon.jobs import Segment

MIN_SHARE = 0.25  # the least a chunk counts for against batch_size, as with fitted windows


def _abort() -> None:
    """End this process at once with SIGABRT, leaving no core file behind."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    os.abort()


def chunk_text(source: str, index: int) -> str:
    """What the fake engine says for chunk ``index`` of the file ``source``."""
    stem = PurePath(source).stem if source else "audio"
    return f"{stem}, part {index + 1}."


class FakeEngine:
    """Deterministic segments per chunk; see the module's docstring."""

    def __init__(
        self,
        name: str = "fake",
        *,
        batch_size: int = 16,
        crash_on: str | None = None,
        seconds_per_batch: float = 0.0,
        crash: Callable[[], object] | None = None,
    ) -> None:
        self.info = EngineInfo("fake", name, "cpu", "fp32")
        self.batch_size = batch_size
        self.crash_on = crash_on
        self.seconds_per_batch = seconds_per_batch
        self._crash = crash or _abort
        # what was asked of it, for tests to look at: chunk keys and indices prepared, and the
        # (key, index) pairs of each batch transcribed, in order
        self.prepared: list[tuple[str, int]] = []
        self.batches: list[list[tuple[str, int]]] = []
        self.closed = False

    def share(self, seconds: float, language: str | None) -> float:
        return min(1.0, max(MIN_SHARE, seconds / MAX_CHUNK_SECONDS))

    def detect_language(self, audio: Any) -> dict[str, float]:
        return {"en": 1.0}

    def prepare(self, chunk: Chunk, language: str | None) -> None:
        self.prepared.append((chunk.key, chunk.index))

    def poisoned(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` comes from a file whose name matches ``crash_on``."""
        return bool(self.crash_on) and fnmatch.fnmatchcase(PurePath(chunk.source).name, self.crash_on or "")

    def transcribe(
        self, chunks: Sequence[Chunk], *, language: str | None, task: str, prompt: str | None = None, words: bool = False
    ) -> list[ChunkResult]:
        if any(self.poisoned(c) for c in chunks):
            self._crash()
        self.batches.append([(c.key, c.index) for c in chunks])
        if self.seconds_per_batch > 0:
            time.sleep(self.seconds_per_batch)
        return [
            ChunkResult(
                c.index, c.start, c.end, (Segment(round(c.start, 3), round(c.end, 3), chunk_text(c.source, c.index)),),
                language or "en",
            )
            for c in chunks
        ]

    def memory_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        self.closed = True

"""One small Engine interface. Backends live beside this file; nothing above
this package sees a torch tensor, a whisper result or a CTranslate2 object.

``loader.load_engine`` is the one place that picks a backend from ``model.engine``. Another
backend (mlx-whisper on Apple silicon, say) is a module here implementing ``Engine`` and one
more name there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from daemon.audio import Chunk
from daemon.jobs import Segment


@dataclass(frozen=True)
class EngineInfo:
    name: str  # "openai-whisper", "faster-whisper"
    model: str  # the model name or checkpoint path the user configured
    device: str  # "cpu", "cuda", "mps"
    precision: str  # "fp32", "fp16", "int8"
    note: str | None = None  # why it runs where it runs, when that is not where it was meant to (for status)


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk said. Segment times are seconds into the whole file."""

    index: int
    start: float
    end: float
    segments: tuple[Segment, ...]
    language: str | None


class Engine(Protocol):
    info: EngineInfo

    def transcribe(
        self, chunks: Sequence[Chunk], *, language: str | None, task: str, prompt: str | None = None, words: bool = False
    ) -> list[ChunkResult]:
        """Transcribe a batch of chunks (possibly from several files) in one go.

        ``language`` None means detect it. ``prompt``: names and terms to expect, given to the
        decoder with every chunk. ``words``: segments carry their timed words. Returns one
        result per chunk, same order.
        """
        ...

    def detect_language(self, audio: np.ndarray) -> dict[str, float]:
        """The probability of each language code for ``audio`` (up to 30 s of a file's first
        speech); an English-only model gives ``{"en": 1.0}``."""
        ...

    def prepare(self, chunk: Chunk, language: str | None) -> None:
        """Do what can be done for ``chunk`` before its batch is complete (the encoder's part,
        say), so that ``transcribe`` has less left; or nothing. Never raises."""
        ...

    def share(self, seconds: float, language: str | None) -> float:
        """What a chunk of ``seconds`` counts for against ``batch_size``: 1 for a full 30 s
        window, less where the engine fits shorter windows to short chunks."""
        ...

    def memory_bytes(self) -> int | None:
        """What the engine holds in a GPU's memory now (weights, caches, batches), which no
        process's RSS shows; None where it runs on the CPU and RSS tells."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...

"""Rendering transcripts and writing them atomically under collision-free names.

The text formats come from the writers openai-whisper ships in
``whisper.utils``; each renders into memory and the bytes are published with
temp + link, so Finder never shows half a file and nothing is overwritten.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from daemon import files
from daemon.jobs import Segment


def _writers() -> dict[str, Any]:
    """whisper.utils imports torch, so it is imported on first use: a worker reads and cuts
    its first files while another thread loads torch and the model."""
    from daemon.engines.whisper_lib import import_whisper

    import_whisper()
    from whisper.utils import WriteJSON, WriteSRT, WriteTXT, WriteVTT

    return {"txt": WriteTXT, "srt": WriteSRT, "vtt": WriteVTT, "json": WriteJSON}


@dataclass(frozen=True)
class Transcript:
    source: str  # the original's file name
    segments: tuple[Segment, ...]
    language: str | None
    duration: float | None
    model: str
    engine: str
    device: str
    precision: str
    processing_seconds: float

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def to_result(t: Transcript) -> dict[str, Any]:
    """The dict shape whisper.utils writers expect, plus what whisperd knows about the run."""
    return {
        "source": t.source,
        "text": t.text,
        "language": t.language,
        "duration": None if t.duration is None else round(t.duration, 3),
        "model": t.model,
        "engine": t.engine,
        "device": t.device,
        "precision": t.precision,
        "processing_seconds": round(t.processing_seconds, 3),
        "segments": [
            {"id": i, **s.to_dict()} for i, s in enumerate(t.segments) if s.text.strip()
        ],
    }


def render(t: Transcript, fmt: str) -> bytes:
    buf = io.StringIO()
    _writers()[fmt](output_dir=".").write_result(to_result(t), file=buf)
    return buf.getvalue().encode("utf-8")


def choose_paths(out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """One free stem shared by every format: ``meeting.txt``/``.srt``… or ``meeting (2).txt``/…"""
    suffixes = [f".{f}" for f in formats]
    free = files.free_stem(out_dir, stem, suffixes)
    return [out_dir / (free + s) for s in suffixes]


def write(t: Transcript, paths: Sequence[Path], *, ours: bool = False) -> list[Path]:
    """Write each format to its path. ``ours``: the names were chosen by an earlier try
    of this same job, so a file already there is that try's and may be replaced."""
    written = []
    for path in paths:
        fmt = path.suffix.lstrip(".")
        data = render(t, fmt)
        try:
            written.append(files.write_atomic(path.parent, path.name, data))
        except FileExistsError:
            if not ours:
                raise
            written.append(files.write_atomic(path.parent, path.name, data, replace=True))
    return written

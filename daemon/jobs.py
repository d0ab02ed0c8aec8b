"""The Job value object and its states. No I/O here."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any

from daemon.language import Decision


class State(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED)


@dataclass(frozen=True)
class Word:
    """One word of a segment, as whisper's alignment timed it (``words: true``). ``word``
    keeps whisper's leading space, so a segment's words joined give its text."""

    word: str
    start: float
    end: float
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3),
                "probability": round(self.probability, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Word":
        return cls(str(d["word"]), float(d["start"]), float(d["end"]), float(d["probability"]))


@dataclass(frozen=True)
class Segment:
    """A piece of transcript; times are seconds from the start of the whole file. ``words``:
    its timed words, when the folder asks for them (empty otherwise)."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    speaker: str | None = None  # "Speaker 1", … (``speakers``), once the file's speakers are known

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}
        if self.speaker is not None:
            d["speaker"] = self.speaker
        if self.words:
            d["words"] = [w.to_dict() for w in self.words]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Segment":
        words = tuple(Word.from_dict(w) for w in d.get("words") or ())
        return cls(float(d["start"]), float(d["end"]), str(d["text"]), words, d.get("speaker"))


@dataclass(frozen=True)
class Voice:
    """A voice print (``speakers``): a speaker embedding of the speech from ``start`` to
    ``end`` seconds into the file, as float16 bytes."""

    start: float
    end: float
    vector: bytes = dataclasses.field(repr=False)

    def to_list(self) -> list[Any]:
        return [self.start, self.end, base64.b64encode(self.vector).decode("ascii")]

    @classmethod
    def from_list(cls, v: list[Any]) -> "Voice":
        return cls(float(v[0]), float(v[1]), base64.b64decode(v[2]))


@dataclass(frozen=True)
class Checkpoint:
    """Work saved between chunks: everything before ``offset`` seconds is transcribed."""

    offset: float = 0.0
    segments: tuple[Segment, ...] = ()
    language: str | None = None
    chunks_done: int = 0
    voices: tuple[Voice, ...] = ()  # the voice prints of everything before ``offset`` (``speakers``)
    # how the file's language was decided (detected once, or fallen back on), kept so that a
    # resumed job goes on in the same language
    language_detection: Decision | None = None

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "offset": self.offset,
            "language": self.language,
            "chunks_done": self.chunks_done,
            "segments": [s.to_dict() for s in self.segments],
        }
        if self.voices:
            d["voices"] = [v.to_list() for v in self.voices]
        if self.language_detection is not None:
            d["language_detection"] = self.language_detection.to_dict()
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | None) -> "Checkpoint":
        if not raw:
            return cls()
        d = json.loads(raw)
        return cls(
            offset=float(d.get("offset", 0.0)),
            segments=tuple(Segment.from_dict(s) for s in d.get("segments", [])),
            language=d.get("language"),
            chunks_done=int(d.get("chunks_done", 0)),
            voices=tuple(Voice.from_list(v) for v in d.get("voices", [])),
            language_detection=Decision.from_dict(d.get("language_detection")),
        )


class Cause(str, enum.Enum):
    """Why a job was interrupted: whose fault it may be."""

    STOPPED = "whisperd-stopped"  # whisperd itself ended without handing the job back (power cut, force quit,
    # launchd): found at the next start. Nothing against the file.
    WORKER_EXITED = "worker-exited"  # its worker process ended of itself (exit code 0) still holding the job
    WORKER_DIED = "worker-died"  # its worker process died while whisperd lived (a signal, a segfault, the
    # out-of-memory killer): evidence against the files it held
    KILLED = "worker-killed"  # its worker was ended by SIGKILL while the out-of-memory killer did nothing:
    # someone's kill -9 (Activity Monitor, a script). Nothing against the files it held
    LEASE_EXPIRED = "lease-expired"  # nobody renewed its lease (a worker of another daemon, a long sleep)


@dataclass(frozen=True)
class Interruption:
    """One time a job was taken from its worker without being finished or handed back."""

    cause: Cause
    at: float  # wall-clock time, for people
    offset: float  # seconds of audio saved (the checkpoint) when it happened
    reached: tuple[float, float] | None = None  # the stretch of the file the worker was transcribing, if known
    detail: str = ""  # e.g. "killed by signal SIGABRT"
    strike: bool = False  # whether it counted against the file

    def to_dict(self) -> dict[str, Any]:
        return {
            "cause": self.cause.value, "at": self.at, "offset": self.offset,
            "reached": list(self.reached) if self.reached else None, "detail": self.detail, "strike": self.strike,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Interruption":
        reached = d.get("reached")
        return cls(
            Cause(d["cause"]), float(d.get("at", 0.0)), float(d.get("offset", 0.0)),
            (float(reached[0]), float(reached[1])) if reached else None, str(d.get("detail", "")), bool(d.get("strike")),
        )


@dataclass(frozen=True)
class Job:
    """One file's journey through the queue, as stored in its row."""

    id: int
    folder: int  # index of the folder entry in the configuration
    path: str  # absolute path of the original, in its inbox
    rel: str  # path relative to the inbox (keeps subfolders)
    state: State
    content_hash: str | None = None
    size: int = 0
    mtime: float = 0.0
    attempts: int = 0  # times claimed
    strikes: int = 0  # failed tries that made no progress; compared with jobs.max_attempts
    progress: float = 0.0
    duration: float | None = None
    error: str | None = None
    model: str | None = None
    device: str | None = None
    precision: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0
    lease_owner: str | None = None
    lease_expires: float | None = None
    checkpoint: Checkpoint = Checkpoint()
    outputs: tuple[str, ...] = ()  # final output paths, chosen once so a retry reuses them
    destination: str | None = None  # where the original goes (archive or failed), chosen once
    duplicate_of: int | None = None
    # A worker died holding this job: it is run alone until its checkpoint passes this many seconds
    # (where that worker was), so that a file that kills the worker is told apart from its batch-mates.
    suspect_until: float | None = None
    interruptions: tuple[Interruption, ...] = ()

    def evolve(self, **changes: Any) -> "Job":
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Outcome:
    """How a job ended, as a worker reports it to the daemon."""

    job_id: int
    state: State
    path: str  # where the original ended up
    error: str | None = None


@dataclass(frozen=True)
class Permission:
    """What the daemon allows one worker right now."""

    claim: bool  # may start new jobs
    folders: tuple[int, ...] | None = None  # only from these folders (None: any)
    pause: bool = False  # hand running jobs back at the next chunk boundary
    reason: str | None = None

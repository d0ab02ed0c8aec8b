"""One job from claimed to finished: checks, chunk supply, checkpoints, outputs, the move.

A ``JobRun`` is a job in progress. The worker (worker.py) draws chunks from
several runs into one batch, so short files share the model's 30 s windows,
and hands each run its results back in order. Every step that touches the
disk is idempotent, so a job picked up again after a crash ends the same way.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from daemon.voices import Printer

from daemon import audio, files, outputs, speakers
from daemon.config import Config, FolderConfig
from daemon.engines.base import ChunkResult, EngineInfo
from daemon.errors import SourceGoneError, UnsafePathError, WhisperdError
from daemon.jobs import Checkpoint, Job, Outcome, State, Voice
from daemon.language import Decision, Setting
from daemon.prefetch import Prefetch
from daemon.queue import Queue

log = logging.getLogger("whisperd.pipeline")


class LeaseLost(Exception):
    """Another worker owns this job now (our lease expired); stop touching it."""


def style_of(folder: FolderConfig) -> outputs.Style:
    """How ``folder`` wants its outputs written."""
    return outputs.Style(
        chinese=folder.chinese, max_line_width=folder.max_line_width, max_line_count=folder.max_line_count,
        highlight_words=folder.highlight_words,
    )


def plain_reason(exc: BaseException) -> str:
    """One or two plain sentences for an ``.error.txt`` file and ``whisperd status``."""
    if isinstance(exc, WhisperdError):
        return exc.message
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "The disk is full, so the transcript could not be written. Free some space."
        if exc.errno in (errno.EACCES, errno.EPERM):
            where = f" ({exc.filename})" if exc.filename else ""
            return f"whisperd is not allowed to read or write a file or folder{where}. Check its permissions (and Full Disk Access on macOS)."
        if exc.errno == errno.EROFS:
            return f"A folder whisperd writes to is read-only ({exc.filename}). Make it writable."
        return f"A disk error stopped the work: {exc.strerror or exc}."
    return f"whisperd hit an unexpected error ({type(exc).__name__}: {exc})."


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, WhisperdError):
        return exc.permanent
    return False


class JobRun:
    """A claimed job being transcribed chunk by chunk."""

    def __init__(
        self, job: Job, folder: FolderConfig, info: audio.AudioInfo, vad: audio.Vad, *, ahead: int = 0,
        printer: Callable[[], "Printer"] | None = None,
    ) -> None:
        self.job = job
        self.folder = folder
        self.duration = info.duration
        cp = job.checkpoint
        self.checkpoint = cp
        self.started = time.monotonic()
        chunks: Iterator[audio.Chunk] = audio.iter_chunks(
            job.path, start_at=cp.offset, key=str(job.id), first_index=cp.chunks_done, vad=vad, container_format=info.container or None
        )
        # ``speakers``: each chunk's voice prints, taken as it is cut (in the read-ahead thread)
        # and kept in the checkpoint with its segments; None when the file has one voice
        self.printer = printer if folder.speakers and not _one_voice(folder, info) else None
        self._voices: dict[int, tuple[Voice, ...]] = {}
        self.print_seconds = 0.0  # spent taking voice prints (in the read-ahead thread)
        if self.printer is not None:
            chunks = self._printed(chunks, self.printer)
        # with ``ahead``, the next chunks are decoded and cut while the model works on these
        self._chunks: Iterator[audio.Chunk] = Prefetch(chunks, ahead) if ahead > 0 else chunks
        self._peeked: audio.Chunk | None = None
        self._chunk_languages: dict[int, str] = {}  # mixed_languages: chunk index -> its language
        self.exhausted = False
        self.in_flight = 0
        self.annotated = False  # the queue knows its length and model
        self.suspect_until = job.suspect_until  # see Queue.claim: it runs alone, a chunk at a time, up to there

    def _printed(self, chunks: Iterator[audio.Chunk], printer: Callable[[], "Printer"]) -> Iterator[audio.Chunk]:
        for chunk in chunks:
            began = time.monotonic()
            self._voices[chunk.index] = printer().prints(chunk.audio, chunk.start)
            self.print_seconds += time.monotonic() - began
            yield chunk

    def turns(self) -> list[speakers.Turn]:
        """Who spoke when, from the voice prints of the whole file (``speakers``)."""
        if self.printer is None:
            return []
        began = time.monotonic()
        voices = self.checkpoint.voices
        turns = self.printer().turns(voices, self.folder.speaker_count)
        log.info(
            "speakers of %s: %d found from %d voice prints (%.1f s taking them in this run, %.1f s clustering)",
            self.job.rel, len({t.speaker for t in turns}), len(voices), self.print_seconds, time.monotonic() - began,
            extra={"action": "job.speakers", "job": self.job.id},
        )
        return turns

    @property
    def setting(self) -> Setting:
        return Setting.of(self.folder.language)

    @property
    def language(self) -> str | None:
        """The language this file's chunks are transcribed in: the folder's, or the one decided
        for this file (kept in its checkpoint); with ``mixed_languages``, the one decided for the
        next chunk. None until it is decided."""
        fixed = self.setting.fixed
        if fixed is not None:
            return fixed
        if self.folder.mixed_languages:
            chunk = self._peeked
            return None if chunk is None else self._chunk_languages.get(chunk.index)
        cp = self.checkpoint
        if cp.language_detection is not None:
            return cp.language_detection.language
        return cp.language  # a checkpoint written before detections were kept

    @property
    def needs_language(self) -> bool:
        """Whether a language is still to be detected: the file's, from its first chunk, or with
        ``mixed_languages`` the next chunk's (``peek``)."""
        return self.language is None and self.peek() is not None

    def decide_language(self, decision: Decision) -> None:
        """Keep ``decision`` as the language of this file (in the checkpoint saved with the next
        batch), or with ``mixed_languages`` of the next chunk (the file's first one goes in the
        checkpoint, as the transcript's language)."""
        if self.folder.mixed_languages:
            chunk = self.peek()
            assert chunk is not None
            self._chunk_languages[chunk.index] = decision.language
            if self.checkpoint.language_detection is not None:
                return
            decision = Decision(decision.language, "per chunk", decision.probability, decision.reason)
        self.checkpoint = dataclasses.replace(self.checkpoint, language=decision.language, language_detection=decision)

    @property
    def batch_key(self) -> tuple[str | None, str, str | None, bool]:
        """What the chunks of one batch share: language, task, prompt and whether words are timed."""
        return (self.language, self.folder.task, self.folder.prompt, self.folder.words)

    def peek(self) -> audio.Chunk | None:
        """The next chunk, left to be taken; None at the end of the file."""
        if self._peeked is None and not self.exhausted:
            try:
                self._peeked = next(self._chunks)
            except StopIteration:
                self.exhausted = True
        return self._peeked

    def take(self, n: int) -> list[audio.Chunk]:
        out: list[audio.Chunk] = []
        while len(out) < n and (chunk := self.peek()) is not None:
            out.append(chunk)
            self._peeked = None
        self.in_flight += len(out)
        return out

    @property
    def suspect(self) -> bool:
        return self.suspect_until is not None

    @property
    def done(self) -> bool:
        return self.exhausted and self.in_flight == 0

    def close(self) -> None:
        """Stop reading the file (this run is finished, failed or handed back)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def accept(self, results: list[ChunkResult]) -> Checkpoint:
        """Fold this run's results (in chunk order) into a new checkpoint."""
        cp = self.checkpoint
        segments = list(cp.segments)
        voices = list(cp.voices)
        lang = cp.language
        offset = cp.offset
        for r in sorted(results, key=lambda r: r.index):
            segments.extend(s for s in r.segments if s.text.strip())
            voices.extend(self._voices.pop(r.index, ()))
            lang = lang or r.language
            offset = max(offset, r.end)
        self.in_flight -= len(results)
        if self.suspect_until is not None and offset >= self.suspect_until:
            self.suspect_until = None  # as the queue clears it with this checkpoint
        self.checkpoint = dataclasses.replace(
            cp, offset=offset, segments=tuple(segments), language=lang, chunks_done=cp.chunks_done + len(results),
            voices=tuple(voices),
        )
        return self.checkpoint

    def final_checkpoint(self) -> Checkpoint:
        """All chunks done: the offset reaches the end of the audio."""
        cp = self.checkpoint
        end = self.duration if self.duration is not None else cp.offset
        return dataclasses.replace(cp, offset=max(cp.offset, end))


def _one_voice(folder: FolderConfig, info: audio.AudioInfo) -> bool:
    """Whether the file has one voice, where that is known before listening: one speaker by
    the folder's word, or too short for the clustering to find two."""
    return folder.speaker_count == 1 or (info.duration is not None and info.duration < speakers.MIN_SECONDS)


class Steps:
    """The disk side of a job: checking, finishing, failing. Shared by every worker."""

    def __init__(self, config: Config, queue: Queue, owner: str, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.queue = queue
        self.owner = owner
        self.clock = clock

    # -- start ---------------------------------------------------------------

    def folder(self, job: Job) -> FolderConfig:
        return self.config.folders[job.folder]

    def check_source(self, job: Job) -> None:
        """The original must still be there, inside its inbox, and a real file (not a link)."""
        folder = self.folder(job)
        src = Path(job.path)
        if not os.path.lexists(src):
            raise SourceGoneError()
        if src.is_symlink():
            raise UnsafePathError(
                "This is a link (alias) to a file elsewhere; whisperd never follows links out of an inbox, "
                "and left the file it points to untouched. Copy the recording itself into the inbox."
            )
        if not files.within(src.parent, folder.inbox):
            raise UnsafePathError()
        if src.is_dir():
            raise UnsafePathError("This is a folder, not a recording.")
        mode = os.lstat(src).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f"This is {files.kind(mode)}, not a recording; whisperd does not read from it.")

    def duplicate_of(self, job: Job) -> Job | None:
        if self.folder(job).duplicates != "skip" or not job.content_hash:
            return None
        return self.queue.done_with_hash(job.content_hash, exclude_id=job.id)

    # -- end -----------------------------------------------------------------

    def _destination(self, job: Job, root: Path) -> Path:
        if job.destination and files.within(Path(job.destination).parent, root):
            return Path(job.destination)
        target_dir = files.ensure_dir(files.mirror(root, job.rel), root)
        dest = files.free_name(target_dir, job.name)
        if not self.queue.plan(job.id, self.owner, destination=str(dest)):
            raise LeaseLost()
        return dest

    def _move_original(self, job: Job, root: Path) -> Path:
        dest = self._destination(job, root)
        return files.move(Path(job.path), dest)

    def complete(self, job: Job, run: JobRun, info: EngineInfo) -> Outcome:
        """Write the outputs, archive the original, mark the job done."""
        folder = self.folder(job)
        cp = run.final_checkpoint()
        segments = speakers.label(cp.segments, run.turns()) if folder.speakers else cp.segments
        decision = cp.language_detection
        if decision is None and run.setting.fixed is not None:
            decision = Decision(run.setting.fixed, "fixed")
        transcript = outputs.Transcript(
            source=job.name,
            segments=segments,
            language=run.language or cp.language,
            language_detection=None if decision is None else decision.to_dict(),
            duration=run.duration,
            model=info.model,
            engine=info.name,
            device=info.device,
            precision=info.precision,
            processing_seconds=time.monotonic() - run.started,
            task=folder.task,
        )
        if job.outputs:
            paths, ours = [Path(p) for p in job.outputs], True
        else:
            out_dir = files.ensure_dir(files.mirror(folder.output, job.rel), folder.output)
            paths, ours = outputs.choose_paths(out_dir, files.split_name(job.name)[0], folder.formats), False
            if not self.queue.plan(job.id, self.owner, outputs=[str(p) for p in paths]):
                raise LeaseLost()
            job = job.evolve(outputs=tuple(str(p) for p in paths))
        outputs.write(transcript, paths, ours=ours, style=style_of(folder))
        dest = self._move_original(job, folder.archive)
        if not self.queue.finish(job.id, self.owner, State.DONE, now=self.clock()):
            raise LeaseLost()
        log.info(
            "done: %s → %s (%d segments)", job.rel, paths[0].parent if paths else "-", len(cp.segments),
            extra={"action": "job.done", "job": job.id},
        )
        return Outcome(job.id, State.DONE, str(dest))

    def complete_duplicate(self, job: Job, first: Job) -> Outcome:
        """Archive a second copy of a recording already transcribed, with a note pointing to the first result."""
        folder = self.folder(job)
        dest = self._move_original(job, folder.archive)
        where = ", ".join(first.outputs) if first.outputs else "(no output files were recorded)"
        note = (
            f"{job.name} is the same recording as {first.name}, which was transcribed already; "
            f"it was not transcribed again. The transcript is at: {where}\n"
            "To transcribe duplicates anyway, set 'duplicates: transcribe' on this folder.\n"
        )
        self._note(dest, ".duplicate.txt", note)
        self.queue.finish(job.id, self.owner, State.DONE, now=self.clock(), duplicate_of=first.id)
        log.info("duplicate of job %s: %s archived without transcribing", first.id, job.rel, extra={"action": "job.duplicate", "job": job.id})
        return Outcome(job.id, State.DONE, str(dest))

    def _note(self, beside: Path, suffix: str, text: str) -> Path:
        name = files.fit_name(beside.name, suffix)
        target = files.free_name(beside.parent, name)
        return files.write_atomic(beside.parent, target.name, text.encode("utf-8"))

    def fail(self, job: Job, exc: BaseException) -> Outcome:
        """Move the original to failed/ with a plain reason beside it, and mark the job failed."""
        reason = plain_reason(exc)
        folder = self.folder(job)
        dest_path = job.path
        if os.path.lexists(job.path) or (job.destination and os.path.lexists(job.destination)):
            try:
                dest = self._move_original(job, folder.failed)
                self._note(dest, ".error.txt", reason.rstrip() + "\n")
                dest_path = str(dest)
            except LeaseLost:
                raise
            except OSError as move_exc:
                reason += f" The original could not be moved to the failed folder either ({move_exc.strerror}); it is still in the inbox."
        self.queue.finish(job.id, self.owner, State.FAILED, now=self.clock(), error=reason)
        log.warning("failed: %s: %s", job.rel, reason, extra={"action": "job.failed", "job": job.id})
        return Outcome(job.id, State.FAILED, dest_path, reason)

    def handle_error(self, job: Job, exc: BaseException) -> Outcome | None:
        """Fail at once for permanent errors; retry with exponential backoff otherwise."""
        if is_permanent(exc):
            return self.fail(job, exc)
        current = self.queue.get(job.id) or job
        strikes = current.strikes + 1
        if strikes >= self.config.jobs.max_attempts:
            return self.fail(job, _GaveUp(plain_reason(exc), strikes))
        delay = self.config.jobs.retry_base_seconds * (2 ** (strikes - 1))
        when = time.strftime("%H:%M", time.localtime(self.clock() + delay))
        self.queue.retry_later(
            job.id, self.owner, error=f"{plain_reason(exc)} whisperd will try again at {when}.", not_before=self.clock() + delay
        )
        log.warning(
            "will retry %s in %.0f s (try %d of %d): %s", job.rel, delay, strikes, self.config.jobs.max_attempts, plain_reason(exc),
            extra={"action": "job.retry", "job": job.id},
        )
        return None


class _GaveUp(WhisperdError):
    permanent = True

    def __init__(self, reason: str, tries: int) -> None:
        super().__init__(f"{reason.rstrip('.')}. whisperd gave up after {tries} tries.")

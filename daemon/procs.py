"""Workers run in spawned processes, one model each.

Why processes: the daemon itself then never imports torch, so an idle
whisperd holds little memory; a worker that has been idle for
``model.idle_unload_minutes`` exits and gives all of its memory back to the
system (a thread that drops a model rarely does); and a crash in a decoder or
the model takes down one worker, not the daemon.

Parent and child talk over one duplex pipe with plain values: the parent
sends a ``Permission`` whenever it changes, ``"wake"``, ``"resume"`` (a fault
of the machine is gone) and ``"stop"``; the child sends ``("status", busy,
job_ids)``, ``("outcome", Outcome)``, ``("fault", Fault)`` and, as each chunk goes
to the model, ``("reach", job_id, start, end)``: if the worker dies, what it wrote
before is still read, so the daemon knows where in each file it was. When
the parent dies, the pipe closes, and the child hands its jobs back and exits
instead of living on as an orphan. Log records travel back over a queue and
are written by the parent's handlers.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import psutil

from daemon import platform
from daemon.config import Config
from daemon.faults import Fault
from daemon.jobs import Outcome, Permission

log = logging.getLogger("whisperd.procs")

_ctx = multiprocessing.get_context("spawn")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one we may not look at counts as alive). A
    zombie does not: a worker whose daemon was killed with it is left a zombie where nothing
    reaps orphans (a container's init), and its leases must go back to the queue at once."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


class WorkerProcess:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, config: Config, *, verbose: bool = False,
                 volumes: dict[str, int] | None = None) -> None:
        self.name = name
        self.volumes = dict(volumes or {})  # inbox → the device it was on
        self.config = config
        self.verbose = verbose
        self.proc: Any = None
        self.conn: Connection | None = None
        self.busy = False
        self.jobs: list[int] = []
        self.permission: Permission | None = None
        self.owner: str | None = None  # the lease owner the child uses: host:pid:name
        self.reached: dict[int, tuple[float, float]] = {}  # job id → the stretch the model has in hand
        self.started_at = 0.0
        self.faults: list[Fault] = []  # reported by the child, not yet taken by the daemon
        self.engine: dict[str, Any] | None = None  # the child's loaded engine (see engine_status)
        self.oom_kills_at_start: int | None = None  # the out-of-memory killer's count when it started
        self._outcomes: list[Outcome] = []  # read while waiting for the child to stop, not yet taken

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def active_jobs(self) -> list[int]:
        return list(self.jobs)

    def start(self) -> None:
        parent, child = _ctx.Pipe(duplex=True)
        self.proc = _ctx.Process(
            target=child_main, name=self.name, args=(self.config, self.name, child, self.verbose, self.volumes),
            daemon=False
        )
        self.proc.start()
        child.close()
        self.conn = parent
        self.busy = False
        self.jobs = []
        self.permission = None
        self.owner = None
        self.reached = {}
        self.started_at = time.monotonic()
        self.oom_kills_at_start = platform.oom_kills()
        log.info("worker %s started (pid %s)", self.name, self.proc.pid, extra={"action": "worker.start"})

    def send(self, message: Any) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            pass

    def allow(self, permission: Permission) -> None:
        if permission != self.permission:
            self.permission = permission
            self.send(permission)

    def poll(self) -> list[Outcome]:
        """Read what the child said since the last poll."""
        outcomes, self._outcomes = self._outcomes, []
        if self.conn is None:
            return outcomes
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if msg[0] == "log":
                    _write(msg[1])
                elif msg[0] == "status":
                    self.busy, self.jobs = msg[1], list(msg[2])
                elif msg[0] == "owner":
                    self.owner = msg[1]
                elif msg[0] == "outcome":
                    outcomes.append(msg[1])
                    self.reached.pop(msg[1].job_id, None)
                elif msg[0] == "reach":
                    self.reached[msg[1]] = (msg[2], msg[3])
                elif msg[0] == "fault":
                    self.faults.append(msg[1])
                elif msg[0] == "engine":
                    self.engine = msg[1]
        except (EOFError, OSError):
            self._closed()
        return outcomes

    def take_faults(self) -> list[Fault]:
        faults, self.faults = self.faults, []
        return faults

    def killed_from_outside(self, code: int) -> bool:
        """Whether a worker that ended with ``code`` was killed by someone (SIGKILL while the
        out-of-memory killer did nothing), which says nothing about its files. Where the
        count is unknown (macOS), a SIGKILL may be the memory's doing, and counts as a crash."""
        if code != -signal.SIGKILL or self.oom_kills_at_start is None:
            return False
        now = platform.oom_kills()
        return now is not None and now == self.oom_kills_at_start

    def reap_if_dead(self) -> int | None:
        """The exit code of a worker that ended since the last look, else None."""
        if self.proc is None or self.proc.is_alive():
            return None
        code = self.proc.exitcode
        self._closed()
        self.proc = None
        return code

    def _closed(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.busy = False
        self.jobs = []
        self.engine = None

    def stop(self, timeout: float) -> None:
        """Ask the worker to finish its chunk, save its place and exit; force it after ``timeout``."""
        if self.proc is None:
            return
        self.send("stop")
        deadline = time.monotonic() + timeout
        while self.proc.is_alive() and time.monotonic() < deadline:
            self._outcomes = self.poll()  # its last records and outcomes, so that it never waits on a full pipe
            self.proc.join(0.05)
        if self.proc.is_alive():
            log.warning("worker %s did not stop in %.0f s; terminating it", self.name, timeout, extra={"action": "worker.kill"})
            self.proc.kill()
            self.proc.join(5)
        self.poll()
        self._closed()
        self.proc = None


# ----------------------------------------------------------------------------- child side


def _die_with_parent() -> None:
    """On Linux, have the kernel end this process when the daemon dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class _Link:
    """The child's end: permission in, status and outcomes out."""

    def __init__(self, conn: Connection, stop: threading.Event, wake: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.wake = wake
        self.permission = Permission(claim=False)
        self.resume = threading.Event()  # the daemon found the machine's fault gone
        self.lock = threading.Lock()
        self.last_status: tuple[bool, tuple[int, ...]] | None = None
        self.last_engine: dict[str, Any] | None = None
        self.engine_sent_at = -1e9
        threading.Thread(target=self._read, name="parent-link", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError, TypeError):
                # EOFError, OSError: the daemon is gone, so save our place and leave. TypeError: the
                # worker closed its end while this thread was inside recv (its handle became None).
                self.stop.set()
                self.wake.set()
                return
            if isinstance(msg, Permission):
                self.permission = msg
            elif msg == "stop":
                self.stop.set()
            elif msg == "resume":
                self.resume.set()
            self.wake.set()

    def send(self, msg: Any) -> None:
        with self.lock:
            try:
                self.conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                self.stop.set()

    def status(self, busy: bool, jobs: list[int]) -> None:
        st = (busy, tuple(jobs))
        if st != self.last_status:
            self.last_status = st
            self.send(("status", busy, list(jobs)))

    def engine(self, engine: Any) -> None:
        """Tell the parent about the loaded engine when what it says changes, at most once a second
        (its GPU memory changes with every batch)."""
        now = time.monotonic()
        if engine is None or now - self.engine_sent_at < 1.0:
            return
        said = engine_status(engine)
        if said != self.last_engine:
            self.last_engine, self.engine_sent_at = said, now
            self.send(("engine", said))


def engine_status(engine: Any) -> dict[str, Any]:
    """What ``status`` says of a loaded engine: which, where, why there, and what it holds in a
    GPU's memory (which no process's RSS shows; None on the CPU)."""
    info = engine.info
    try:
        gpu = engine.memory_bytes()
    except Exception:  # a figure for status and the governor's estimate, never worth a failure
        gpu = None
    return {"name": info.name, "model": info.model, "device": info.device, "precision": info.precision,
            "note": info.note, "gpu_memory_bytes": gpu}


def child_main(config: Config, name: str, conn: Connection, verbose: bool,
               volumes: dict[str, int] | None = None) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    stop = threading.Event()
    wake = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), wake.set()))
    link = _Link(conn, stop, wake)

    root = logging.getLogger()
    root.handlers[:] = [_LinkHandler(link)]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("numba", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from daemon.engines import hardware
    from daemon.engines.loader import load_engine
    from daemon.queue import Queue
    from daemon.worker import Worker

    hardware.short_openmp_spin()  # before anything in this process loads torch

    owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
    link.send(("owner", owner))
    queue = Queue(config.database, busy_timeout=config.jobs.database_wait_seconds)
    cache = config.model_cache_dir
    worker = Worker(
        owner,
        config,
        queue,
        engine_factory=lambda: load_engine(config.model, cache),
        permission=lambda _w: link.permission,
        stop=stop,
        wake=wake,
        on_outcome=lambda o: link.send(("outcome", o)),
        on_fault=lambda f: link.send(("fault", f)),
        volumes=volumes,
        on_reach=lambda job, start, end: link.send(("reach", job, start, end)),
    )
    worker.warm_up()  # started because work is waiting
    idle_limit = config.model.idle_unload_minutes * 60
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            if link.resume.is_set():
                link.resume.clear()
                worker.resume()
            worked = worker.step()
            link.status(worker.busy, worker.active_jobs())
            link.engine(worker.engine)
            if worked:
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since > idle_limit:
                log.info("idle for %.0f min: worker exits and frees its memory", idle_limit / 60, extra={"action": "worker.idle_exit"})
                break
            wake.wait(config.watch.poll_seconds)
            wake.clear()
    finally:
        worker.shutdown("whisperd is stopping" if stop.is_set() else "idle")
        link.status(False, [])
        logging.getLogger().handlers[:] = []
        queue.close()
        conn.close()  # every record and outcome sent is in the pipe
    _leave()


def _leave() -> NoReturn:
    """End the worker once its jobs are handed back, the queue closed and its log records
    sent. An ordinary interpreter exit would spend most of a second tearing down torch's
    modules and freeing the model piece by piece (docs/decisions.md), while the
    daemon waits to stop; the system takes all of the memory back at once anyway. Only the
    normal way out comes here: an exception still ends the process as a crash would."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


class _LinkHandler(logging.handlers.QueueHandler):
    """A worker's log records, sent to the daemon over the worker's own pipe, which the daemon
    writes with its handlers (one log file, one writer). Not a multiprocessing queue shared by
    the workers: a worker killed while it held that queue's lock would leave it held, and the
    next worker would wait on it forever at its first line of log."""

    def __init__(self, link: "_Link") -> None:
        logging.Handler.__init__(self)
        self.link = link

    def enqueue(self, record: logging.LogRecord) -> None:
        self.link.send(("log", record))


def _write(record: logging.LogRecord) -> None:
    """A worker's record, through the daemon's handlers at their own levels."""
    for handler in logging.getLogger().handlers:
        if record.levelno >= handler.level:
            handler.handle(record)

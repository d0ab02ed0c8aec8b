"""The daemon's main loop (the real probes, clock and notifier it runs with are chosen in wiring.py).

The main thread owns the watcher, the settle check and enqueueing; workers
own the model. Signal handlers only set flags. What a crash leaves behind
(running jobs, hidden temporary files) is repaired at the next start, which
is safe because one lock file lets only one daemon use a state folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from daemon import config as config_mod
from daemon import files
from daemon.config import Config
from daemon.errors import ConfigError, WhisperdError
from daemon.extras import speakers_installed
from daemon.faults import (
    Fault, Faults, KnownFolders, MachineFault, inbox_present, missing_folder_fault, volume_of, writable,
)
from daemon.jobs import Outcome, Permission, State
from daemon.offthread import OffThread
from daemon.queue import Queue
from daemon.watcher import Found, Settled, Settler, Watcher, locate, scan
from daemon.procs import WorkerProcess, pid_alive

log = logging.getLogger("whisperd.service")

EX_OK = 0
EX_TEMPFAIL = 75
STATUS_FILE = "daemon.json"
STOP_SECONDS = 15.0  # launchd's ExitTimeOut is 20 s
# With nothing queued, settling or running, the loop looks around this seldom: file events,
# signals, workers and the clock wake it at once anyway, so only the idle CPU changes.
IDLE_POLL_SECONDS = 5.0


def _owner_alive(owner: str) -> bool:
    """Is the worker process named in a lease (host:pid:name) still running on this machine?"""
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname():
        return True  # another machine's worker: its lease expiring is the only sign
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return pid != os.getpid() and pid_alive(pid)


def _exit_detail(code: int) -> str:
    """How a worker process ended, in words: "killed by signal SIGKILL", "exit code 1"."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class AlreadyRunning(WhisperdError):
    """Another whisperd is already running with this state folder."""

    permanent = True


class InstanceLock:
    """An flock on ``state_dir/whisperd.lock``: one daemon per queue."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "whisperd.lock"
        self.fd: int | None = None

    def __enter__(self) -> "InstanceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                other = self.path.read_text().strip() or "unknown"
                raise AlreadyRunning(f"another whisperd (pid {other}) is already running with {self.path.parent}") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Flags:
    """Set by signal handlers, read by the loop."""

    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    reload: bool = False


class Service:
    def __init__(
        self,
        config: Config,
        *,
        governor: Any = None,
        verbose: bool = False,
        clock_factory: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_outcome: Callable[[Outcome], None] | None = None,
        notifier: Any = None,
        keep_awake: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        self.flags = Flags()
        self.owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        if governor is None:
            from daemon.governor import Governor
            from daemon.probes import FixedProbe, ThermalLevel

            governor = Governor(config, thermal_probe=FixedProbe(ThermalLevel.NOMINAL, "no probe"))
        self.governor = governor
        self._clock_factory = clock_factory
        self.notifier = notifier
        self.keep_awake = keep_awake
        self._rescan_due = True
        self.verbose = verbose
        self._on_outcome_extra = on_outcome
        self.outcomes: list[Outcome] = []
        self.workers: list[WorkerProcess] = []
        self.queue: Queue | None = None
        self.settler = Settler(config.watch.settle_seconds)
        # scans and content hashes: a stalled disk blocks one of these threads, never the loop
        self.reads = OffThread(on_done=self.flags.wake.set, monotonic=monotonic)
        self._hashing: dict[str, Settled] = {}
        self._watcher: Watcher | None = None
        self._volumes: dict[str, int] = {}  # inbox → the device it was on: an unplugged disk is told from a deleted file
        self.faults = Faults(monotonic=monotonic, clock=clock)  # faults of the machine holding work back
        self._announced: set[str] = set()  # faults a banner told of, not told again until work went on
        self._exit_code = EX_OK
        self._events: set[str] = set()
        self._events_lock = threading.Lock()
        self._ignore_windows = False
        self._last_lease_check = float("-inf")
        # the rescan's own timer, on the monotonic clock: the wall-clock timers (APScheduler's) wake the
        # loop sooner, but one set back an hour would hold a rescan back an hour
        self._last_rescan = float("-inf")
        self._idle = False  # nothing queued, settling or running, as of the last tick
        self._first_tick = True
        self._unscanned = set(range(len(config.folders)))  # inboxes whose start-up scan is not in yet
        self.decision: Any = None
        self._status: dict[str, Any] = {}
        self._permissions: dict[str, Permission] = {}

    # -- signals -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self.flags.stop.set()
        self.flags.wake.set()

    def _on_reload(self, signum: int, _frame: Any) -> None:
        self.flags.reload = True
        self.flags.wake.set()

    # -- the loop ------------------------------------------------------------

    def run(self, *, drain: bool = False, ignore_windows: bool = False) -> int:
        self._ignore_windows = ignore_windows
        with InstanceLock(self.config.state_dir):
            self.queue = Queue(self.config.database, busy_timeout=self.config.jobs.database_wait_seconds)
            try:
                return self._run(drain)
            finally:
                self.queue.close()

    def _run(self, drain: bool) -> int:
        assert self.queue is not None
        if not self._recover_when_possible():
            return self._exit_code
        watcher = None
        timers = None
        if not drain:
            watcher = Watcher([f.inbox for f in self.config.folders], self._on_event)
            watcher.start()
            self._watcher = watcher
            timers = self._start_clock()
        self._start_workers()
        log.info(
            "whisperd started: %d inbox(es), model %s%s", len(self.config.folders), self.config.model.name,
            " (drain)" if drain else "", extra={"action": "service.start"},
        )
        try:
            while not self.flags.stop.is_set():
                if self.flags.reload:
                    watcher = self._watcher = self._reload(watcher)
                self._tick()
                if drain and self._drained():
                    break
                poll = self.config.watch.poll_seconds
                self.flags.wake.wait(max(poll, IDLE_POLL_SECONDS) if self._idle else poll)
                self.flags.wake.clear()
        finally:
            self.flags.stop.set()
            self._stop_workers()
            if watcher is not None:
                watcher.stop()
            if timers is not None:
                timers.shutdown(wait=False)
            if self.keep_awake is not None:
                self.keep_awake.stop()
            if self.notifier is not None:
                self.notifier.close()
            self._write_status(stopping=True)
            log.info("whisperd stopped", extra={"action": "service.stop"})
        return self._exit_code

    def _recover_when_possible(self) -> bool:
        """``_recover``, waiting (and saying why) while another program holds the database's
        lock. False when told to stop meanwhile."""
        while not self.flags.stop.is_set():
            try:
                self._recover()
            except MachineFault as exc:
                self._fault(exc.fault)
                self._write_status(reason=self.faults.reason())
                self.flags.wake.wait(self.config.watch.poll_seconds)
                self.flags.wake.clear()
                continue
            self._resume("database")
            return True
        return False

    def _recover(self) -> None:
        """Repair what a crash may have left: running jobs and hidden temporary files."""
        assert self.queue is not None
        from daemon.platform import check_folder_access

        known = KnownFolders(self.config.state_dir)
        for i, folder in enumerate(self.config.folders):
            for d in (folder.inbox, folder.output, folder.archive, folder.failed):
                if not d.is_dir() and d in known:
                    # there before, gone now: its disk is away; made again, it would land on the Mac's own disk
                    log.warning("%s was there before and is not now (is its disk connected?); it is not created "
                                "again, and its work waits for it", d, extra={"action": "folder.gone", "path": str(d)})
                    self._fault(missing_folder_fault(i, d, d == folder.inbox))
                    continue
                try:
                    d.mkdir(parents=True, exist_ok=True)
                except OSError:
                    pass  # explained just below
                problem = check_folder_access(d)
                if problem is not None:
                    log.error("%s", problem, extra={"action": "folder.access", "path": str(d)})
                elif d.is_dir():
                    known.add(d)
            for d in (folder.output, folder.archive, folder.failed):
                files.sweep_temps(d)  # nothing to do where it is not there
        known.save()
        self._note_volumes()
        alive = [o for o in self.queue.running_owners() if _owner_alive(o)]
        self.queue.recover(now=self.clock(), owners_alive=alive)

    def _start_clock(self) -> Any:
        """APScheduler as a clock only: it sets flags; the jobs table stays the record of work."""
        if self._clock_factory is None:
            return None

        def rescan() -> None:
            self._rescan_due = True
            self.flags.wake.set()

        def wake() -> None:
            self.flags.wake.set()

        timers = self._clock_factory(self.config, on_rescan=rescan, on_reap=wake, on_window_change=wake)
        timers.start()
        return timers

    def _start_workers(self) -> None:
        """Handles only; a worker process starts when there is work it may do."""
        self.workers = [
            WorkerProcess(f"w{i}", self.config, verbose=self.verbose, volumes=self._volumes)
            for i in range(self.config.schedule.max_concurrency)
        ]

    def _stop_workers(self) -> None:
        """Let each worker finish its chunk and save its place, within launchd's exit timeout."""
        for w in self.workers:
            w.send("stop")
        deadline = self.monotonic() + STOP_SECONDS
        for w in self.workers:
            owner = w.owner
            w.stop(timeout=max(0.5, deadline - self.monotonic()))
            for outcome in w.poll():
                self._outcome(outcome)
            if owner and self.queue is not None:
                # a worker that had to be forced leaves its jobs running: they go back (no strike)
                self.queue.abandoned(owner, now=self.clock(), died=False, detail="stopped by whisperd")

    def _poll_workers(self) -> None:
        assert self.queue is not None
        for w in self.workers:
            for outcome in w.poll():
                self._outcome(outcome)
            for fault in w.take_faults():
                self._fault(fault)
            owner, reached = w.owner, dict(w.reached)
            code = w.reap_if_dead()
            if code is None:
                continue
            detail = _exit_detail(code)
            killed = w.killed_from_outside(code)
            back = self.queue.abandoned(owner, now=self.clock(), died=code != 0, detail=detail, reached=reached,
                                        killed=killed) if owner else []
            if killed:
                log.warning(
                    "worker %s was killed from outside (%s, not by the out-of-memory killer) while working on %d file(s); "
                    "they go back to the queue, with nothing against them", w.name, detail, len(back),
                    extra={"action": "worker.killed"},
                )
            elif code != 0:
                strikes = [j for j in back if j.interruptions and j.interruptions[-1].strike]
                log.error(
                    "worker %s ended unexpectedly (%s) while working on %d file(s); %s", w.name, detail, len(back),
                    f"it counts against {strikes[0].rel}, which was alone in it"
                    f" ({strikes[0].strikes} of {self.config.jobs.max_attempts} tries)" if strikes
                    else "each is tried again on its own" if len(back) > 1
                    else "it is tried again" if back else "it held none",
                    extra={"action": "worker.crash"},
                )

    def _outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if outcome.state is State.DONE:
            self._announced &= set(self.faults.held)  # work went on: a fault that comes back is news again
        if self.notifier is not None:
            name = os.path.basename(outcome.path)
            if outcome.state is State.DONE:
                self.notifier.done(name)
            else:
                self.notifier.failed(name, outcome.error or "")
        if self._on_outcome_extra:
            self._on_outcome_extra(outcome)
        self.flags.wake.set()

    def _on_event(self, path: str) -> None:
        with self._events_lock:
            self._events.add(path)
        self.flags.wake.set()

    def _tick(self) -> None:
        self._collect_reads()
        self._look_again()
        try:
            if "database" not in self.faults.held:  # else only the look again runs, off this thread
                if self._rescan_due or self.monotonic() - self._last_rescan >= self.config.watch.rescan_minutes * 60:
                    self._rescan_due = False
                    self._last_rescan = self.monotonic()
                    self.rescan()
                with self._events_lock:
                    events = bool(self._events)
                if events or len(self.settler):
                    # events' paths and settling files are looked at off this thread: a stalled disk
                    # holds that look up, never the loop (``_collect_reads`` takes what it found)
                    self.reads.submit(("look", 0), self._intake, what="the inboxes", notify=False)
                self._poll_workers()
                self._decide()
                self._heartbeat()
                self._power_and_banners()
            else:
                self._decide()  # tells the workers to hold; no claim is counted while the fault holds
        except MachineFault as exc:
            self._fault(exc.fault)
            self._decide()
        if not self._unscanned:
            self._first_tick = False  # the start-up scan is in: the files waiting at start are known

    # -- faults of the machine -----------------------------------------------

    def _note_volumes(self) -> None:
        """The device each inbox is on now (kept from before for an inbox that is missing)."""
        for folder in self.config.folders:
            volume = volume_of(folder.inbox)
            if volume is not None:
                self._volumes[str(folder.inbox)] = volume

    def _fault(self, fault: Fault) -> None:
        """A worker (or this loop) met a fault of the machine: hold work back, and say so once."""
        if self.faults.add(fault) and fault.key not in self._announced:
            self._announced.add(fault.key)
            if self.notifier is not None:
                self.notifier.alert(fault.reason)
        self.flags.wake.set()

    def _resume(self, key: str) -> None:
        if self.faults.clear(key) is None:
            return
        if key.startswith("inbox:"):  # its disk is back: watch it again, and look at what waits there now
            if self._watcher is not None:
                self._watcher.watch_missing()
            self._rescan_due = True
        for w in self.workers:
            w.send("resume")
        self.flags.wake.set()

    def _look_again(self) -> None:
        """Look again at each fault that is due, off this thread (the disk in question may hang).
        A model is not looked at here: the next worker's load is the test (at every reload too)."""
        for fault in self.faults.due():
            if fault.key == "model":
                self._resume(fault.key)
                continue
            if self.reads.submit(("check", fault.key), self._check(fault), what=fault.key):
                self.faults.still(fault.key)

    def _check(self, fault: Fault) -> Callable[[], bool]:
        queue = self.queue
        assert queue is not None
        if fault.key == "database":
            return lambda: queue.writable(timeout=1.0)
        if fault.key == "speakers":
            return speakers_installed
        if fault.inbox is not None:
            inbox = self.config.folders[fault.inbox].inbox
            volume = self._volumes.get(str(inbox))
            return lambda: inbox_present(inbox, volume)
        roots = [d for f in self.config.folders for d in (f.output, f.archive, f.failed)]
        if fault.path is not None:
            folder = Path(fault.path)
            return lambda: writable(folder, roots)
        return lambda: next((r for r in (writable(d, roots) for d in roots) if r is not True), True)

    def rescan(self) -> None:
        for i, folder in enumerate(self.config.folders):
            inbox = folder.inbox
            self.reads.submit(("scan", i), lambda i=i, inbox=inbox: list(scan(i, inbox)), what=str(inbox))

    def _read(self, settled: Settled) -> None:
        """Hash a settled file off the loop's thread; a link is queued as it is (never read)."""
        if settled.is_link:
            self._enqueue(settled, None)
            return
        path = settled.found.path
        if self.reads.busy(("hash", path)):
            return  # an earlier read of it is still going; it queues the file when it ends
        self._hashing[path] = settled
        if not self.reads.submit(("hash", path), lambda: files.content_hash(Path(path)), what=settled.found.rel):
            del self._hashing[path]
            self.settler.add(settled.found)  # too many reads under way: look again later

    def _collect_reads(self) -> None:
        for key, result, error in self.reads.collect():
            kind, what = key  # type: ignore[misc]
            if kind == "scan":
                self._unscanned.discard(what)
                if error is not None:
                    log.warning("could not look through %s: %s", self.config.folders[what].inbox, error,
                                extra={"action": "watch.scan_failed"})
                    continue
                for found in result:
                    self.settler.add(found)
                continue
            if kind == "look":
                if error is not None:
                    log.error("could not look at the inboxes: %s", error, extra={"action": "watch.failed"})
                for settled in result or ():
                    self._read(settled)
                continue
            if kind == "check":
                if result is True:
                    self._resume(what)
                elif isinstance(result, Fault) and result.key == what:
                    self.faults.add(result)  # still held, perhaps for another reason now (read-only, then full)
                continue
            settled = self._hashing.pop(what, None)
            if settled is None:
                continue
            if isinstance(error, files.NotRegularFile):
                log.info("skipped %s: %s", settled.found.rel, error.strerror, extra={"action": "watch.not_a_file"})
            elif isinstance(error, OSError):
                log.info("could not read %s yet (%s); will look again", settled.found.rel, error.strerror,
                         extra={"action": "watch.unreadable"})
            elif error is not None:
                log.error("could not read %s: %s", settled.found.rel, error, extra={"action": "watch.unreadable"})
            else:
                self._enqueue(settled, result)

    def _intake(self) -> list[Settled]:
        """New events' paths to the settle check, and the files that have settled (off the loop's thread)."""
        self._drain_events()
        settled = self.settler.poll()
        if settled:
            self.flags.wake.set()
        return settled

    def _drain_events(self) -> None:
        with self._events_lock:
            paths, self._events = self._events, set()
        inboxes = [f.inbox for f in self.config.folders]
        for path in paths:
            if path.endswith(os.sep):
                found = locate(path.rstrip(os.sep), inboxes)
                if found is not None and os.path.isdir(path) and not os.path.islink(path.rstrip(os.sep)):
                    for item in scan(found.folder, self.config.folders[found.folder].inbox):
                        self.settler.add(item)
                continue
            found = locate(path, inboxes)
            if found is not None and os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
                self.settler.add(found)

    def _enqueue(self, settled: Settled, digest: str | None) -> None:
        assert self.queue is not None
        found = settled.found
        try:
            job = self.queue.enqueue(
                folder=found.folder, path=found.path, rel=found.rel, size=settled.size, mtime=settled.mtime,
                content_hash=digest, now=self.clock(),
            )
        except MachineFault as exc:
            self.settler.add(found)  # queued once the database takes writes again
            self._fault(exc.fault)
            return
        if job is not None:
            log.info("queued %s", found.rel, extra={"action": "job.queued", "job": job.id})
            for w in self.workers:
                w.send("wake")

    def _decide(self) -> None:
        """Turn the governor's verdict into a permission for each worker.

        An idle worker needs a free slot. A busy worker may still take more jobs
        into its batch (short files sharing the model's window) when its own slot
        would be allowed: that adds no model and no concurrency.
        """
        self.governor.fault = self.faults.reason()
        held = self.faults.held_inboxes()  # inboxes whose disk is gone: their files wait, the others go on
        busy = [w for w in self.workers if w.busy]
        immediate = tuple(i for i, f in enumerate(self.config.folders) if f.immediate and i not in held)
        others = tuple(i for i in range(len(self.config.folders)) if i not in held) if held else None
        fresh = self.governor.decide(len(busy), bool(immediate), self._ignore_windows)
        again = self.governor.decide(len(busy) - 1, bool(immediate), self._ignore_windows) if busy else fresh
        perms: dict[str, Permission] = {}
        n_idle = 0
        for w in self.workers:
            if w.busy:
                d, allowed = again, again.slots > 0
            else:
                d, allowed = fresh, n_idle < fresh.slots
                n_idle += 1
            perms[w.name] = Permission(
                claim=allowed, folders=immediate if d.immediate_only else others, pause=d.pause_running, reason=d.reason,
            )
        self.decision = fresh
        self._permissions = perms
        for w in self.workers:
            perm = perms[w.name]
            if not w.alive and perm.claim and (self.queue.claimable(self.clock(), perm.folders) or self._arriving(perm)):
                w.start()
            if w.alive:
                w.allow(perm)
        reason = None if any(w.busy for w in self.workers) and not fresh.pause_running else fresh.reason
        if reason and reason.startswith("busy:"):
            reason = None
        if reason is None and held:
            reason = "; ".join(h.fault.reason for h in self.faults.held.values() if h.fault.inbox is not None)
        self._write_status(reason=reason)

    def _arriving(self, perm: Permission) -> bool:
        """At start-up, files already waiting in an inbox that this worker may take: its
        process starts and loads the model while they settle, instead of after. Only then:
        a file that never settles (unreadable, say) must not start a worker again and again."""
        if not self._first_tick:
            return False
        settling = self.settler.folders() | {s.found.folder for s in self._hashing.values()}
        return bool(settling if perm.folders is None else settling & set(perm.folders))

    def _power_and_banners(self) -> None:
        """Keep the Mac awake while work runs; let it sleep and send one banner when the queue empties."""
        assert self.queue is not None
        working = any(w.busy for w in self.workers)
        empty = not working and self.queue.pending() == 0
        self._idle = empty and not len(self.settler) and not len(self.reads)
        if self.keep_awake is not None:
            if working and not self.keep_awake.active:
                self.keep_awake.start()
            elif not working and self.keep_awake.active:
                self.keep_awake.stop()
        if self.notifier is not None:
            self.notifier.tick(queue_empty=empty)

    def _heartbeat(self) -> None:
        """Renew the leases of jobs our workers hold, and reap expired ones, a few times per lease.

        How often is measured on the monotonic clock. A lease's expiry is wall time (it is shared
        through the database), and wall time jumps: a Mac that slept overnight, a clock set an hour
        forward. So a lease held by one of our own workers that is alive never expires here,
        whatever the wall clock says (a dead one's jobs are taken back as soon as its end is seen,
        ``_poll_workers``); expiry only takes back jobs of owners this daemon cannot vouch for."""
        assert self.queue is not None
        if self.monotonic() - self._last_lease_check < self.config.jobs.lease_seconds / 4:
            return
        self._last_lease_check = self.monotonic()
        now = self.clock()
        ours = [w.owner for w in self.workers if w.owner and w.alive]
        for w in self.workers:
            for job_id in w.active_jobs():
                if w.owner:
                    self.queue.heartbeat(job_id, w.owner, now=now, lease_seconds=self.config.jobs.lease_seconds)
        self.queue.reap(now=now, owners_alive=ours)

    def _drained(self) -> bool:
        assert self.queue is not None
        paused = self.faults.reason()
        if paused and not any(w.busy for w in self.workers):
            # a fault of the machine holds the work: say why and stop (cron-style use); files stay waiting
            log.warning("stopping with work left: %s", paused, extra={"action": "service.drain_blocked"})
            self._exit_code = EX_TEMPFAIL
            return True
        if len(self.settler) or self.reads.pending() or any(w.busy for w in self.workers):
            return False
        held = self.faults.held_inboxes()
        if held:
            others = [i for i in range(len(self.config.folders)) if i not in held]
            if self.queue.claimable(self.clock(), others) == 0 and self.queue.counts()[State.RUNNING.value] == 0:
                log.warning("stopping with work left: %s", self._status.get("reason"), extra={"action": "service.drain_blocked"})
                self._exit_code = EX_TEMPFAIL
                return True
        if self.queue.pending() == 0:
            return True
        # Work is left that may not start until a window opens: say why and stop (cron-style use).
        d = self.decision
        if d is None:
            return False
        immediate = [i for i, f in enumerate(self.config.folders) if f.immediate]
        outside_window = (d.slots == 0 and d.blocked_by == "timing") or (
            d.immediate_only
            and self.queue.claimable(self.clock(), immediate) == 0
            and self.queue.counts()[State.RUNNING.value] == 0
        )
        if outside_window:
            log.info("stopping with work left: %s", d.reason, extra={"action": "service.drain_blocked"})
            return True
        return False

    def _reload(self, watcher: Watcher | None) -> Watcher | None:
        self.flags.reload = False
        path = self.config.path
        try:
            new = config_mod.load(path) if path else self.config
        except ConfigError as exc:
            log.error("the new configuration was not loaded, the old one stays in force: %s", exc, extra={"action": "config.reload_failed"})
            return watcher
        if new.database != self.config.database or new.state_dir != self.config.state_dir:
            log.error("the database and state folder cannot change while running; restart whisperd for that", extra={"action": "config.reload_failed"})
            return watcher
        self.config = new
        self.governor.config = new
        self.faults.clear_all()  # a new configuration may have fixed what held work back: everything is tried again
        self._announced.clear()
        self._note_volumes()
        self._stop_workers()  # they save their place; new ones start with the new settings
        self._start_workers()
        self.settler.settle_seconds = new.watch.settle_seconds
        if watcher is not None:
            watcher.stop()
            watcher = Watcher([f.inbox for f in new.folders], self._on_event)
            watcher.start()
        self._rescan_due = True
        log.info("configuration reloaded", extra={"action": "config.reload"})
        return watcher

    # -- status for `whisperd status` -----------------------------------------

    def _engine_status(self) -> dict[str, Any] | None:
        """The loaded engine as a worker said it (which, where, why there), with the GPU memory of
        all workers' engines together; the governor counts that memory too. None before a load."""
        engines = [w.engine for w in self.workers if w.engine]
        gpu = [e["gpu_memory_bytes"] for e in engines if e.get("gpu_memory_bytes") is not None]
        total = sum(gpu) if gpu else None
        self.governor.observe_engine(total)
        return {**engines[0], "gpu_memory_bytes": total} if engines else None

    def _write_status(self, reason: str | None = None, stopping: bool = False) -> None:
        status = {
            "pid": os.getpid(),
            "running": not stopping,
            "reason": reason,
            "workers": len(self.workers),
            "faults": self.faults.describe(),
            "engine": self._engine_status(),
        }
        if status == self._status:
            return
        self._status = status
        try:
            files.write_atomic(
                self.config.state_dir, STATUS_FILE, json.dumps({**status, "updated": self.clock()}).encode(), replace=True
            )
        except OSError:
            pass


def read_status(config: Config) -> dict[str, Any]:
    """What the running daemon last said about itself, if it is running."""
    try:
        data = json.loads((config.state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {"running": False}
    pid = data.get("pid")
    alive = isinstance(pid, int) and pid_alive(pid)
    data["running"] = bool(data.get("running")) and alive
    return data


def summarize(states: dict[str, int]) -> str:
    return ", ".join(f"{states.get(s.value, 0)} {s.value}" for s in State)

"""Faults of the machine, not of a file: what they are, how one is recognised, when it is looked at again.

A model that cannot be loaded, an output or archive folder that is gone, read-only
or full, a database another program keeps locked: none of these says anything about
the recording being worked on, so none may fail it or count against it. A worker that
meets one hands its jobs back untouched and reports a ``Fault``; the daemon stops
handing out work (the governor's first gate), says why in ``whisperd status`` and a
banner, and looks again on a growing interval (``Faults``) until the cause is gone.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from daemon.errors import WhisperdError

log = logging.getLogger("whisperd.faults")

FIRST_CHECK_SECONDS = 1.0  # a fault is first looked at again this soon (a look is a 4 KB write, a stat),
CHECK_GROWTH = 1.5  # then ever less often,
LAST_CHECK_SECONDS = 30.0  # down to this
MODEL_RETRY_SECONDS = 600.0  # a model that failed to load is tried again this often (and at every reload)

# errors of a disk, not of a file: the volume is full, read-only, unplugged or not answering
_VOLUME_ERRNOS = {
    errno.ENOSPC: "full",
    errno.EROFS: "read-only",
    errno.EIO: "not answering",
    errno.ENXIO: "gone",
    errno.ENODEV: "gone",
    errno.ESTALE: "gone",
    errno.ENOTCONN: "gone",
    errno.EHOSTDOWN: "not answering",
    errno.ETIMEDOUT: "not answering",
    errno.EACCES: "not writable",
    errno.EPERM: "not writable",
}
if hasattr(errno, "EDQUOT"):
    _VOLUME_ERRNOS[errno.EDQUOT] = "full"


@dataclass(frozen=True)
class Fault:
    """One cause that holds work back. ``key`` names the cause (one fault per key): ``model``,
    ``database``, ``folder:<path>``, ``inbox:<n>``. ``inbox`` is set when only that inbox's
    files are held (its disk is gone) and the others may go on."""

    key: str
    reason: str  # plain words for `whisperd status`: "paused: …"
    inbox: int | None = None
    path: str | None = None  # the folder to look at again, for a folder's fault


class MachineFault(WhisperdError):
    """Something about this Mac, not the file, stopped the work; whisperd waits and goes on by itself."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.reason)
        self.fault = fault


def model_fault(name: str, exc: BaseException) -> Fault:
    text = str(exc)
    if "not available offline" in text or "download" in text.lower():
        why = f"model '{name}' is not on this Mac and cannot be downloaded"
    else:
        why = f"model '{name}' could not be loaded ({text.rstrip('.')})"
    return Fault("model", f"paused: {why}; see `whisperd doctor`, fix the configuration, and whisperd goes on by itself")


def database_fault(detail: str) -> Fault:
    return Fault("database", f"paused: the queue database cannot be written ({detail}); "
                             "whisperd goes on by itself once it is free again")


def inbox_fault(index: int, inbox: Path) -> Fault:
    return Fault(f"inbox:{index}", f"paused: the inbox {inbox} is not there (is its disk connected?); its files wait "
                                   "and go on from where they were when it is back", inbox=index, path=str(inbox))


KNOWN_FOLDERS_FILE = "folders.json"


def missing_folder_fault(index: int, folder: Path, is_inbox: bool) -> Fault:
    """A configured folder that was there before and is gone now: its disk is away (or it was
    removed). It is not made again, which on an unplugged disk's mount point would put it on
    the Mac's own disk: the work it concerns waits until it is back."""
    if is_inbox:
        return inbox_fault(index, folder)
    fault = folder_fault(FileNotFoundError(errno.ENOENT, "not there", str(folder)), [folder])
    assert fault is not None  # a missing root is "gone"
    return fault


class KnownFolders:
    """The configured folders whisperd has seen, kept in the state folder: one that was there
    before and is missing now is a disk away, not a folder to create."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        try:
            self.seen: set[str] = set(json.loads((state_dir / KNOWN_FOLDERS_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            self.seen = set()
        self._before = set(self.seen)

    def __contains__(self, folder: Path) -> bool:
        return str(folder) in self.seen

    def add(self, folder: Path) -> None:
        self.seen.add(str(folder))

    def save(self) -> None:
        if self.seen == self._before:
            return
        from daemon.files import write_atomic

        try:
            write_atomic(self.state_dir, KNOWN_FOLDERS_FILE, json.dumps(sorted(self.seen), indent=1).encode(), replace=True)
            self._before = set(self.seen)
        except OSError as exc:
            log.warning("could not note the folders seen (%s)", exc, extra={"action": "folders.note"})


def volume_of(inbox: Path) -> int | None:
    """The device an inbox lives on, to tell later whether its disk is still the one mounted there."""
    try:
        return os.stat(inbox).st_dev
    except OSError:
        return None


def inbox_present(inbox: Path, volume: int | None) -> bool:
    """Whether an inbox is there, on the disk it was on (``volume``, when known): an unplugged USB
    disk or NAS leaves its folder missing, or an empty mount point on another device."""
    try:
        st = os.stat(inbox)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    return volume is None or st.st_dev == volume


def _root_of(path: str | os.PathLike[str] | None, roots: Iterable[Path]) -> Path | None:
    if not path:
        return None
    p = os.path.abspath(os.fspath(path))
    best = None
    for root in roots:
        r = os.path.abspath(root)
        if (p == r or p.startswith(r.rstrip(os.sep) + os.sep)) and (best is None or len(r) > len(str(best))):
            best = Path(r)
    return best


def folder_fault(exc: BaseException, roots: Iterable[Path]) -> Fault | None:
    """The fault an error writing outputs or moving the original reveals, or None when it is the
    file's own problem (a name taken by a folder, say). ``roots`` are the output, archive and
    failed folders of every folder entry: only errors in them count, never the recording's own."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    roots = list(roots)
    root = _root_of(exc.filename, roots) or _root_of(getattr(exc, "filename2", None), roots)
    what = _VOLUME_ERRNOS.get(exc.errno)
    if what is None and exc.errno == errno.ENOENT and root is not None and not root.is_dir():
        what = "gone"
    if what is None:
        return None
    if root is None:
        if exc.filename:
            return None  # a file outside whisperd's own folders: the recording's problem
        if what != "full":
            return None
        where, key = "a disk whisperd writes to", "folder:*"
    else:
        where, key = str(root), f"folder:{root}"
    plain = {
        "full": f"the disk holding {where} is full; free some space",
        "read-only": f"{where} is read-only; make it writable",
        "not writable": f"whisperd is not allowed to write to {where}; check its permissions (and Full Disk Access on macOS)",
        "gone": f"{where} is not there (is its disk connected?)",
        "not answering": f"the disk holding {where} is not answering",
    }[what]
    return Fault(key, f"paused: {plain}; whisperd goes on by itself when it can write there again",
                 path=None if root is None else str(root))


def writable(folder: Path, roots: Iterable[Path] = ()) -> bool | Fault:
    """True when a small file can be written, flushed and removed in ``folder``; else the fault
    that stops it now (a read-only disk may come back full), or False."""
    if not folder.is_dir():
        return False
    probe = folder / f".whisperd-probe-{os.getpid()}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
        return True
    except OSError as exc:
        try:
            os.unlink(probe)
        except OSError:
            pass
        if exc.filename is None:
            exc.filename = str(probe)
        return folder_fault(exc, [*roots, folder]) or False


@dataclass
class _Held:
    fault: Fault
    since: float  # wall time, for people
    next_check: float  # monotonic
    interval: float


@dataclass
class Faults:
    """The faults in force, and when each is due to be looked at again (monotonic time)."""

    monotonic: Callable[[], float] = time.monotonic
    clock: Callable[[], float] = time.time
    held: dict[str, _Held] = field(default_factory=dict)

    def add(self, fault: Fault) -> bool:
        """Hold work back for ``fault``; True when it is new."""
        now = self.monotonic()
        old = self.held.get(fault.key)
        if old is not None:
            old.fault = fault
            return False
        first = MODEL_RETRY_SECONDS if fault.key == "model" else FIRST_CHECK_SECONDS
        self.held[fault.key] = _Held(fault, self.clock(), now + first, first)
        log.warning("%s", fault.reason, extra={"action": "fault.pause"})
        return True

    def clear(self, key: str) -> Fault | None:
        held = self.held.pop(key, None)
        if held is not None:
            log.info("resumed: the cause is gone (it was: %s)", held.fault.reason.removeprefix("paused: "),
                     extra={"action": "fault.resume"})
        return None if held is None else held.fault

    def clear_all(self) -> None:
        for key in list(self.held):
            self.clear(key)

    def due(self) -> list[Fault]:
        now = self.monotonic()
        return [h.fault for h in self.held.values() if now >= h.next_check]

    def still(self, key: str) -> None:
        """Looked at again, and the cause is still there: look again later, less often."""
        held = self.held.get(key)
        if held is None:
            return
        if key != "model":
            held.interval = min(LAST_CHECK_SECONDS, held.interval * CHECK_GROWTH)
        held.next_check = self.monotonic() + held.interval

    def __bool__(self) -> bool:
        return bool(self.held)

    def reason(self) -> str | None:
        """What holds all work back, in words; None when nothing does (an inbox's fault holds only its own)."""
        reasons = [h.fault.reason for h in self.held.values() if h.fault.inbox is None]
        return "; ".join(reasons) if reasons else None

    def held_inboxes(self) -> set[int]:
        return {h.fault.inbox for h in self.held.values() if h.fault.inbox is not None}

    def describe(self) -> list[dict[str, object]]:
        """For ``whisperd status --json``."""
        return [{"cause": h.fault.key, "reason": h.fault.reason, "since": h.since} for h in self.held.values()]
